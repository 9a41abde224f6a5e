"""Automatic torso and lung masks of chest CT images in Hounsfield units."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .imageio import grid_over_same_extent, image_on_grid, mask_like, paste
from .mask_threads import map_in_threads
from .morphology import ball_close, ball_dilate, ball_erode
from .pyramid import AIR_HU

BODY_MIN_HU = -500.0
OUTSIDE_MAX_MEAN_HU = -950.0
LUNG_MAX_HU = -400.0
AIRWAY_MAX_MEAN_HU = -850.0
AIRWAY_MAX_AREA_MM2 = 800.0
MIN_LUNG_ML = 5.0
SECOND_LUNG_MIN_FRACTION = 0.1
SPLIT_RADII_MM = (1.0, 2.0, 3.0, 4.5, 6.0, 8.0)
CORE_MIN_FRACTION = 0.2
SPLIT_SPACING_MM = 2.0
CLOSING_RADIUS_MM = 3.0
HILUM_RADIUS_MM = 10.0  # notches of the lung surface narrower than twice this (hilar vessels) are filled
HILUM_SPACING_MM = 2.0  # grid of that closing
SLAB_SLICES = 32  # axial slices labelled at once (per thread): bounds the memory of per-slice components
MASK_SPACING_MM = 1.0  # finer images get their torso and evaluation masks made on a grid this coarse (the map's own)


def at_mask_resolution(make_mask: Callable[..., sitk.Image], ct: sitk.Image, *masks: sitk.Image) -> sitk.Image:
    """`make_mask(ct, *masks)` made on a grid no finer than MASK_SPACING_MM along any axis, over the same extent,
    and brought back onto the CT's grid (nearest neighbour); made directly when the CT is not finer."""
    spacing = np.asarray(ct.GetSpacing())
    if np.all(spacing >= MASK_SPACING_MM - 1e-6):
        return make_mask(ct, *masks)
    coarse_spacing = np.maximum(spacing, MASK_SPACING_MM)
    size = [max(1, int(round(n))) for n in np.asarray(ct.GetSize()) * spacing / coarse_spacing]
    grid = image_on_grid(grid_over_same_extent(ct, coarse_spacing, size), sitk.sitkUInt8)
    coarse_ct = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, AIR_HU)
    coarse_masks = [sitk.Resample(m, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0) for m in masks]
    return sitk.Resample(make_mask(coarse_ct, *coarse_masks), ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)


def torso_mask(ct: sitk.Image) -> sitk.Image:
    """Return the body (torso) mask of a CT in HU as UInt8 0/1 on the CT's grid (made at MASK_SPACING_MM or
    coarser)."""
    return at_mask_resolution(_torso_mask_on_grid, ct)


def _torso_mask_on_grid(ct: sitk.Image) -> sitk.Image:
    """The torso mask made on the CT's own grid."""
    hu = sitk.GetArrayViewFromImage(ct)
    inside = mask_like(~_selected_slice_components(hu <= BODY_MIN_HU, hu, _axial_axis(ct), _outside_air), ct)
    labels, order, _ = _components_by_size(inside)
    largest = int(order[0]) if len(order) else 1
    return sitk.BinaryThreshold(labels, largest, largest, 1, 0)


