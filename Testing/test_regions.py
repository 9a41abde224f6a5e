"""The regions a map calls wrong: counted, the largest listed with volume, centre and extent, and described."""
import numpy as np
import SimpleITK as sitk

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.regions import regions_text, wrong_regions


def _label_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.0))
    image.SetOrigin((-100.0, 50.0, 20.0))
    return image


def test_regions_are_counted_and_the_largest_listed_with_volume_centre_and_extent():
    array = np.full((30, 40, 50), L.CORRECT, dtype=np.uint8)
    array[2:6, 3:13, 4:24] = L.WRONG  # 800 voxels
    array[20:22, 30:32, 40:45] = L.WRONG  # 20 voxels
    array[10, 10, 10] = L.WRONG  # 1 voxel
    array[11, 11, 11] = L.WRONG  # touches the one above only by a corner: another region
    array[25:28, 5:8, 5:8] = L.POOR
    image = _label_image(array)
    found = wrong_regions(image, limit=3)
    assert found["wrong_region_count"] == 4
    assert [region["voxels"] for region in found["wrong_regions"]] == [800, 20, 1]
    voxel_ml = 0.8 * 0.7 * 2.0 / 1000
    assert np.isclose(found["wrong_regions"][0]["ml"], 800 * voxel_ml)
    assert np.allclose(found["wrong_regions"][0]["centre_lps_mm"],
                       image.TransformContinuousIndexToPhysicalPoint((13.5, 7.5, 3.5)))
    assert np.allclose(found["wrong_regions"][0]["extent_mm"], (20 * 0.8, 10 * 0.7, 4 * 2.0))
    assert found["wrong_regions"][2]["centre_lps_mm"] == list(image.TransformIndexToPhysicalPoint((10, 10, 10)))


def test_a_map_with_nothing_wrong_has_no_regions():
    array = np.full((8, 8, 8), L.POOR, dtype=np.uint8)
    found = wrong_regions(_label_image(array))
    assert found == {"wrong_region_count": 0, "wrong_regions": []}
    assert regions_text(found) == "no region called wrong"


def test_the_largest_region_is_described_in_lps_or_in_ras_as_slicer_shows_it():
    summary = {"wrong_region_count": 3, "wrong_regions": [{"ml": 12.34, "centre_lps_mm": [10.2, -20.0, 30.0]}]}
    assert regions_text(summary) == "3 regions called wrong; the largest 12.3 mL around (10, -20, 30) mm LPS"
    assert regions_text(summary, ras=True).endswith("around (-10, 20, 30) mm RAS")
