"""Binary dilation, erosion and closing by SimpleITK's ball structuring element, and dilation by a cube, as unions of
shifted copies (numpy).

SimpleITK's ball of radius (rx, ry, rz) voxels holds the offsets o with sum((o_i / (r_i + 0.5))^2) <= 1. Dilating
by it is the union, over its (dz, dy) rows, of the mask dilated along x by the row's half-width and shifted by
(dz, dy): the same voxels as SimpleITK's filters (tested), several times faster on lung masks."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np


def ball_rows(radius_xyz: Sequence[int]) -> Dict[Tuple[int, int], int]:
    """Half-width along x of every (dz, dy) row of the ball."""
    rx, ry, rz = (int(r) for r in radius_xyz)
    semi_axes = [r + 0.5 for r in (rx, ry, rz)]
    rows = {}
    for dz in range(-rz, rz + 1):
        for dy in range(-ry, ry + 1):
            widths = [dx for dx in range(rx + 1)
                      if sum((o / a) ** 2 for o, a in zip((dx, dy, dz), semi_axes)) <= 1.0]
            if widths:
                rows[(dz, dy)] = max(widths)
    return rows


def _or_shifted(out: np.ndarray, source: np.ndarray, shift_zyx: Sequence[int]) -> None:
    """out |= source moved by `shift_zyx` voxels (nothing comes in from beyond the edges)."""
    target, origin = [], []
    for shift, n in zip(shift_zyx, source.shape):
        target.append(slice(max(shift, 0), max(n + min(shift, 0), 0)))
        origin.append(slice(max(-shift, 0), max(n - max(shift, 0), 0)))
    out[tuple(target)] |= source[tuple(origin)]


def ball_dilate(mask: np.ndarray, radius_xyz: Sequence[int]) -> np.ndarray:
    """Dilation of a boolean volume (zyx) by the ball, with nothing outside the volume (SimpleITK's BinaryDilate)."""
    rows = ball_rows(radius_xyz)
    along_x = {0: mask}
    line = mask
    for width in range(1, max(rows.values()) + 1):
        line = line.copy()
        _or_shifted(line, mask, (0, 0, width))
        _or_shifted(line, mask, (0, 0, -width))
        along_x[width] = line
    out = np.zeros_like(mask)
    for (dz, dy), width in rows.items():
        _or_shifted(out, along_x[width], (dz, dy, 0))
    return out


def ball_erode(mask: np.ndarray, radius_xyz: Sequence[int]) -> np.ndarray:
    """Erosion of a boolean volume by the ball, counting everything outside the volume as foreground (SimpleITK's
    BinaryErode)."""
    return ~ball_dilate(~mask, radius_xyz)


def ball_close(mask: np.ndarray, radius_xyz: Sequence[int]) -> np.ndarray:
    """Closing by the ball with the volume padded by the radius first (SimpleITK's BinaryMorphologicalClosing with
    its safe border)."""
    pad = [(int(r), int(r)) for r in reversed(radius_xyz)]
    closed = ball_erode(ball_dilate(np.pad(mask, pad), radius_xyz), radius_xyz)
    return closed[tuple(slice(before, before + n) for (before, _), n in zip(pad, mask.shape))]


def box_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation of a boolean volume by a cube of edge 2 * radius + 1, one axis at a time (nothing outside)."""
    for axis in range(mask.ndim):
        grown = mask.copy()
        for shift in range(1, radius + 1):
            for signed in (shift, -shift):
                _or_shifted(grown, mask, [signed if a == axis else 0 for a in range(mask.ndim)])
        mask = grown
    return mask


def box_erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion of a boolean volume by a cube of edge 2 * radius + 1, counting everything outside the volume as
    foreground (SimpleITK's BinaryErode with a box)."""
    return ~box_dilate(~mask, radius)
