"""Tests of the automatic torso and lung masks on the shared real chest CTs and on small synthetic volumes."""


import numpy as np
import pytest
import SimpleITK as sitk


from RegistrationMisalignmentLib.masks import fill_hilum_, lung_mask, torso_mask

from conftest import shared_ct


# Measured lung volumes: 3896 mL (NSCLC) and 5423 mL (Philips); the ranges leave about 20 % margin.
CASES = {
    "thorax_nsclc_r01-001.nii.gz": (3100.0, 4700.0),
    "thorax_philips_00.nii.gz": (4300.0, 6500.0),
}


def _volume_ml(mask: sitk.Image) -> float:
    """Return the volume of a binary mask in mL."""
    return float(sitk.GetArrayViewFromImage(mask).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


def _component_volumes_ml(mask: sitk.Image) -> list:
    """Return the volumes in mL of a mask's face-connected components, largest first."""
    relabel = sitk.RelabelComponentImageFilter()
    relabel.Execute(sitk.ConnectedComponent(mask))
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return [size * voxel_ml for size in relabel.GetSizeOfObjectsInPixels()]


def _assert_binary_on_grid(mask: sitk.Image, ct: sitk.Image) -> None:
    """Assert that a mask is UInt8 0/1 with exactly the CT's geometry."""
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == ct.GetSize()
    assert mask.GetSpacing() == ct.GetSpacing()
    assert mask.GetOrigin() == ct.GetOrigin()
    assert mask.GetDirection() == ct.GetDirection()
    assert set(np.unique(sitk.GetArrayViewFromImage(mask))) <= {0, 1}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    """A shared real CT with its copy, torso mask and lung mask (computed once per CT)."""
    ct = sitk.ReadImage(str(shared_ct(request.param)))
    original = (sitk.GetArrayFromImage(ct), ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection())
    torso = torso_mask(ct)
    lungs = lung_mask(ct, torso)
    return {"name": request.param, "ct": ct, "original": original, "torso": torso, "lungs": lungs}


def test_masks_are_binary_on_the_ct_grid(case):
    _assert_binary_on_grid(case["torso"], case["ct"])
    _assert_binary_on_grid(case["lungs"], case["ct"])


def test_input_is_unchanged(case):
    ct = case["ct"]
    array, spacing, origin, direction = case["original"]
    assert np.array_equal(sitk.GetArrayViewFromImage(ct), array)
    assert (ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection()) == (spacing, origin, direction)
    assert ct.GetPixelID() == sitk.sitkInt16


def test_lung_volume_is_plausible(case):
    low, high = CASES[case["name"]]
    assert low <= _volume_ml(case["lungs"]) <= high


def test_lung_mask_is_air_filled(case):
    hu = sitk.GetArrayViewFromImage(case["ct"])[sitk.GetArrayViewFromImage(case["lungs"]) > 0]
    assert np.median(hu) < -700.0


def test_two_large_lungs(case):
    volumes = _component_volumes_ml(case["lungs"])
    assert len(volumes) >= 2
    assert volumes[1] > 1000.0
    assert sum(volumes[:2]) >= 0.99 * sum(volumes)


def test_torso_contains_lungs_but_not_outside_air(case):
    lungs = sitk.GetArrayViewFromImage(case["lungs"]) > 0
    torso = sitk.GetArrayViewFromImage(case["torso"]) > 0
    assert torso[lungs].mean() >= 0.99
    outside_air = sitk.GetArrayViewFromImage(case["ct"]) == -1024
    assert (torso & outside_air).sum() < 0.01 * outside_air.sum()


def test_half_chest_still_has_lung(case):
    ct = case["ct"]
    half = ct[: ct.GetWidth() // 2]
    lungs = lung_mask(half)
    _assert_binary_on_grid(lungs, half)
    assert _volume_ml(lungs) > 500.0
    assert np.median(sitk.GetArrayViewFromImage(half)[sitk.GetArrayViewFromImage(lungs) > 0]) < -700.0


def test_one_lung_keeps_only_itself_not_small_gas_pockets_elsewhere():
    z, y, x = np.mgrid[:140, :110, :110]
    body = np.full(z.shape, -1000, np.int16)
    body[((y - 55) / 48.0) ** 2 + ((x - 55) / 50.0) ** 2 <= 1] = 40  # the torso
    body[((z - 95) / 40.0) ** 2 + ((y - 55) / 30.0) ** 2 + ((x - 75) / 20.0) ** 2 <= 1] = -850  # one lung, ~100 mL
    for centre_y, centre_x in ((40, 35), (70, 75)):  # two bowel gas pockets of ~6 mL, under 10 % of the lung
        body[((z - 22) / 7.0) ** 2 + ((y - centre_y) / 14.0) ** 2 + ((x - centre_x) / 14.0) ** 2 <= 1] = -800
    lungs = sitk.GetArrayFromImage(lung_mask(sitk.GetImageFromArray(body)))
    assert lungs[50:].sum() > 90_000 and lungs[:40].sum() == 0


def test_uniform_soft_tissue_gives_empty_lung_mask():
    ct = sitk.Image([40, 40, 40], sitk.sitkInt16) + 40
    ct.SetSpacing((1.0, 1.0, 2.0))
    lungs = lung_mask(ct)
    _assert_binary_on_grid(lungs, ct)
    assert not np.any(sitk.GetArrayViewFromImage(lungs))
    assert np.all(sitk.GetArrayFromImage(torso_mask(ct)) == 1)


def test_torso_on_another_grid_is_rejected():
    ct = sitk.Image([40, 40, 40], sitk.sitkInt16) + 40
    with pytest.raises(ValueError):
        lung_mask(ct, sitk.Image([40, 40, 20], sitk.sitkUInt8))


def test_filled_hila_take_in_the_vessels_that_enter_the_lungs(case):
    lungs = sitk.GetArrayViewFromImage(case["lungs"]) > 0
    filled_image = fill_hilum_(sitk.Image(case["lungs"]))
    _assert_binary_on_grid(filled_image, case["ct"])
    filled = sitk.GetArrayViewFromImage(filled_image) > 0
    assert np.all(filled[lungs])
    assert not np.any(filled & ~(sitk.GetArrayViewFromImage(case["torso"]) > 0))
    assert filled.sum() < 1.03 * lungs.sum()
    # vessels (-500..200 HU) at least 5 mm inside the lungs' envelope: the hilar ones were left out before
    envelope = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(
        case["lungs"], [max(1, round(15.0 / s)) for s in case["ct"].GetSpacing()]))
    depth = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        envelope, insideIsPositive=True, squaredDistance=False, useImageSpacing=True))
    hu = sitk.GetArrayViewFromImage(case["ct"])
    vessels = (hu > -500) & (hu < 200) & (depth >= 5.0)
    assert (vessels & ~lungs).sum() > 0.08 * vessels.sum()
    assert (vessels & ~filled).sum() < 0.02 * vessels.sum()


