"""From a fixed/moving image pair to the aligned S1 tensor the network reads (SimpleITK side)."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch

from .errors import InputError
from .imageio import available_memory_bytes, check_volume, physical_bounds
from .input_checks import voxel_size_text, warn_about_unusual_inputs
from .mask_threads import start_beside
from .masks import automatic_lung_mask, bounding_box, torso_mask
from .pyramid import AIR_HU, normalise_channels_
from .separable import resample_onto_s1_, samples_along_axis
from .transforms import WRITE_IT_RIGHT, TransformDomain, check_transform, transform_domain

log = logging.getLogger("RegistrationMisalignment")
S1_SPACING = 1.0
BLOCK = 8  # S1 voxels: tiles and regions are aligned to this grid
MIN_COVERED_FRACTION = 0.99  # of the region to evaluate that the moving image may leave uncovered without a warning
MIN_TRANSFORM_SHARE = 0.1  # of the region to evaluate that a transform's grid must cover: less is another image's
# The region to evaluate on the 1 mm working grid beyond which no chest goes (a wrong voxel size in the header does):
# 1 m along an axis, 125 litres
MAX_REGION_MM, MAX_REGION_VOXELS = 1000, 500 ** 3
# Peak bytes per voxel of the 1 mm working grid with its context: the three channels (12), the pyramid's coarser
# levels (2), the probabilities (12) and the masks of the voxels needed (a few); 21 measured (the small phantom's
# pair with 1 and 2 mm voxels, `predict` with the tiny test network), with margin
BYTES_PER_S1_VOXEL = 32
EXACT_HU_TYPES = (sitk.sitkInt16, sitk.sitkInt32, sitk.sitkFloat32)  # hold HU and air as float32 would, no copy needed


@dataclass
class PreparedPair:
    """The pair on the S1 grid around the region to evaluate, plus what is needed to map results back."""

    fixed: sitk.Image
    mask: sitk.Image
    volume: torch.Tensor  # (3, D, H, W): normalised fixed, moving, inside flag; zyx order
    crop_start: np.ndarray  # global S1 index (xyz) of volume[:, 0, 0, 0]
    region_start: np.ndarray  # start (xyz, in crop voxels) of the block-aligned region to evaluate
    region_size: np.ndarray  # size (xyz) of that region, multiples of BLOCK

    def s1_grid(self, start_xyz, size_xyz) -> sitk.Image:
        """Return an empty image describing an S1 sub-grid (start relative to the crop)."""
        return s1_reference(self.fixed, self.crop_start + np.asarray(start_xyz), size_xyz)


def s1_reference(fixed: sitk.Image, global_start_xyz, size_xyz) -> sitk.Image:
    """Empty 1 mm image sharing the fixed image's origin and axes, starting at a global S1 index."""
    ref = sitk.Image([int(s) for s in size_xyz], sitk.sitkUInt8)
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    ref.SetOrigin(tuple(np.asarray(fixed.GetOrigin()) + direction @ (np.asarray(global_start_xyz) * S1_SPACING)))
    ref.SetSpacing((S1_SPACING,) * 3)
    ref.SetDirection(fixed.GetDirection())
    return ref


