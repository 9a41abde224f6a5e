"""The map of a scan does not depend on the order and sense in which its file stores the voxel axes."""
import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib import inference
from RegistrationMisalignmentLib.batch import case_thumbnails
from RegistrationMisalignmentLib.figures import thumbnail_pngs
from RegistrationMisalignmentLib.orientation import NETWORK_ORIENTATION, in_network_orientation, orientation_code

STORAGES = ["PIR", "RAS", "LAI"]  # axes permuted; x and y flipped; y and z flipped


def stored_as(image: sitk.Image, code: str) -> sitk.Image:
    """The same scan with its voxels stored in another orientation."""
    return sitk.DICOMOrient(image, code)


def back_in_lps(image: sitk.Image) -> np.ndarray:
    """The voxels of an image in LPS order (zyx array)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def same_grid_exactly(a: sitk.Image, b: sitk.Image) -> bool:
    """Whether two images have the very same size, origin, spacing and direction."""
    return (a.GetSize(), a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == \
        (b.GetSize(), b.GetOrigin(), b.GetSpacing(), b.GetDirection())


def test_reordering_into_the_network_orientation_is_exact(small_pair):
    """A scan stored in another orientation comes back voxel for voxel, on the same grid; an LPS one is not copied."""
    fixed = small_pair.fixed
    assert orientation_code(fixed.GetDirection()) == NETWORK_ORIENTATION
    assert in_network_orientation(fixed) is fixed
    for code in STORAGES:
        stored = stored_as(fixed, code)
        assert orientation_code(stored.GetDirection()) == code
        reordered = in_network_orientation(stored)
        assert same_grid_exactly(reordered, fixed)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(reordered), sitk.GetArrayViewFromImage(fixed))
    assert in_network_orientation(None) is None


@pytest.mark.parametrize("code", STORAGES)
def test_predict_gives_the_same_map_whatever_the_storage(tiny_predictor, small_pair, code):
    """Labels and probabilities on the caller's grid equal those of the LPS-stored pair, reordered."""
    reference = tiny_predictor.predict(small_pair.fixed, small_pair.moving)
    fixed, moving = stored_as(small_pair.fixed, code), stored_as(small_pair.moving, code)
    result = tiny_predictor.predict(fixed, moving)
    assert same_grid_exactly(result.labels, fixed) and same_grid_exactly(result.probabilities, fixed)
    np.testing.assert_array_equal(back_in_lps(result.labels), sitk.GetArrayViewFromImage(reference.labels))
    np.testing.assert_array_equal(back_in_lps(result.probabilities),
                                  sitk.GetArrayViewFromImage(reference.probabilities))
    assert result.summary["classes"] == reference.summary["classes"]


def test_without_reordering_the_map_would_differ(tiny_predictor, small_pair, monkeypatch):
    """The check above can fail: the network is not invariant to flipped axes, which is why images are reordered."""
    reference = tiny_predictor.predict(small_pair.fixed, small_pair.moving)
    monkeypatch.setattr(inference, "in_network_orientation", lambda image: image)
    result = tiny_predictor.predict(stored_as(small_pair.fixed, "RAS"), stored_as(small_pair.moving, "RAS"))
    difference = np.abs(back_in_lps(result.probabilities) - sitk.GetArrayViewFromImage(reference.probabilities))
    assert difference.max() > 1e-3


def test_a_mask_and_points_in_another_storage(tiny_predictor, small_pair, small_phantom):
    """A user's mask stored in another orientation than the images, and point queries on a reordered pair."""
    _, lungs = small_phantom
    lungs = sitk.Resample(lungs, small_pair.fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    reference = tiny_predictor.predict(small_pair.fixed, small_pair.moving, mask=lungs)
    result = tiny_predictor.predict(stored_as(small_pair.fixed, "PIR"), small_pair.moving,
                                    mask=stored_as(lungs, "RAS"))
    np.testing.assert_array_equal(back_in_lps(result.labels), sitk.GetArrayViewFromImage(reference.labels))
    size = np.asarray(small_pair.fixed.GetSize())
    points = [small_pair.fixed.TransformIndexToPhysicalPoint([int(n) for n in size * f]) for f in (0.4, 0.5, 0.6)]
    classes, probabilities = tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, points, mask=lungs)
    stored = [stored_as(image, "LAI") for image in (small_pair.fixed, small_pair.moving, lungs)]
    classes_stored, probabilities_stored = tiny_predictor.predict_points(stored[0], stored[1], points, mask=stored[2])
    np.testing.assert_array_equal(classes_stored, classes)
    np.testing.assert_array_equal(probabilities_stored, probabilities)


def test_batch_thumbnails_show_the_planes_they_name_whatever_the_storage(small_pair):
    """A case stored with permuted axes gets the same axial, coronal and sagittal PNGs as the LPS-stored one."""
    fixed = small_pair.fixed
    labels = sitk.Cast(sitk.BinaryThreshold(fixed, -900, -400, 1, 0) + sitk.BinaryThreshold(fixed, -400, 100, 3, 0),
                       sitk.sitkUInt8)
    reference = case_thumbnails(fixed, labels)
    assert case_thumbnails(stored_as(fixed, "PIR"), stored_as(labels, "PIR")) == reference
    unordered = thumbnail_pngs(sitk.GetArrayViewFromImage(stored_as(fixed, "PIR")),
                               sitk.GetArrayViewFromImage(stored_as(labels, "PIR")), (1.0, 1.0, 1.0))
    assert unordered["axial"] != reference["axial"]  # drawn from the stored order, the planes would be others
