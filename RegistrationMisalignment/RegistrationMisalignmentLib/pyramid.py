"""Intensity normalisation, the S1/S2/S4 pyramid and aligned patch geometry, in torch."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .model import ModelConfig, edges_zyx, input_size

HU_MIN, HU_MAX = -1024.0, 1500.0
AIR_HU = -1024.0
PAD_VALUE = AIR_HU / 1000.0  # normalised value of voxels outside the image (the validity channel tells them apart)
BORDER_S1 = 8  # extra S1 voxels so that smoothing at a crop border never reaches a patch


def stack_channels(fixed_hu: torch.Tensor, moving_hu: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Return the (3, D, H, W) network input: normalised fixed, moving (PAD_VALUE outside) and inside flag; for a
    batch of (N, D, H, W) volumes, (N, 3, D, H, W)."""
    return normalise_channels_(torch.stack([fixed_hu, moving_hu, inside.to(fixed_hu.dtype)], dim=-4))


def normalise_channels_(volume: torch.Tensor) -> torch.Tensor:
    """In place on a (..., 3, D, H, W) stack of fixed HU, moving HU and inside flag: clip HU to the CT range, scale
    to about [-1, 1.5] (water = 0) and set PAD_VALUE where the flag is not positive."""
    outside = ~(volume.select(-4, 2) > 0)
    for channel in volume.unbind(-4)[:2]:
        channel.clamp_(HU_MIN, HU_MAX).div_(1000.0).masked_fill_(outside, PAD_VALUE)
    return volume


def separable_filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Filter every channel of a (C, D, H, W) volume with the same odd 1-D kernel along each axis (replicate border)."""
    c, radius = x.shape[0], (len(kernel) - 1) // 2
    y = x.unsqueeze(0)
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(kernel)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        y = F.conv3d(F.pad(y, pad, mode="replicate"), kernel.view(shape).expand(c, 1, *shape[2:]), groups=c)
    return y[0]


def smooth_downsample(x: torch.Tensor) -> torch.Tensor:
    """Smooth a (C, D, H, W) volume with the binomial kernel (1, 2, 1) / 4 (sigma ~ 0.7 voxel, replicate border)
    and average-pool it by 2.

    Per axis this is the kernel (1, 3, 3, 1) / 8 at stride 2; axes are halved one after the other, so the
    temporaries stay below the input's size."""
    for dim in (1, 2, 3):
        x = _halve(x, dim)
    return x


def _halve(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Binomial smoothing and pairwise averaging along one even-sized axis: (1, 3, 3, 1) / 8, stride 2."""
    pairs = x.unflatten(dim, (x.shape[dim] // 2, 2))
    even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    n = even.shape[dim]
    out = (even + odd).mul_(3.0)
    out.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1))
    out.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1))
    out.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1))
    out.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1))
    return out.mul_(0.125)


def build_pyramid(s1: torch.Tensor) -> dict:
    """Return {1: S1, 2: S2, 4: S4} from a (C, D, H, W) 1 mm volume whose dimensions are multiples of 4, or from a
    batch of them (N, C, D, H, W)."""
    if any(n % 4 for n in s1.shape[-3:]):
        raise ValueError(f"pyramid input dimensions must be multiples of 4, got {tuple(s1.shape[-3:])}")
    channels = s1 if s1.dim() == 4 else s1.flatten(0, 1)  # a batch's channels side by side
    s2 = smooth_downsample(channels)
    s4 = smooth_downsample(s2)
    return {1: s1, 2: s2.reshape(*s1.shape[:-3], *s2.shape[-3:]), 4: s4.reshape(*s1.shape[:-3], *s4.shape[-3:])}


def context_margin(config: ModelConfig, out_size: int) -> int:
    """S1 voxels of context needed on each side of an output tile (multiple of 8, includes BORDER_S1)."""
    need = max(lv * input_size(config, lv, out_size) // 2 - out_size // 2 for lv in config.levels)
    return int(math.ceil((need + BORDER_S1) / 8.0) * 8)


def tile_inputs(pyramid: dict, config: ModelConfig, start, out_size) -> dict:
    """Cut the per-level input patches of the S1 output tile starting at `start` (pyramid S1 index, multiples of 4)
    with edge `out_size` (one edge, or zyx edges: a box)."""
    if any(int(s) % 4 for s in start):
        raise ValueError(f"tile start must be a multiple of 4 S1 voxels, got {tuple(start)}")
    edges = edges_zyx(out_size)
    patches = {}
    for lv in config.levels:
        sizes = [input_size(config, lv, n) for n in edges]
        lo = [(int(s) + n // 2) // lv - size // 2 for s, n, size in zip(start, edges, sizes)]
        vol = pyramid[lv]
        if min(lo) < 0 or any(l + size > n for l, size, n in zip(lo, sizes, vol.shape[-3:])):
            raise ValueError("tile context reaches outside the prepared volume; enlarge the context margin")
        patches[lv] = vol[(Ellipsis,) + tuple(slice(l, l + size) for l, size in zip(lo, sizes))]
    return patches


def batch_tiles(pyramid: dict, config: ModelConfig, starts, out_size) -> dict:
    """Stack the input patches of several tiles of one edge (or zyx edges) into a batch {level: (N, 3, d, h, w)}."""
    tiles = [tile_inputs(pyramid, config, s, out_size) for s in starts]
    return {lv: torch.stack([t[lv] for t in tiles]) for lv in config.levels}