def check_overlap(fixed: sitk.Image, moving: sitk.Image) -> None:
    """Raise InputError if the two images do not overlap in physical space."""
    (flo, fhi), (mlo, mhi) = physical_bounds(fixed), physical_bounds(moving)
    if np.any(np.minimum(fhi, mhi) < np.maximum(flo, mlo)):
        raise InputError("fixed and moving images do not overlap in space; check their origins and orientation "
                         "(the moving image must already be registered to the fixed image)")


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction."""
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def hu_image(image: sitk.Image) -> sitk.Image:
    """The image itself when its pixel type holds HU and air exactly as float32 would, else a float32 copy."""
    return image if image.GetPixelID() in EXACT_HU_TYPES else sitk.Cast(image, sitk.sitkFloat32)


def moving_on_fixed_grid(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform = None) -> tuple:
    """Return the moving image (HU: its own pixel type or float32) and its field-of-view mask (UInt8) on the fixed grid.

    `transform` (fixed-to-moving, as ITK resampling and Slicer transform files use) is applied first."""
    if transform is not None:
        check_transform(transform)
    moving = hu_image(moving)
    if transform is None and same_grid(fixed, moving):
        inside = sitk.Image(fixed.GetSize(), sitk.sitkUInt8) + 1
        inside.CopyInformation(fixed)
        return moving, inside
    if transform is None:
        log.warning("moving image is on another grid than the fixed image: resampling it onto the fixed grid")
    transform = transform or sitk.Transform()
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return resampled, inside


def evaluation_mask(fixed: sitk.Image, mask, torso: sitk.Image) -> sitk.Image:
    """Return the user's mask on the fixed grid (non-zero = evaluate), or the automatic lungs with their hila."""
    if mask is None:
        lungs = automatic_lung_mask(fixed, torso)
        if sitk.GetArrayViewFromImage(lungs).any():
            return lungs
        if not sitk.GetArrayViewFromImage(torso).any():
            raise InputError("no body found in the fixed image (nothing above -500 HU); check that it is a CT in "
                             "Hounsfield units, or pass a mask of the region to evaluate")
        region = "image (no air was found around the body: check that it is a CT in Hounsfield units)" \
            if sitk.GetArrayViewFromImage(torso).all() else "torso"
        log.warning(f"no lungs found automatically: evaluating the whole {region}; choose the region with a mask "
                    "(--mask; in Slicer, Mask)")
        return torso
    check_volume(mask, "mask")
    if not same_grid(mask, fixed):
        mask = sitk.Resample(mask, fixed, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(binary).any():
        raise InputError("mask is empty on the fixed image's grid; pass a mask that covers the region to evaluate")
    return binary


def mask_region_s1(fixed: sitk.Image, mask: sitk.Image) -> tuple:
    """Global S1 index range (xyz start, stop), block-aligned, covering the mask plus interpolation neighbours."""
    index, size = bounding_box(mask)
    lo_idx = np.asarray(index, dtype=float)
    hi_idx = lo_idx + np.asarray(size) - 1
    spacing = np.asarray(fixed.GetSpacing())
    lo = np.floor(lo_idx * spacing / S1_SPACING).astype(int)
    hi = np.floor(hi_idx * spacing / S1_SPACING).astype(int) + 2
    return BLOCK * np.floor_divide(lo, BLOCK), BLOCK * -np.floor_divide(-hi, BLOCK)


def s1_neighbours_of_mask(mask: sitk.Image, global_start_xyz, size_xyz) -> np.ndarray:
    """The voxels (zyx, boolean) of an S1 grid starting at a global S1 index that are linear-interpolation neighbours
    of some mask voxel: on each axis, fixed index i lies at S1 index i * spacing, between its floor and the next.

    Every mask voxel counts, however thin the mask and however fine the fixed grid (one axis at a time: the groups of
    fixed voxels sharing a floor are OR-ed, then set at the floor and the next index)."""
    if not sitk.GetArrayViewFromImage(mask).any():
        return np.zeros(np.asarray(size_xyz)[::-1], dtype=bool)
    index, size = bounding_box(mask)
    marked = sitk.GetArrayViewFromImage(mask)[tuple(slice(i, i + n) for i, n in zip(index[::-1], size[::-1]))] > 0
    for axis_xyz, (first, count, spacing) in enumerate(zip(index, size, mask.GetSpacing())):
        axis = 2 - axis_xyz
        below = np.floor(np.arange(first, first + count) * (spacing / S1_SPACING)
                         - global_start_xyz[axis_xyz]).astype(np.int64)
        groups = np.flatnonzero(np.r_[True, below[1:] != below[:-1]])
        pooled = marked if len(groups) == count else np.logical_or.reduceat(marked, groups, axis=axis)
        shape = list(marked.shape)
        shape[axis] = int(size_xyz[axis_xyz])
        marked = np.zeros(shape, dtype=bool)
        for neighbour in (below[groups], below[groups] + 1):
            _or_rows(np.moveaxis(marked, axis, 0), neighbour, np.moveaxis(pooled, axis, 0))
    return marked


def _or_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """target[rows] |= values along the first axis for increasing, distinct rows; rows outside the target are
    skipped, consecutive ones are written as a slice (no copy)."""
    first, stop = np.searchsorted(rows, [0, len(target)])
    if first == stop:
        return
    rows, values = rows[first:stop], values[first:stop]
    if rows[-1] - rows[0] == len(rows) - 1:
        target[rows[0]:rows[-1] + 1] |= values
    else:
        target[rows] |= values


def points_region_s1(fixed: sitk.Image, points_s1: np.ndarray) -> tuple:
    """Global S1 index range (xyz start, stop), block-aligned, covering continuous S1 indices and neighbours."""
    lo = np.floor(points_s1.min(0)).astype(int)
    hi = np.floor(points_s1.max(0)).astype(int) + 2
    return BLOCK * np.floor_divide(lo, BLOCK), BLOCK * -np.floor_divide(-hi, BLOCK)


def s1_samples(fixed: sitk.Image, global_start_xyz, size_xyz, nearest: bool = False) -> list:
    """Per-axis samples (z, y, x) of the fixed grid at the points of an S1 grid starting at a global S1 index.

    The S1 grid shares the fixed grid's origin and axes, so S1 index j lies at fixed index j * 1 mm / spacing."""
    axes = [samples_along_axis(torch.arange(int(first), int(first) + int(count), dtype=torch.float64)
                               * (S1_SPACING / spacing), source_count, nearest)
            for first, count, spacing, source_count in zip(global_start_xyz, size_xyz, fixed.GetSpacing(),
                                                           fixed.GetSize())]
    return axes[::-1]


@dataclass
class PairOnFixedGrid:
    """Both images (HU) on the fixed grid with their torso masks, the joint field of view and the evaluation mask."""

    fixed: sitk.Image
    fixed_hu: sitk.Image
    fixed_torso: sitk.Image
    moving_hu: sitk.Image
    moving_torso: sitk.Image
    inside: sitk.Image
    mask: sitk.Image


def to_fixed_grid(fixed: sitk.Image, moving: sitk.Image, mask=None, transform=None,
                  torsos_ready: Callable[[PairOnFixedGrid], None] = None) -> PairOnFixedGrid:
    """Check the pair, put the moving image on the fixed grid (through `transform` if given), resolve the mask; the
    moving image's torso mask is made in a second thread while the fixed image's masks are made, when threads allow.

    `torsos_ready(pair)`, if given, is called with the pair (its `mask` None) as soon as both torso masks exist, before
    the evaluation mask is made."""
    check_volume(fixed, "fixed image")
    check_volume(moving, "moving image")
    warn_about_unusual_inputs(fixed, moving)
    if transform is None:
        check_overlap(fixed, moving)
    moving_hu, inside = moving_on_fixed_grid(fixed, moving, transform)
    domain = transform_domain(fixed, transform)
    if domain is not None:
        inside = sitk.And(inside, domain.inside)
    if not sitk.GetArrayViewFromImage(inside).any():
        raise InputError("fixed and moving images do not overlap in space; check their origins and orientation")
    with ThreadPoolExecutor(max_workers=1) as pool:  # the fixed masks stay on this thread: its warnings are captured
        moving_torso = start_beside(pool, torso_mask, moving_hu)
        fixed_hu = hu_image(fixed)
        fixed_torso = torso_mask(fixed_hu)
        if torsos_ready is not None:
            torsos_ready(PairOnFixedGrid(fixed, fixed_hu, fixed_torso, moving_hu, moving_torso.result(), inside, None))
        mask = within_field_of_view(within_transform_domain(evaluation_mask(fixed_hu, mask, fixed_torso), domain),
                                    inside)
        return PairOnFixedGrid(fixed, fixed_hu, fixed_torso, moving_hu, moving_torso.result(), inside, mask)


def within_field_of_view(mask: sitk.Image, inside: sitk.Image) -> sitk.Image:
    """The evaluation mask where the moving image has data (its field of view on the fixed grid), with a warning
    when that leaves less than MIN_COVERED_FRACTION of it, or an InputError when nothing of it is left."""
    if sitk.GetArrayViewFromImage(inside).all():
        return mask
    covered, fraction = covered_share(mask, inside)
    if not fraction:
        raise InputError("the moving image does not cover the region to evaluate (the lungs, or the mask) anywhere; "
                         "check that it is the registered image of the same patient and region")
    if fraction < MIN_COVERED_FRACTION:
        log.warning(f"the moving image covers only {100 * fraction:.0f} % of the region to evaluate (the lungs, or "
                    "the mask); the rest is labelled 0, not evaluated")
    return covered


def within_transform_domain(mask: sitk.Image, domain: TransformDomain = None) -> sitk.Image:
    """The evaluation mask where the transform is defined (all of it when `domain` is None), with a warning when that
    leaves less than MIN_COVERED_FRACTION of it, or an InputError when it leaves less than MIN_TRANSFORM_SHARE."""
    if domain is None:
        return mask
    covered, fraction = covered_share(mask, domain.inside)
    if fraction < MIN_TRANSFORM_SHARE:
        raise InputError(f"{domain.what} covers {100 * fraction:.0f} % of the region to evaluate (the lungs, or the "
                         f"mask; {domain.span}): ITK takes no displacement outside it, so the map there would be "
                         f"wrong; {WRITE_IT_RIGHT}")
    if fraction < MIN_COVERED_FRACTION:
        log.warning(f"{domain.what} covers only {100 * fraction:.0f} % of the region to evaluate (the lungs, or the "
                    "mask); the rest is labelled 0, not evaluated (ITK would take no displacement there)")
    return covered


def covered_share(mask: sitk.Image, cover: sitk.Image) -> tuple:
    """(the mask within `cover`, the share of the mask's voxels that is)."""
    covered = sitk.And(mask, cover)
    covered_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(covered)))
    return covered, covered_voxels / np.count_nonzero(sitk.GetArrayViewFromImage(mask))


