"""S1 class probabilities back on the fixed grid: linear interpolation, one axis at a time, inside the mask's box."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk
import torch

from . import labels as L
from .imageio import image_on_grid, paste
from .orientation import reordered_onto
from .separable import AxisSamples, lerp_along, samples_along_axis

SLAB_VOXELS = 1 << 21  # fixed-grid voxels interpolated at once (12 bytes each as probabilities)


def axis_samples(first: int, count: int, spacing: float, s1_first: int, s1_count: int) -> AxisSamples:
    """S1 neighbours and weights for fixed indices first..first+count-1 on one axis.

    The S1 grid shares the fixed grid's origin and axes (1 mm apart, starting at global S1 index `s1_first`), so
    fixed index i lies at S1 index i * spacing - s1_first; neighbours beyond the S1 block are clamped to it."""
    return samples_along_axis(torch.arange(first, first + count, dtype=torch.float64) * spacing - s1_first, s1_count)


def winning_class(probs: torch.Tensor) -> tuple:
    """The largest of three class probabilities (3, ...) and its class index as uint8 (ties go to the first class,
    as with numpy's arg-max), without the 64-bit indices of torch's arg-max."""
    best = (probs[1] > probs[0]).to(torch.uint8)
    confidence = torch.maximum(probs[0], probs[1])
    best = torch.where(probs[2] > confidence, 2, best)
    return torch.maximum(confidence, probs[2], out=confidence), best


@dataclass
class MaskedProbabilities:
    """S1 class probabilities and the evaluation mask inside its bounding box, to interpolate onto the fixed grid."""

    s1: torch.Tensor  # (3, D, H, W) S1 probabilities, zyx, on any device (interpolated there)
    s1_start: np.ndarray  # global S1 index (xyz) of s1[:, 0, 0, 0]
    mask_box: sitk.Image  # the mask inside its bounding box, on the fixed grid
    box_index: list  # xyz index of the box in the fixed grid
    grid: tuple  # size, origin, spacing and direction of the fixed grid
    output_grid: Optional[tuple] = None  # the grid the images are made on when it stores the fixed grid's voxels in
    # another order of axes (the caller's; `orientation.py`); None: the fixed grid itself

    def interpolated_slabs(self):
        """Yield (z index in the box, probabilities (3, z, y, x), mask (z, y, x) as booleans), both on the
        probabilities' device, slab by slab.

        Trilinear interpolation as SimpleITK's linear resampling computes it, in three one-axis passes."""
        size = self.mask_box.GetSize()
        spacing = self.grid[2]
        s1_size = self.s1.shape[:0:-1]  # xyz
        x, y, z_axis = (axis_samples(self.box_index[a], size[a], spacing[a], int(self.s1_start[a]),
                                     s1_size[a]).to(self.s1.device) for a in range(3))
        mask = sitk.GetArrayViewFromImage(self.mask_box)
        step = max(1, SLAB_VOXELS // (size[0] * size[1]))
        for z in range(0, size[2], step):
            count = min(step, size[2] - z)
            slab = lerp_along(self.s1, 1, z_axis.rows(slice(z, z + count)))
            inside = torch.from_numpy(mask[z:z + count] > 0).to(self.s1.device)
            yield z, lerp_along(lerp_along(slab, 2, y), 3, x), inside

    def slabs(self):
        """Yield (z index in the box, probabilities (z, y, x, 3) that are 0 outside the mask, mask) slab by slab, in
        host memory."""
        for z, probs, inside in self.interpolated_slabs():
            probs = probs.masked_fill_(~inside, 0.0).permute(1, 2, 3, 0).contiguous().cpu().numpy()  # its own copy
            yield z, probs, inside.cpu().numpy()

    def labels(self) -> tuple:
        """The arg-max labels on the whole fixed grid (0 outside the mask), the voxel count of each label value and
        the sum of the winning probabilities inside the mask; computed where the probabilities are, so only the
        labels travel to host memory."""
        labels = image_on_grid(self.output_grid or self.grid, sitk.sitkUInt8)
        counts = torch.zeros(len(L.CLASS_NAMES), dtype=torch.int64, device=self.s1.device)
        confidence_sum = torch.zeros((), dtype=torch.float64, device=self.s1.device)
        for z, probs, inside in self.interpolated_slabs():
            confidence, best = winning_class(probs)
            slab = torch.where(inside, best + L.CORRECT, L.NOT_EVALUATED)
            counts += torch.bincount(slab.flatten(), minlength=len(L.CLASS_NAMES))
            confidence_sum += confidence.masked_fill_(~inside, 0.0).sum(dtype=torch.float64)
            self._paste_slab(labels, sitk.GetImageFromArray(slab.cpu().numpy()), z)
            del probs, inside, confidence, best, slab  # freed before the next slab is interpolated
        return labels, counts.cpu().numpy(), float(confidence_sum)

    def on_fixed_grid(self) -> sitk.Image:
        """The probabilities on the whole fixed grid (vector float32, 3 components), 0 outside the mask."""
        image = image_on_grid(self.output_grid or self.grid, sitk.sitkVectorFloat32, 3)
        for z, probs, _ in self.slabs():
            self._paste_slab(image, sitk.GetImageFromArray(probs, isVector=True), z)
        return image

    def _paste_slab(self, image: sitk.Image, slab: sitk.Image, z: int) -> None:
        """Paste a slab of the mask's box (starting `z` slices into it) into an image on the output grid, its voxels
        reordered into that grid's order of axes when it differs from the fixed grid's."""
        index = self.box_index[:2] + [self.box_index[2] + z]
        if self.output_grid is None:
            paste(image, slab, index)
            return
        _, origin, spacing, direction = self.grid
        slab.SetOrigin(tuple(np.asarray(origin) + np.asarray(direction).reshape(3, 3) @ (np.asarray(index) *
                                                                                        np.asarray(spacing))))
        slab.SetSpacing(spacing)
        slab.SetDirection(direction)
        reordered = reordered_onto(slab, image.GetDirection())
        paste(image, reordered, image.TransformPhysicalPointToIndex(reordered.GetOrigin()))
