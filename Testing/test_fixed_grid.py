"""S1 probabilities back on the fixed grid: the one-axis-at-a-time interpolation equals SimpleITK's linear resampling."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationMisalignmentLib.fixed_grid import MaskedProbabilities
from RegistrationMisalignmentLib.preprocessing import s1_reference


def _fixed_grid() -> sitk.Image:
    """An anisotropic, flipped, offset fixed grid (the S1 grid shares its origin and axes)."""
    fixed = sitk.Image([40, 36, 30], sitk.sitkUInt8)
    fixed.SetSpacing((0.7, 0.85, 2.5))
    fixed.SetOrigin((-12.3, 40.1, 7.7))
    fixed.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    return fixed


def test_slabs_equal_simpleitk_linear_resampling_inside_the_mask():
    fixed = _fixed_grid()
    rng = np.random.default_rng(0)
    s1_start, s1_size = np.array([2, 3, 8]), np.array([24, 28, 64])  # xyz, covering the box below with a margin
    probs = rng.random((3,) + tuple(s1_size[::-1])).astype(np.float32)
    index, size = [5, 6, 4], [20, 22, 18]
    mask = np.zeros(tuple(size[::-1]), np.uint8)
    mask[2:-2, 1:-3, 3:-1] = rng.random((size[2] - 4, size[1] - 4, size[0] - 4)) > 0.3
    mask_box = sitk.GetImageFromArray(mask)
    mask_box.SetSpacing(fixed.GetSpacing())
    mask_box.SetDirection(fixed.GetDirection())
    mask_box.SetOrigin(fixed.TransformIndexToPhysicalPoint(index))
    grid = (fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    masked = MaskedProbabilities(torch.from_numpy(probs), s1_start, mask_box, index, grid)
    masked_slabs = list(masked.slabs())
    assert len(masked_slabs) == 1
    _, got, inside = masked_slabs[0]
    vector = sitk.GetImageFromArray(np.moveaxis(probs, 0, -1), isVector=True)
    vector.CopyInformation(s1_reference(fixed, s1_start, s1_size))
    expected = sitk.GetArrayFromImage(sitk.Resample(vector, mask_box, sitk.Transform(), sitk.sitkLinear, 0.0,
                                                    sitk.sitkVectorFloat32))
    assert inside.sum() > 1000 and np.array_equal(inside, mask > 0)
    assert np.abs(got[inside] - expected[inside]).max() < 1e-6
    assert not got[~inside].any()
    image = masked.on_fixed_grid()
    assert image.GetSize() == fixed.GetSize() and image.GetNumberOfComponentsPerPixel() == 3
    whole = sitk.GetArrayViewFromImage(image)
    assert np.array_equal(whole[index[2]:index[2] + size[2], index[1]:index[1] + size[1], index[0]:index[0] + size[0]],
                          got)


def test_slabs_split_a_large_box_without_changing_it(monkeypatch):
    from RegistrationMisalignmentLib import fixed_grid
    fixed = _fixed_grid()
    probs = torch.rand((3, 64, 28, 24))
    mask_box = sitk.Image([20, 22, 18], sitk.sitkUInt8) + 1
    grid = (fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    whole = [p for _, p, _ in MaskedProbabilities(probs, np.array([2, 3, 8]), mask_box, [5, 6, 4], grid).slabs()]
    monkeypatch.setattr(fixed_grid, "SLAB_VOXELS", 20 * 22 * 5)
    parts = list(MaskedProbabilities(probs, np.array([2, 3, 8]), mask_box, [5, 6, 4], grid).slabs())
    assert [z for z, _, _ in parts] == [0, 5, 10, 15]
    assert np.array_equal(np.concatenate([p for _, p, _ in parts]), whole[0])


def test_labels_are_the_arg_max_inside_the_mask_with_ties_to_the_first_class(monkeypatch):
    from RegistrationMisalignmentLib import fixed_grid
    fixed = _fixed_grid()
    rng = np.random.default_rng(1)
    probs = torch.from_numpy(rng.integers(0, 3, (3, 64, 28, 24)).astype(np.float32) / 2)  # many equal values
    mask = (rng.random((18, 22, 20)) > 0.3).astype(np.uint8)
    mask_box = sitk.GetImageFromArray(mask)
    index = [5, 6, 4]
    grid = (fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(), fixed.GetDirection())
    monkeypatch.setattr(fixed_grid, "SLAB_VOXELS", 20 * 22 * 5)  # several slabs
    masked = MaskedProbabilities(probs, np.array([2, 3, 8]), mask_box, index, grid)
    labels, counts, confidence_sum = masked.labels()
    interpolated = np.concatenate([p for _, p, _ in masked.slabs()])
    inside = mask > 0
    tied = (interpolated == interpolated.max(-1, keepdims=True)).sum(-1) > 1
    assert tied[inside].sum() > 100
    expected = np.where(inside, interpolated.argmax(-1) + 1, 0)
    whole = sitk.GetArrayViewFromImage(labels)
    assert labels.GetSize() == fixed.GetSize()
    assert np.array_equal(whole[4:22, 6:28, 5:25], expected)
    assert whole.sum() == expected.sum()  # nothing outside the box
    assert np.array_equal(counts[1:], np.bincount(expected[inside], minlength=4)[1:])
    assert counts[0] == inside.size - inside.sum()
    assert confidence_sum == pytest.approx(float(interpolated.max(-1)[inside].sum(dtype=np.float64)), rel=1e-12)