def check_working_grid(fixed: sitk.Image, region: tuple, margin: int) -> None:
    """Raise InputError, before the 1 mm working grid is made, when the region to evaluate (global S1 xyz start, stop)
    is larger than any chest, or its grid with `margin` of context needs more memory than is available."""
    size = np.asarray(region[1]) - np.asarray(region[0])
    spans = (f"the 1 mm working grid over the region to evaluate (the lungs, or the mask) spans "
             f"{' x '.join(str(int(n)) for n in size)} mm")
    image = (f"the fixed image has {voxel_size_text(fixed)} voxels over "
             f"{' x '.join(f'{n * s:.0f}' for n, s in zip(fixed.GetSize(), fixed.GetSpacing()))} mm")
    if size.max() > MAX_REGION_MM or np.prod(size, dtype=np.float64) > MAX_REGION_VOXELS:
        raise InputError(f"{spans}, more than any chest ({image}); a wrong voxel size in its header is the likely "
                         "cause: set it right and save the image again, or pass a mask of the lungs")
    needed = np.prod(size + 2 * margin, dtype=np.float64) * BYTES_PER_S1_VOXEL
    available = available_memory_bytes()
    if needed > available:
        raise InputError(f"{spans} and needs about {needed / 2 ** 30:.1f} GiB of memory but "
                         f"{available / 2 ** 30:.1f} GiB is available ({image}); free memory, or pass a smaller mask")