def test_hilum_filling_closes_a_narrow_notch_but_not_a_wide_one():
    lungs = np.zeros((60, 120, 120), dtype=np.uint8)  # z, y, x at 1 mm
    lungs[10:50, 10:110, 10:110] = 1
    lungs[20:30, 55:63, 10:40] = 0  # an 8 mm vessel entering 30 mm from the side
    lungs[10:50, 10:40, 40:100] = 0  # a 60 mm wide bay
    image = sitk.GetImageFromArray(lungs)
    filled = sitk.GetArrayFromImage(fill_hilum_(image))
    assert filled[20:30, 55:63, 12:40].all()
    assert not filled[10:50, 10:35, 50:90].any()
    assert np.array_equal(filled[lungs > 0], lungs[lungs > 0])
    empty = sitk.Image([20, 20, 20], sitk.sitkUInt8)
    assert not sitk.GetArrayFromImage(fill_hilum_(empty)).any()


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap of two binary masks on one grid."""
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())


def test_masks_of_a_finer_ct_are_made_at_1_mm_and_agree_with_masks_made_at_full_resolution(small_phantom):
    from RegistrationMisalignmentLib.masks import _torso_mask_on_grid, automatic_lung_mask
    ct, _ = small_phantom
    assert min(ct.GetSpacing()) >= 1.0  # made directly: exactly the mask of the CT's own grid
    assert np.array_equal(sitk.GetArrayFromImage(torso_mask(ct)),
                          sitk.GetArrayFromImage(_torso_mask_on_grid(ct)))
    spacing = [s / 2.2 for s in ct.GetSpacing()]  # finer than 1 mm along every axis
    size = [int(n * 2.2) for n in ct.GetSize()]
    fine = sitk.Resample(ct, size, sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(), spacing, ct.GetDirection(),
                         -1024.0, ct.GetPixelID())
    torso = torso_mask(fine)
    assert torso.GetSize() == fine.GetSize() and torso.GetSpacing() == fine.GetSpacing()
    assert _dice(torso, _torso_mask_on_grid(fine)) > 0.98
    lungs = automatic_lung_mask(fine, torso)
    assert lungs.GetSize() == fine.GetSize()
    assert _dice(lungs, fill_hilum_(lung_mask(fine, torso))) > 0.95


@pytest.fixture
def sitk_threads():
    """Set SimpleITK's thread count (which bounds the mask threads) for one test, restored afterwards."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    yield sitk.ProcessObject.SetGlobalDefaultNumberOfThreads
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)


