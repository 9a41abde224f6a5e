"""S1 class probabilities back on the fixed grid: linear interpolation, one axis at a time, inside the mask's box."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from .imageio import image_on_grid, paste

SLAB_VOXELS = 1 << 21  # fixed-grid voxels interpolated at once (12 bytes each as probabilities)


def axis_interpolation(first: int, count: int, spacing: float, s1_first: int, s1_count: int) -> tuple:
    """Lower and upper S1 neighbours and the upper one's weight for fixed indices first..first+count-1 on one axis.

    The S1 grid shares the fixed grid's origin and axes (1 mm apart, starting at global S1 index `s1_first`), so
    fixed index i lies at S1 index i * spacing - s1_first; neighbours beyond the S1 block are clamped to it."""
    position = torch.arange(first, first + count, dtype=torch.float64) * spacing - s1_first
    below = torch.floor(position)
    weight = (position - below).to(torch.float32)
    below = below.long()
    return below.clamp(0, s1_count - 1), (below + 1).clamp(0, s1_count - 1), weight


def _lerp_along(values: torch.Tensor, axis: int, neighbours: tuple) -> torch.Tensor:
    """Linear interpolation of `values` along `axis` between the given lower and upper neighbours."""
    below, above, weight = neighbours
    shape = [1] * values.dim()
    shape[axis] = -1
    weight = weight.view(shape)
    return values.index_select(axis, below) * (1.0 - weight) + values.index_select(axis, above) * weight


@dataclass
class MaskedProbabilities:
    """S1 class probabilities and the evaluation mask inside its bounding box, to interpolate onto the fixed grid."""

    s1: torch.Tensor  # (3, D, H, W) S1 probabilities, zyx, on any device (interpolated there)
    s1_start: np.ndarray  # global S1 index (xyz) of s1[:, 0, 0, 0]
    mask_box: sitk.Image  # the mask inside its bounding box, on the fixed grid
    box_index: list  # xyz index of the box in the fixed grid
    grid: tuple  # size, origin, spacing and direction of the fixed grid

    def slabs(self):
        """Yield (z index in the box, probabilities (z, y, x, 3) that are 0 outside the mask, mask) slab by slab.

        Trilinear interpolation as SimpleITK's linear resampling computes it, in three one-axis passes."""
        size = self.mask_box.GetSize()
        spacing = self.grid[2]
        s1_size = self.s1.shape[:0:-1]  # xyz
        x, y, z_axis = (tuple(t.to(self.s1.device) for t in axis_interpolation(
            self.box_index[a], size[a], spacing[a], int(self.s1_start[a]), s1_size[a])) for a in range(3))
        step = max(1, SLAB_VOXELS // (size[0] * size[1]))
        for z in range(0, size[2], step):
            count = min(step, size[2] - z)
            slab = _lerp_along(self.s1, 1, tuple(t[z:z + count] for t in z_axis))
            probs = _lerp_along(_lerp_along(slab, 2, y), 3, x).permute(1, 2, 3, 0).contiguous().cpu().numpy()
            mask = sitk.RegionOfInterest(self.mask_box, [size[0], size[1], count], [0, 0, z])
            inside = sitk.GetArrayViewFromImage(mask) > 0
            probs[~inside] = 0.0
            yield z, probs, inside

    def on_fixed_grid(self) -> sitk.Image:
        """The probabilities on the whole fixed grid (vector float32, 3 components), 0 outside the mask."""
        image = image_on_grid(self.grid, sitk.sitkVectorFloat32, 3)
        for z, probs, _ in self.slabs():
            paste(image, sitk.GetImageFromArray(probs, isVector=True), self.box_index[:2] + [self.box_index[2] + z])
        return image