def crop_to_s1(pair: PairOnFixedGrid, region: tuple, margin: int, device="cpu") -> PreparedPair:
    """Resample the pair onto the S1 grid over `region` (global S1 xyz start, stop) plus `margin` of context, into a
    volume on `device`.

    As SimpleITK's linear (images, air outside their torso and outside the image) and nearest-neighbour (field of
    view) resampling would, one axis at a time in torch; channels are written in place."""
    check_working_grid(pair.fixed, region, margin)
    start, stop = region
    crop_start = start - margin
    size = stop - start + 2 * margin
    volume = torch.empty((3,) + tuple(int(n) for n in size[::-1]), dtype=torch.float32, device=device)
    linear = s1_samples(pair.fixed, crop_start, size)
    for channel, (hu, torso) in enumerate([(pair.fixed_hu, pair.fixed_torso), (pair.moving_hu, pair.moving_torso)]):
        resample_onto_s1_(volume[channel], sitk.GetArrayViewFromImage(hu), linear, AIR_HU,
                          keep=sitk.GetArrayViewFromImage(torso))
    resample_onto_s1_(volume[2], sitk.GetArrayViewFromImage(pair.inside), s1_samples(pair.fixed, crop_start, size,
                                                                                     nearest=True), 0.0)
    return PreparedPair(pair.fixed, pair.mask, normalise_channels_(volume), crop_start, np.full(3, margin),
                        stop - start)