def test_masks_made_in_several_threads_equal_masks_made_in_one(case, sitk_threads):
    from RegistrationMisalignmentLib.mask_threads import mask_threads
    sitk_threads(3)
    assert mask_threads() == 1  # on few cores SimpleITK's own threads keep them busy
    torso = torso_mask(case["ct"])
    lungs = lung_mask(case["ct"], torso)
    sitk_threads(16)
    assert mask_threads() == 4
    for serial, threaded in ((torso, torso_mask(case["ct"])), (lungs, lung_mask(case["ct"], torso))):
        assert np.array_equal(sitk.GetArrayViewFromImage(serial), sitk.GetArrayViewFromImage(threaded))


def test_moving_torso_made_beside_the_fixed_masks_equals_the_serial_one(small_pair, sitk_threads):
    from RegistrationMisalignmentLib.preprocessing import to_fixed_grid
    pairs = []
    for threads in (1, 4):
        sitk_threads(threads)
        pairs.append(to_fixed_grid(small_pair.fixed, small_pair.moving))
    for name in ("fixed_torso", "moving_torso", "mask"):
        serial, threaded = (sitk.GetArrayViewFromImage(getattr(pair, name)) for pair in pairs)
        assert serial.any() and np.array_equal(serial, threaded), name


def test_warnings_of_the_fixed_masks_reach_the_summary_when_masks_run_in_threads(tiny_model, sitk_threads):
    from RegistrationMisalignmentLib.inference import MisalignmentPredictor
    sitk_threads(4)
    ct = sitk.Image([40, 40, 40], sitk.sitkInt16) + 40  # soft tissue only: a torso without lungs
    result = MisalignmentPredictor(tiny_model, device="cpu").predict(ct, ct)
    assert any("no lungs found" in w for w in result.summary["warnings"])


def test_without_lungs_the_warning_says_whether_the_torso_or_the_whole_image_is_evaluated(tiny_predictor,
                                                                                           small_phantom):
    """A body in air without lungs: the torso; no air around it at all (not HU, say): the whole image, and why."""
    ct, lungs = small_phantom
    solid = sitk.Mask(ct, sitk.Not(lungs), outsideValue=40)  # the lungs filled with soft tissue
    warnings = tiny_predictor.predict(solid, solid).summary["warnings"]
    assert any("no lungs found automatically: evaluating the whole torso;" in w for w in warnings)
    shifted = sitk.Cast(ct, sitk.sitkInt32) + 2000  # no voxel left below -500
    warnings = tiny_predictor.predict(shifted, shifted).summary["warnings"]
    assert any("evaluating the whole image (no air was found around the body: check that it is a CT in Hounsfield "
               "units)" in w for w in warnings)
