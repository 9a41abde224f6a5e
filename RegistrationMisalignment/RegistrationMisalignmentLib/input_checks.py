"""Warnings about inputs that run but may give poor maps: non-CT intensities, tiny volumes, very different voxels."""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

log = logging.getLogger("RegistrationMisalignment")
SMALLEST_EXTENT_MM = 32.0  # the finest patch's field of view; smaller images are mostly padding
SPACING_RATIO = 2.5
AIR_HU_RANGE = (-1100.0, -600.0)  # median of the dark class: air around the body, lungs (also in expiration)
TISSUE_HU_RANGE = (-250.0, 300.0)  # median of the bright class: fat, muscle, organs, blood (with contrast)
TYPICAL_AIR_HU, TYPICAL_TISSUE_HU = -900.0, -10.0  # those medians in chest CTs (lungs and air; fat and muscle)
SCALE_TOLERANCE = 1.25  # air-to-tissue distance within this factor of the typical one: not a wrong slope
SHIFT_TOLERANCE = 200.0  # HU: a smaller shift of air and tissue is not told from a wrong slope
DARK_AIR_HU = -250.0  # a dark class below this holds air, whatever the rescale (half HU included)
MIN_AIR_TISSUE_GAP = 600.0  # a brighter dark class is air only this far below the bright one (fat, bone are closer)
MIN_AIR_SHARE = 0.02  # of the sample, without padding: less dark is not enough air to judge by
SPIKE_SHARE, SPIKE_RATIO, SPIKE_WINDOW = 0.005, 8.0, 16  # a value this common, this many times its neighbours


