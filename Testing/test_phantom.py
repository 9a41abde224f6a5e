"""Tests of the procedural chest CT phantom: determinism, geometry, HU statistics and anatomy."""


import numpy as np
import pytest
import SimpleITK as sitk


from RegistrationMisalignmentLib.phantom import make_chest_phantom

DEFAULT_SIZE = (192, 160, 176)
SMALL_SIZE = (96, 80, 88)


@pytest.fixture(scope="module", params=[0, 3])
def phantom(request):
    """Default-size phantom (ct, lungs) and its arrays for two seeds."""
    ct, lungs = make_chest_phantom(request.param)
    return ct, lungs, sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(lungs)


def test_same_seed_is_bit_identical():
    ct_a, lungs_a = make_chest_phantom(5, SMALL_SIZE)
    ct_b, lungs_b = make_chest_phantom(5, SMALL_SIZE)
    assert np.array_equal(sitk.GetArrayViewFromImage(ct_a), sitk.GetArrayViewFromImage(ct_b))
    assert np.array_equal(sitk.GetArrayViewFromImage(lungs_a), sitk.GetArrayViewFromImage(lungs_b))
    assert ct_a.GetOrigin() == ct_b.GetOrigin()


def test_different_seeds_change_anatomy_not_only_noise():
    ct_a, lungs_a = make_chest_phantom(1, SMALL_SIZE)
    ct_b, lungs_b = make_chest_phantom(2, SMALL_SIZE)
    a = sitk.GetArrayFromImage(ct_a).astype(np.int32)
    b = sitk.GetArrayFromImage(ct_b).astype(np.int32)
    assert not np.array_equal(sitk.GetArrayViewFromImage(lungs_a), sitk.GetArrayViewFromImage(lungs_b))
    assert np.mean(np.abs(a - b) > 300) > 0.005


def test_geometry(phantom):
    ct, lungs, _, _ = phantom
    for image in (ct, lungs):
        assert image.GetSize() == DEFAULT_SIZE
        assert image.GetSpacing() == (1.0, 1.0, 1.0)
        assert image.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
        assert np.allclose(centre, 0.0)
    assert ct.GetPixelID() == sitk.sitkInt16
    assert lungs.GetPixelID() == sitk.sitkUInt8


def test_other_size_is_honoured():
    ct, lungs = make_chest_phantom(0, (64, 72, 56))
    assert ct.GetSize() == lungs.GetSize() == (64, 72, 56)
    assert np.allclose(ct.GetOrigin(), (-31.5, -35.5, -27.5))


def test_hu_statistics(phantom):
    _, _, hu, mask = phantom
    assert set(np.unique(mask)) <= {0, 1}
    lung = mask.astype(bool)
    assert 0.10 <= lung.mean() <= 0.40
    assert -900 <= np.median(hu[lung]) <= -750
    assert 0.03 <= np.mean(hu[lung] > -300) <= 0.20
    assert np.sum(hu > 500) > 2000
    assert hu.min() >= -1024 and hu.max() <= 3071
    ends = (slice(0, 3), slice(-3, None))
    corners = [hu[z, y, x] for z in ends for y in ends for x in ends]
    assert all(c.size == 27 and np.mean(c) < -950 for c in corners)


def test_two_lungs_left_and_right_in_mid_slice(phantom):
    _, lungs, _, _ = phantom
    size = lungs.GetSize()
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(lungs[:, :, size[2] // 2]), minimumObjectSize=50)
    label_array = sitk.GetArrayFromImage(labels)
    assert label_array.max() == 2
    centres_x = [np.nonzero(label_array == k)[1].mean() - (size[0] - 1) / 2.0 for k in (1, 2)]
    assert min(centres_x) < -20 and max(centres_x) > 20


def test_trachea_is_air_outside_the_lung_mask(phantom):
    _, _, hu, mask = phantom
    nz, ny, nx = hu.shape
    top = slice(nz - 6, nz)
    assert not mask[top].any()
    centre = hu[top, ny // 4:3 * ny // 4, nx // 2 - 12:nx // 2 + 12]
    assert np.sum(centre < -900) > 6 * 50


def test_vessels_inside_lungs_span_scales(phantom):
    _, _, hu, mask = phantom
    lung = mask.astype(bool)
    dense = (hu > -300) & lung
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(dense.astype(np.uint8))))
    sizes = np.bincount(labels.ravel())[1:]
    assert np.sum(sizes > 2000) >= 1
    assert np.sum((sizes >= 3) & (sizes < 100)) >= 50


def test_liver_below_lungs_and_bone_in_spine(phantom):
    _, _, hu, _ = phantom
    nz, ny, nx = hu.shape
    liver = hu[1:4, ny // 2 - 20:ny // 2 + 10, nx // 2 - 40:nx // 2 - 10]
    assert 20 <= np.median(liver) <= 100
    spine_column = hu[:, ny // 2:, nx // 2 - 3:nx // 2 + 3]
    bony_slices = np.mean(np.max(spine_column, axis=(1, 2)) > 200)
    assert 0.7 < bony_slices < 0.97