def _outside_air(labels: np.ndarray, counts: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Select the 2-D air components that touch the border of their slice (slices along axis 0)."""
    outside = np.zeros(len(means), dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[edge.ravel()] = True
    outside &= means < OUTSIDE_MAX_MEAN_HU
    outside[0] = False
    return outside


def lung_mask(ct: sitk.Image, torso: Optional[sitk.Image] = None) -> sitk.Image:
    """Return an automatic mask of both lungs (UInt8 0/1) on the CT's grid."""
    lungs = _lung_components(ct, torso_mask(ct) if torso is None else torso)
    result = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    result.CopyInformation(ct)
    if lungs is None:
        return result
    margin = [radius + 2 for radius in _radius_in_voxels(ct, CLOSING_RADIUS_MM)]
    index, size = _padded_bounding_box(lungs, margin)
    filled = _separate_and_fill(
        sitk.RegionOfInterest(ct, size, index), sitk.RegionOfInterest(lungs, size, index), _axial_axis(ct)
    )
    paste(result, filled, index)
    return result


def automatic_lung_mask(ct: sitk.Image, torso: Optional[sitk.Image] = None) -> sitk.Image:
    """The region `predict` evaluates when given no mask: both lungs with their hila filled (UInt8 0/1), made at
    MASK_SPACING_MM or coarser."""
    return at_mask_resolution(lambda image, *given: fill_hilum_(lung_mask(image, *given)), ct,
                              *([] if torso is None else [torso]))


def fill_hilum_(lungs: sitk.Image) -> sitk.Image:
    """Fill a lung mask's narrow notches in place (the hilar vessels and bronchi that enter it); returns it."""
    if not np.any(sitk.GetArrayViewFromImage(lungs)):
        return lungs
    margin = [int(np.ceil(HILUM_RADIUS_MM / s)) + 2 for s in lungs.GetSpacing()]
    index, size = _padded_bounding_box(lungs, margin)
    box = sitk.RegionOfInterest(lungs, size, index)
    coarse_grid = sitk.Image([max(1, int(np.ceil(n * s / HILUM_SPACING_MM)))
                              for n, s in zip(box.GetSize(), box.GetSpacing())], sitk.sitkUInt8)
    coarse_grid.SetOrigin(box.GetOrigin())
    coarse_grid.SetDirection(box.GetDirection())
    coarse_grid.SetSpacing([HILUM_SPACING_MM] * 3)
    coarse = sitk.Resample(box, coarse_grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32) > 0.5
    radius = int(round(HILUM_RADIUS_MM / HILUM_SPACING_MM))
    closed = mask_like(ball_close(sitk.GetArrayViewFromImage(coarse) > 0, [radius] * 3), coarse)
    # what the closing added, and the coarse voxels beside it that the lung only partly fills (no seam left)
    added = sitk.And(closed, sitk.BinaryDilate(sitk.And(closed, sitk.Not(coarse)), [1] * 3, sitk.sitkBox))
    filled = sitk.Or(box, sitk.Resample(added, box, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    paste(lungs, sitk.Cast(filled, lungs.GetPixelID()), index)
    return lungs


def _lung_components(ct: sitk.Image, torso: sitk.Image) -> Optional[sitk.Image]:
    """Return the one or two large air-filled components inside the torso (labels 1, 2), or None if there are none."""
    candidates = _remove_airways(ct, air_in_torso(ct, torso))
    if not np.any(sitk.GetArrayViewFromImage(candidates)):
        return None
    lungs = _largest_components(candidates, _voxels_in_ml(ct, MIN_LUNG_ML))
    return lungs if np.any(sitk.GetArrayViewFromImage(lungs)) else None


def air_in_torso(ct: sitk.Image, torso: sitk.Image) -> sitk.Image:
    """Voxels below LUNG_MAX_HU inside the torso (UInt8 0/1): where the lungs are looked for."""
    return (ct < LUNG_MAX_HU) & _binary_on_grid(torso, ct)


def _binary_on_grid(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Return a mask as UInt8 0/1 with the reference's geometry, checking that the grids match."""
    if mask.GetSize() != reference.GetSize():
        raise ValueError(f"mask size {mask.GetSize()} differs from CT size {reference.GetSize()}")
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    binary.CopyInformation(reference)
    return binary


def _axial_axis(image: sitk.Image) -> int:
    """Return the numpy axis of an image whose index direction is closest to the head-feet axis."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2])))


def _slicewise(array: np.ndarray, axis: int, operation: Callable[[sitk.Image], sitk.Image]) -> np.ndarray:
    """Apply a 2-D SimpleITK operation to all slices along an axis at once, as a zero-framed mosaic."""
    stack = np.moveaxis(array, axis, 0)
    count, rows, cols = stack.shape
    mosaic = np.zeros((count, rows + 2, cols + 2), dtype=array.dtype)
    mosaic[:, 1:-1, 1:-1] = stack
    result = sitk.GetArrayFromImage(operation(sitk.GetImageFromArray(mosaic.reshape(count * (rows + 2), cols + 2))))
    result = result.reshape(count, rows + 2, cols + 2)[:, 1:-1, 1:-1]
    return np.ascontiguousarray(np.moveaxis(result, 0, axis))


def _fill_axial_holes(mask: np.ndarray, reference: sitk.Image, axis: int) -> sitk.Image:
    """Return a binary mask (an array on the reference's grid) with the holes of every axial slice filled."""
    return mask_like(_slicewise(mask.astype(np.uint8), axis, sitk.BinaryFillhole), reference)


def _selected_slice_components(mask: np.ndarray, hu: np.ndarray, axis: int, select: Callable) -> np.ndarray:
    """Voxels of the 2-D components of axial slices that `select(labels, counts, means)` picks, a slab at a time."""
    selected = np.zeros(mask.shape, dtype=bool)
    slabs = [np.moveaxis(array, axis, 0) for array in (mask, hu, selected)]

    def select_in_slab(start: int) -> None:
        part = slice(start, start + SLAB_SLICES)
        labels, counts, means = _slice_components(slabs[0][part], slabs[1][part], 0)
        slabs[2][part] = select(labels, counts, means)[labels]

    map_in_threads(select_in_slab, range(0, slabs[0].shape[0], SLAB_SLICES))
    return selected


def _slice_components(mask: np.ndarray, hu: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label the 2-D components of a mask in all axial slices; return labels, voxel counts and mean HU per label."""
    labels = _slicewise(mask.astype(np.uint8), axis, sitk.ConnectedComponent)
    inside = labels[mask]
    counts = np.bincount(inside, minlength=int(labels.max()) + 1)
    sums = np.bincount(inside, weights=hu[mask].astype(np.float64), minlength=len(counts))
    return labels, counts, sums / np.maximum(counts, 1)


def _remove_airways(ct: sitk.Image, candidates: sitk.Image) -> sitk.Image:
    """Remove small air-filled 2-D components (trachea, bronchi, oesophagus) from low-density candidates."""
    axis = _axial_axis(ct)
    inside = sitk.GetArrayViewFromImage(candidates).astype(bool)
    spacing = list(ct.GetSpacing())
    del spacing[2 - axis]

    def airways(labels, counts, means):
        airway = (counts * float(np.prod(spacing)) < AIRWAY_MAX_AREA_MM2) & (means < AIRWAY_MAX_MEAN_HU)
        airway[0] = False
        return airway

    airway = _selected_slice_components(inside, sitk.GetArrayViewFromImage(ct), axis, airways)
    return mask_like(inside & ~airway, ct)


def _voxels_in_ml(image: sitk.Image, millilitres: float) -> int:
    """Return the number of voxels of an image that make up a volume in mL."""
    return int(np.ceil(millilitres * 1000.0 / np.prod(image.GetSpacing())))


def _radius_in_voxels(image: sitk.Image, radius_mm: float) -> List[int]:
    """Return a radius in mm as a per-axis radius in voxels (at least 1)."""
    return [max(1, int(round(radius_mm / spacing))) for spacing in image.GetSpacing()]


def _components_by_size(mask: sitk.Image) -> Tuple[sitk.Image, np.ndarray, np.ndarray]:
    """Label the 3-D components of a binary mask; return the labels and the labels and sizes of the components from
    the largest down (ties: lower label first, as RelabelComponent orders them), without a second label image."""
    labelling = sitk.ConnectedComponentImageFilter()
    labels = labelling.Execute(mask)
    array = sitk.GetArrayViewFromImage(labels)
    sizes = np.zeros(labelling.GetObjectCount() + 1, dtype=np.int64)
    for start in range(0, len(array), SLAB_SLICES):
        sizes += np.bincount(array[start:start + SLAB_SLICES].ravel(), minlength=len(sizes))
    names = np.arange(1, len(sizes))
    order = names[np.lexsort((names, -sizes[1:]))]
    return labels, order, sizes[order]


def _largest_components(mask: sitk.Image, min_voxels: int) -> sitk.Image:
    """Return the largest component and the second one when it is large enough, labelled 1 and 2.

    Components of a non-empty mask are labelled inside its bounding box (32-bit labels only there)."""
    index, size = bounding_box(mask)
    labels, order, sizes = _components_by_size(sitk.RegionOfInterest(mask, size, index))
    order = order[sizes >= min_voxels]
    sizes = sizes[sizes >= min_voxels]
    kept = 2 if len(sizes) > 1 and sizes[1] >= SECOND_LUNG_MIN_FRACTION * sizes[0] else min(1, len(sizes))
    box = sitk.Image(size, sitk.sitkUInt8)
    box.CopyInformation(labels)
    for value, label in enumerate(order[:kept], start=1):
        box += sitk.BinaryThreshold(labels, int(label), int(label), value, 0)
    result = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    result.CopyInformation(mask)
    paste(result, box, index)
    return result


def bounding_box(mask: sitk.Image) -> Tuple[List[int], List[int]]:
    """Return the index and size (xyz) of a non-empty mask's bounding box."""
    return _padded_bounding_box(mask, [0, 0, 0])


def _padded_bounding_box(mask: sitk.Image, margin: List[int]) -> Tuple[List[int], List[int]]:
    """Return the index and size of a non-empty mask's bounding box grown by a per-axis margin within the image."""
    array = sitk.GetArrayViewFromImage(mask)
    index, size = [], []
    for axis in range(3):
        others = tuple(other for other in range(3) if other != 2 - axis)
        occupied = np.flatnonzero(np.any(array, axis=others))
        low = max(0, int(occupied[0]) - margin[axis])
        high = min(mask.GetSize()[axis], int(occupied[-1]) + 1 + margin[axis])
        index.append(low)
        size.append(high - low)
    return index, size


def _left_right_cores(lungs: sitk.Image) -> sitk.Image:
    """Return eroded cores of a lung mask split into a left and a right one (labels 1, 2), or the mask itself."""
    distance = sitk.SignedMaurerDistanceMap(lungs, insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    for radius in SPLIT_RADII_MM:
        cores = sitk.RelabelComponent(sitk.ConnectedComponent(distance > radius), sortByObjectSize=True)
        stats.Execute(cores)
        if len(stats.GetLabels()) < 2:
            continue
        if stats.GetNumberOfPixels(2) < CORE_MIN_FRACTION * stats.GetNumberOfPixels(1):
            continue
        offset = np.abs(np.subtract(stats.GetCentroid(1), stats.GetCentroid(2)))
        if offset[0] > max(offset[1], offset[2]):
            return sitk.Cast(cores * sitk.Cast(cores <= 2, cores.GetPixelID()), sitk.sitkUInt8)
    return lungs


def _shrink_factors(image: sitk.Image) -> List[int]:
    """Return per-axis integer shrink factors that bring an image close to the splitting resolution."""
    return [
        max(1, min(size, int(round(SPLIT_SPACING_MM / spacing))))
        for size, spacing in zip(image.GetSize(), image.GetSpacing())
    ]


def _shrink_binary(mask: sitk.Image, factors: List[int]) -> sitk.Image:
    """Return a binary mask block-averaged by the factors and thresholded at one half."""
    return sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), factors) > 0.5


def _expand_labels(small: sitk.Image, factors: List[int], reference: sitk.Image) -> sitk.Image:
    """Return a block-shrunk label image replicated back onto the reference grid."""
    array = sitk.GetArrayFromImage(small)
    for axis, factor in enumerate(reversed(factors)):
        array = np.repeat(array, factor, axis=axis)
    shape = sitk.GetArrayViewFromImage(reference).shape
    array = np.pad(array, [(0, full - part) for full, part in zip(shape, array.shape)], mode="edge")
    return mask_like(array, reference)


def _lung_regions(ct: sitk.Image, lungs: sitk.Image) -> sitk.Image:
    """Return one region per lung (labels 1, 2) split by a watershed line, or a single region of ones."""
    factors = _shrink_factors(ct)
    if _max_label(lungs) == 2:
        markers = _shrink_binary(lungs == 1, factors) + 2 * _shrink_binary(lungs == 2, factors)
    else:
        markers = _left_right_cores(_shrink_binary(lungs > 0, factors))
    if _max_label(markers) < 2:
        return mask_like(np.ones(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8), ct)
    small_ct = sitk.BinShrink(sitk.Cast(ct, sitk.sitkFloat32), factors)
    regions = sitk.MorphologicalWatershedFromMarkers(small_ct, markers, markWatershedLine=True, fullyConnected=False)
    return _expand_labels(regions, factors, ct)


def _close_and_fill(mask: sitk.Image, axis: int) -> sitk.Image:
    """Return a binary mask closed with a ball of the closing radius and with its axial holes filled."""
    # The margin keeps the dilation off the crop border; at the image border the erosion sees foreground.
    radius = _radius_in_voxels(mask, CLOSING_RADIUS_MM)
    index, size = _padded_bounding_box(mask, [r + 1 for r in radius])
    box = sitk.RegionOfInterest(mask, size, index)
    closed = ball_erode(ball_dilate(sitk.GetArrayViewFromImage(box) > 0, radius), radius)
    result = sitk.Image(mask.GetSize(), sitk.sitkUInt8)
    result.CopyInformation(mask)
    paste(result, _fill_axial_holes(closed, box, axis), index)
    return result


def _separate_and_fill(ct: sitk.Image, lungs: sitk.Image, axis: int) -> sitk.Image:
    """Split the lungs along a watershed line, close and fill each lung in its region, drop small fragments."""
    regions = _lung_regions(ct, lungs)

    def lung_closed_in_region(label: int) -> Optional[sitk.Image]:
        region = regions == label
        lung = (lungs > 0) & region
        return _close_and_fill(lung, axis) & region if _max_label(lung) > 0 else None

    result = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    result.CopyInformation(ct)
    for closed in map_in_threads(lung_closed_in_region, range(1, _max_label(regions) + 1)):
        if closed is not None:
            result = result | closed
    fragments = sitk.RelabelComponent(sitk.ConnectedComponent(result), _voxels_in_ml(ct, MIN_LUNG_ML))
    return fragments > 0


def _max_label(labels: sitk.Image) -> int:
    """Return the largest label value of a label image."""
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(labels)
    return int(stats.GetMaximum())