def sampled_voxels(image: sitk.Image, samples: int = 200_000) -> np.ndarray:
    """An evenly strided sample of the voxel values (no full-size copy)."""
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, int(round((array.size / samples) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float32).ravel()


MAP_MAY_BE_MEANINGLESS = "the model expects HU, the map may be meaningless"
TRAINING_PAIRS_MISLEAD = "training expects HU, pairs made from it would teach the model other intensities"


def warn_if_not_ct(image: sitk.Image, name: str, consequence: str = MAP_MAY_BE_MEANINGLESS) -> None:
    """Warn in one line when intensities do not look like CT in HU (a wrong rescale slope or intercept, not a CT),
    saying what follows from it."""
    values = sampled_voxels(image)
    problem = hu_scale_problem(values) or _range_problem(values)
    if problem:
        log.warning(f"{name}: {problem}; {consequence}")


def _range_problem(values: np.ndarray) -> str | None:
    """What is wrong with the 1st-99th percentile range for CT in HU (air near -1000, bone below 4000), if anything."""
    low, high = np.percentile(values, [1, 99])
    if low > -500 or high > 5000 or high - low < 500:
        hint = " (a CT stored without its rescale intercept? subtract 1024)" if -50 < low < 50 and high > 1000 else ""
        return (f"intensities {_intensity(low)}..{_intensity(high)} (1st-99th percentile) do not look like a CT in "
                f"Hounsfield units{hint}")
    return None


def hu_scale_problem(values: np.ndarray) -> str | None:
    """What a wrong rescale slope or intercept did to air and soft tissue; None if nothing, or no air to judge by."""
    classes = _air_and_tissue(_without_spikes(values[np.isfinite(values)]))  # padding, clipping: spikes
    if classes is None:
        return None
    air, tissue = classes
    if AIR_HU_RANGE[0] <= air <= AIR_HU_RANGE[1] and TISSUE_HU_RANGE[0] <= tissue <= TISSUE_HU_RANGE[1]:
        return None
    return (f"{_likely_cause(air, tissue)}; air (lungs, around the body) is at about {air:.0f} and soft tissue at "
            f"about {tissue:.0f}, not near -1000 and 0 Hounsfield units")


def _without_spikes(values: np.ndarray) -> np.ndarray:
    """The values without those at a single value far more common than its neighbours (padding, clipping)."""
    unique, counts = np.unique(values, return_counts=True)
    spikes = _spikes(unique, counts)
    return values[~np.isin(values, spikes)] if spikes.size else values


def _spikes(unique: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The unique values holding SPIKE_SHARE of all and SPIKE_RATIO times the mean count per unit around them."""
    common = counts >= SPIKE_SHARE * counts.sum()
    candidates = unique[common]
    cumulative = np.concatenate(([0], np.cumsum(counts)))
    near = (cumulative[np.searchsorted(unique, candidates + SPIKE_WINDOW, "right")]
            - cumulative[np.searchsorted(unique, candidates - SPIKE_WINDOW, "left")])
    neighbours = (near - counts[common]) / (2 * SPIKE_WINDOW)
    return candidates[counts[common] > SPIKE_RATIO * neighbours]


def _air_and_tissue(values: np.ndarray) -> tuple | None:
    """Medians of the dark (air) and bright (soft tissue) Otsu classes; None when the dark class cannot be air."""
    if values.size == 0:
        return None
    low, high = np.percentile(values, [0.5, 99])
    threshold = _otsu_threshold(values, low, high)
    dark, bright = values[values < threshold], values[(values >= threshold) & (values <= high)]
    if dark.size < MIN_AIR_SHARE * values.size or bright.size == 0:
        return None
    air, tissue = float(np.median(dark)), float(np.median(bright))
    return (air, tissue) if air <= DARK_AIR_HU or tissue - air >= MIN_AIR_TISSUE_GAP else None


def _otsu_threshold(values: np.ndarray, low: float, high: float, bins: int = 256) -> float:
    """The threshold between `low` and `high` that best splits the values into two classes (Otsu)."""
    counts, edges = np.histogram(values, bins, range=(low, high if high > low else low + 1))
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1)
    return float(edges[1 + np.argmax(below * above * (mean_below - mean_above) ** 2)])


def _likely_cause(air: float, tissue: float) -> str:
    """The likely wrong rescale: a slope if air and tissue lie too close or far apart, else an intercept (1024?)."""
    scale = (tissue - air) / (TYPICAL_TISSUE_HU - TYPICAL_AIR_HU)
    shift = (air + tissue - TYPICAL_AIR_HU - TYPICAL_TISSUE_HU) / 2
    if not 1 / SCALE_TOLERANCE <= scale <= SCALE_TOLERANCE:
        return f"intensities look multiplied by about {scale:.2g} (a wrong rescale slope? check its conversion to HU)"
    if abs(shift) < SHIFT_TOLERANCE:
        return "intensities look scaled or shifted (a wrong rescale slope or intercept? check its conversion to HU)"
    if abs(abs(shift) - 1024) < SHIFT_TOLERANCE:
        shift = float(np.sign(shift) * 1024)
    advice = f"subtract {shift:.0f}" if shift > 0 else f"add {-shift:.0f}"
    return f"intensities look shifted by about {shift:+.0f} (a wrong rescale intercept? {advice})"


def _intensity(value: float) -> str:
    """An intensity as text: whole numbers from 10 up, three digits below (a 0..1 image must not read 0..0)."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3g}"


def warn_if_small(image: sitk.Image, name: str) -> None:
    """Warn when the image is smaller than the network's finest field of view along some axis."""
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    if extent.min() < SMALLEST_EXTENT_MM:
        log.warning(f"{name}: only {extent.min():.0f} mm across along one axis (the network looks at "
                    f"{SMALLEST_EXTENT_MM:.0f} mm and more); the map there rests mostly on padding")


def warn_if_spacing_differs(fixed: sitk.Image, moving: sitk.Image) -> None:
    """Warn when the two images' voxel sizes differ a lot along some axis (detail of the coarser one is missing)."""
    ratio = np.asarray(moving.GetSpacing()) / np.asarray(fixed.GetSpacing())
    if ratio.max() > SPACING_RATIO or ratio.min() < 1 / SPACING_RATIO:
        log.warning(f"voxel sizes differ a lot (fixed {voxel_size_text(fixed)}, moving {voxel_size_text(moving)}); the "
                    "coarser image lacks detail, so small misalignments may be missed")


def voxel_size_text(image: sitk.Image) -> str:
    """Voxel size as text."""
    return "x".join(f"{s:.2g}" for s in image.GetSpacing()) + " mm"


def warn_about_unusual_inputs(fixed: sitk.Image, moving: sitk.Image) -> None:
    """All the input warnings for a pair."""
    for image, name in ((fixed, "fixed image"), (moving, "moving image")):
        warn_if_not_ct(image, name)
        warn_if_small(image, name)
    warn_if_spacing_differs(fixed, moving)
