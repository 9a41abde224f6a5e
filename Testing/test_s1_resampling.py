"""The pair on the S1 grid: the one-axis-at-a-time resampling in torch equals SimpleITK's resampling."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationMisalignmentLib import separable
from RegistrationMisalignmentLib.preprocessing import PairOnFixedGrid, crop_to_s1, s1_reference
from RegistrationMisalignmentLib.pyramid import AIR_HU, normalise_channels_


def _image(array: np.ndarray, spacing, direction) -> sitk.Image:
    """An image of an array (zyx) on an offset grid with the given spacing and axes."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.3, 40.1, 7.7))
    image.SetDirection(direction)
    return image


def _pair(spacing, direction, seed: int = 0) -> PairOnFixedGrid:
    """Random HU images (int16 and float32) with speckled torso masks and a field of view that misses a corner."""
    rng = np.random.default_rng(seed)
    shape = (30, 36, 40)
    fixed, moving = (_image(rng.integers(-1024, 1500, shape).astype(dtype), spacing, direction)
                     for dtype in (np.int16, np.float32))
    torsos = [_image((rng.random(shape) > 0.2).astype(np.uint8), spacing, direction) for _ in range(2)]
    inside = np.ones(shape, np.uint8)
    inside[:8, :, :15] = 0
    return PairOnFixedGrid(fixed, fixed, torsos[0], moving, torsos[1], _image(inside, spacing, direction), torsos[0])


def _simpleitk_volume(pair: PairOnFixedGrid, crop_start, size) -> np.ndarray:
    """The S1 input volume as SimpleITK's resampling makes it (air outside the torso and outside the image)."""
    ref = s1_reference(pair.fixed, crop_start, size)
    channels = [sitk.Resample(sitk.Mask(hu, torso, outsideValue=AIR_HU), ref, sitk.Transform(), sitk.sitkLinear,
                              AIR_HU, sitk.sitkFloat32)
                for hu, torso in [(pair.fixed_hu, pair.fixed_torso), (pair.moving_hu, pair.moving_torso)]]
    channels.append(sitk.Resample(pair.inside, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0,
                                  sitk.sitkFloat32))
    volume = torch.from_numpy(np.stack([sitk.GetArrayFromImage(c) for c in channels]))
    return normalise_channels_(volume).numpy()


@pytest.mark.parametrize("spacing, direction", [
    ((0.7, 0.85, 2.5), (-1, 0, 0, 0, 1, 0, 0, 0, -1)),  # anisotropic and flipped: interpolated on every axis
    ((1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),  # a 1 mm CT: plain gathers
])
def test_crop_to_s1_equals_simpleitk_resampling_inside_and_beyond_the_image(spacing, direction, monkeypatch):
    pair = _pair(spacing, direction)
    extent = np.floor(np.asarray(pair.fixed.GetSize()) * np.asarray(spacing)).astype(int)
    start, stop, margin = np.array([8, 8, 8]), 8 * (extent // 8), 16  # the margin reaches beyond every edge
    monkeypatch.setattr(separable, "SLAB_VOXELS", 5000)  # several slabs
    before = [sitk.GetArrayFromImage(image) for image in (pair.fixed_hu, pair.moving_hu)]
    prepared = crop_to_s1(pair, (start, stop), margin)
    assert all(np.array_equal(a, sitk.GetArrayViewFromImage(image))
               for a, image in zip(before, (pair.fixed_hu, pair.moving_hu)))  # inputs untouched
    expected = _simpleitk_volume(pair, start - margin, stop - start + 2 * margin)
    got = prepared.volume.numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5  # HU / 1000 in float32
    assert np.array_equal(got[2], expected[2])
    assert 0.2 < (got[2] > 0).mean() < 0.9  # both inside and outside the image and its field of view


def test_samples_follow_itk_bounds_and_rounding():
    position = torch.tensor([-0.6, -0.5, 0.2, 2.5, 3.49, 3.5], dtype=torch.float64)
    linear = separable.samples_along_axis(position, 4)
    nearest = separable.samples_along_axis(position, 4, nearest=True)
    assert linear.inside.tolist() == [False, True, True, True, True, False]
    assert linear.below.tolist() == [0, 0, 0, 2, 3, 3] and linear.above.tolist() == [0, 0, 1, 3, 3, 3]
    assert nearest.below.tolist() == [0, 0, 0, 3, 3, 3] and not nearest.weight.any()
