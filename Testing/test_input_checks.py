"""Tests of the warning about CT intensities that are not in Hounsfield units: a wrong rescale slope or intercept."""
import logging
import re

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib.input_checks import hu_scale_problem, sampled_voxels, warn_if_not_ct

from conftest import image_like, shared_ct

SLOPE = "(a wrong rescale slope? check its conversion to HU)"
# A wrong rescale, what the warning must say about it, and the range of the factor it may estimate.
WRONG_RESCALES = {
    "slope 0.5": (lambda hu: hu * 0.5, SLOPE, (0.4, 0.62)),
    "slope 2": (lambda hu: hu * 2.0, SLOPE, (1.6, 2.5)),
    "intercept -1024 twice": (lambda hu: hu - 1024.0, "shifted by about -1024 (a wrong rescale intercept? add 1024)",
                              None),
    "intercept missing": (lambda hu: hu + 1024.0, "shifted by about +1024 (a wrong rescale intercept? subtract 1024)",
                          None),
}


def _assert_names(problem: str, rescale: str) -> None:
    """Assert that a warning names the wrong rescale, with a plausible factor for a slope."""
    _, says, factors = WRONG_RESCALES[rescale]
    assert problem is not None and says in problem, (rescale, problem)
    if factors is not None:
        factor = float(re.search(r"multiplied by about ([0-9.]+) ", problem).group(1))
        assert factors[0] <= factor <= factors[1], (rescale, problem)


def _warnings(caplog, image: sitk.Image) -> list:
    """The warnings of warn_if_not_ct about `image`."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="RegistrationMisalignment"):
        warn_if_not_ct(image, "fixed image")
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _with_padding(ct: sitk.Image, value: float) -> np.ndarray:
    """The CT's HU (float) with `value` outside the largest circle of each axial slice, as scanners pad."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float32)
    y, x = np.indices(hu.shape[1:])
    radius = min(hu.shape[1:]) / 2
    hu[:, (y - hu.shape[1] / 2) ** 2 + (x - hu.shape[2] / 2) ** 2 > radius ** 2] = value
    return hu


@pytest.mark.parametrize("padding", [None, -3024.0, -2048.0, -1024.0])
def test_a_ct_in_hu_is_not_warned_about_with_any_padding(small_phantom, caplog, padding):
    ct = small_phantom[0]
    hu = sitk.GetArrayFromImage(ct) if padding is None else _with_padding(ct, padding)
    assert _warnings(caplog, image_like(hu, ct)) == []


@pytest.mark.parametrize("padding", [None, -3024.0])
@pytest.mark.parametrize("rescale", sorted(WRONG_RESCALES))
def test_a_wrong_rescale_is_warned_about_in_one_line_naming_it(small_phantom, caplog, rescale, padding):
    ct = small_phantom[0]
    hu = sitk.GetArrayFromImage(ct).astype(np.float32) if padding is None else _with_padding(ct, padding)
    messages = _warnings(caplog, image_like(WRONG_RESCALES[rescale][0](hu), ct))
    assert len(messages) == 1, messages
    _assert_names(messages[0], rescale)
    assert messages[0].startswith("fixed image: intensities look ") and "; air (lungs, around the body)" in messages[0]
    assert messages[0].endswith("the map may be meaningless")


def test_an_image_without_air_is_left_to_the_range_check(small_phantom, caplog):
    normalised = sitk.RescaleIntensity(sitk.Cast(small_phantom[0], sitk.sitkFloat32), 0.0, 1.0)
    assert hu_scale_problem(sampled_voxels(normalised)) is None
    messages = _warnings(caplog, normalised)
    assert len(messages) == 1 and "do not look like a CT in Hounsfield units" in messages[0]


@pytest.fixture(scope="module", params=["thorax_nsclc_r01-001.nii.gz", "thorax_philips_00.nii.gz"])
def real_sample(request):
    """The strided sample of a shared real CT's voxels that the check sees."""
    return sampled_voxels(sitk.ReadImage(str(shared_ct(request.param))))


@pytest.mark.parametrize("padding", [None, -3024.0])
def test_real_cts_in_hu_pass_and_their_wrong_rescales_are_named(real_sample, padding):
    """Padding outside the scan circle: a fifth of the voxels at one value, as a CT not cropped to the body has."""
    hu = real_sample if padding is None else np.concatenate([real_sample, np.full(real_sample.size // 4, padding)])
    assert hu_scale_problem(hu) is None
    for rescale, (change, _, _) in WRONG_RESCALES.items():
        _assert_names(hu_scale_problem(change(hu)), rescale)
