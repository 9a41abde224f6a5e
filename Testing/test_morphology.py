"""Ball dilation, erosion and closing, and box dilation and erosion, by shifted copies give exactly SimpleITK's
voxels."""
import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib.morphology import ball_close, ball_dilate, ball_erode, ball_rows, box_dilate, box_erode

RADII = [[3, 3, 3], [3, 3, 1], [2, 4, 1], [5, 5, 5], [0, 2, 1]]


def _blobs(seed: int) -> np.ndarray:
    """Random blobs (zyx) that also touch the volume's faces, with holes, on an uneven shape."""
    rng = np.random.default_rng(seed)
    seeds = sitk.GetImageFromArray((rng.random((23, 31, 37)) < 0.01).astype(np.uint8))
    blobs = sitk.GetArrayFromImage(sitk.BinaryDilate(seeds, [3, 2, 2], sitk.sitkBall)) > 0
    blobs[:, :4, :] = True  # a slab along one face
    blobs[10:13, 10:12, :] = False  # a tunnel through it
    return blobs


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("seed", [0, 1])
def test_dilate_erode_and_close_equal_simpleitk(radius, seed):
    mask = _blobs(seed)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    expected = {
        "dilate": sitk.BinaryDilate(image, radius, sitk.sitkBall),
        "erode": sitk.BinaryErode(image, radius, sitk.sitkBall),
        "close": sitk.BinaryMorphologicalClosing(image, radius, sitk.sitkBall),
    }
    got = {"dilate": ball_dilate(mask, radius), "erode": ball_erode(mask, radius), "close": ball_close(mask, radius)}
    for name, image in expected.items():
        assert np.array_equal(got[name], sitk.GetArrayViewFromImage(image) > 0), name
    assert got["dilate"].sum() > mask.sum() > got["erode"].sum()  # the volumes are not trivial


@pytest.mark.parametrize("radius", [1, 2])
def test_box_dilate_and_erode_equal_simpleitk(radius):
    mask = _blobs(0)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    for ours, theirs in ((box_dilate, sitk.BinaryDilate), (box_erode, sitk.BinaryErode)):
        expected = sitk.GetArrayFromImage(theirs(image, [radius] * 3, sitk.sitkBox)) > 0
        assert np.array_equal(ours(mask, radius), expected), ours.__name__
    assert box_dilate(mask, radius).sum() > mask.sum() > box_erode(mask, radius).sum()


def test_volumes_thinner_than_the_ball_equal_simpleitk():
    mask = np.zeros((2, 9, 11), bool)
    mask[1, 3:6, 4:8] = True
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    assert np.array_equal(ball_dilate(mask, [3, 3, 3]), sitk.GetArrayFromImage(
        sitk.BinaryDilate(image, [3, 3, 3], sitk.sitkBall)) > 0)
    assert np.array_equal(ball_close(mask, [3, 3, 3]), sitk.GetArrayFromImage(
        sitk.BinaryMorphologicalClosing(image, [3, 3, 3], sitk.sitkBall)) > 0)


def test_ball_rows_are_simpleitk_ball_of_radius_3():
    rows = ball_rows([3, 3, 3])
    assert rows[(0, 0)] == 3 and rows[(3, 0)] == 1 and (3, 3) not in rows
    assert sum(2 * w + 1 for w in rows.values()) == 179  # the voxels of SimpleITK's radius-3 ball
