"""Resampling between grids that share origin and axes (the fixed and S1 grids): one axis at a time, in torch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SLAB_VOXELS = 1 << 20  # target voxels resampled at once onto the S1 grid (4x larger slabs raised the peak memory of
# a 512x512x600 predict by 0.1 GiB: BENCHMARKS.md, memory section)


@dataclass
class AxisSamples:
    """Per target index along one axis: lower and upper source neighbours, the upper one's weight, and whether the
    point lies inside the source (else it gets the default value); `on_points` when every weight is 0."""

    below: torch.Tensor
    above: torch.Tensor
    weight: torch.Tensor
    inside: torch.Tensor
    on_points: bool

    def rows(self, rows: slice) -> "AxisSamples":
        """The samples of some target rows."""
        return AxisSamples(self.below[rows], self.above[rows], self.weight[rows], self.inside[rows], self.on_points)

    def within(self, span: tuple) -> "AxisSamples":
        """The samples with neighbours counted from the start of a source span (first, stop), clamped to it (points
        outside the source keep their default value whatever they read)."""
        first, stop = span
        return AxisSamples((self.below - first).clamp(0, stop - first - 1),
                           (self.above - first).clamp(0, stop - first - 1), self.weight, self.inside, self.on_points)

    def to(self, device) -> "AxisSamples":
        """The same samples on a device (sent once, not for every slab)."""
        return AxisSamples(*(t.to(device) for t in (self.below, self.above, self.weight, self.inside)), self.on_points)


def samples_along_axis(position: torch.Tensor, source_count: int, nearest: bool = False) -> AxisSamples:
    """Neighbours of continuous source indices (float64), as ITK interpolates: a point is inside from -0.5 to
    count - 0.5, neighbours beyond the edge are clamped to it, nearest neighbour rounds halves up."""
    inside = (position >= -0.5) & (position < source_count - 0.5)
    below = torch.floor(position + 0.5) if nearest else torch.floor(position)
    weight = torch.zeros_like(position) if nearest else position - below
    below = below.long()
    return AxisSamples(below.clamp(0, source_count - 1), (below + 1).clamp(0, source_count - 1),
                       weight.to(torch.float32), inside, not bool(weight.any()))


def lerp_along(values: torch.Tensor, axis: int, samples: AxisSamples) -> torch.Tensor:
    """Linear interpolation of `values` along `axis` between the samples' neighbours (on the same device; a plain
    gather when the samples fall on source points)."""
    lower = values.index_select(axis, samples.below)
    if samples.on_points:
        return lower
    shape = [1] * values.dim()
    shape[axis] = -1
    weight = samples.weight.view(shape)
    return lower * (1.0 - weight) + values.index_select(axis, samples.above) * weight


def source_span(samples: AxisSamples) -> tuple:
    """First and one-past-last source index that the samples inside the source read (0, 1 when none is inside)."""
    if not bool(samples.inside.any()):
        return 0, 1
    return int(samples.below[samples.inside].min()), int(samples.above[samples.inside].max()) + 1


def float32_copy_on(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 copy of an array on a device (never a view: the array is never changed); to a GPU it travels in
    its own pixel type."""
    if device.type == "cpu":
        return torch.from_numpy(np.array(array, dtype=np.float32))
    return torch.from_numpy(np.array(array)).to(device).float()


def resample_onto_s1_(target: torch.Tensor, source: np.ndarray, axes: list, default: float,
                      keep: np.ndarray = None) -> torch.Tensor:
    """Fill `target` (D, H, W, on any device: the work is done there) by resampling a source array (zyx) with
    per-axis samples (z, y, x); points outside the source get `default`, and so do source voxels where `keep` (same
    shape) is zero. Works slab by slab."""
    z_axis, y_axis, x_axis = axes
    (y0, y1), (x0, x1) = y_span, x_span = source_span(y_axis), source_span(x_axis)
    y_axis, x_axis = y_axis.within(y_span).to(target.device), x_axis.within(x_span).to(target.device)
    step = max(1, SLAB_VOXELS // (target.shape[1] * target.shape[2]))
    for z in range(0, target.shape[0], step):
        rows = slice(z, min(z + step, target.shape[0]))
        slab_axis = z_axis.rows(rows)
        z0, z1 = z_span = source_span(slab_axis)
        box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        values = float32_copy_on(source[box], target.device)
        if keep is not None:
            values.masked_fill_(torch.from_numpy(keep[box] == 0).to(target.device), default)
        rows_axis = slab_axis.within(z_span).to(target.device)
        slab = lerp_along(lerp_along(lerp_along(values, 0, rows_axis), 1, y_axis), 2, x_axis)
        outside = ~(rows_axis.inside.view(-1, 1, 1) & y_axis.inside.view(1, -1, 1) & x_axis.inside.view(1, 1, -1))
        target[rows] = slab.masked_fill_(outside, default)
    return target
