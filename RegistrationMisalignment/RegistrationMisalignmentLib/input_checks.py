"""Warnings about inputs that run but may give poor maps: non-CT intensities, tiny volumes, very different voxels."""
from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

log = logging.getLogger("RegistrationMisalignment")
SMALLEST_EXTENT_MM = 32.0  # the finest patch's field of view; smaller images are mostly padding
SPACING_RATIO = 2.5


def sampled_voxels(image: sitk.Image, samples: int = 200_000) -> np.ndarray:
    """An evenly strided sample of the voxel values (no full-size copy)."""
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, int(round((array.size / samples) ** (1 / 3))))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float32).ravel()


def warn_if_not_ct(image: sitk.Image, name: str) -> None:
    """Warn when intensities do not look like CT in Hounsfield units (air near -1000 HU, bone below 4000 HU)."""
    low, high = np.percentile(sampled_voxels(image), [1, 99])
    if low > -500 or high > 5000 or high - low < 500:
        hint = " (a CT stored without its rescale intercept? subtract 1024)" if -50 < low < 50 and high > 1000 else ""
        log.warning(f"{name}: intensities {_intensity(low)}..{_intensity(high)} (1st-99th percentile) do not look "
                    f"like a CT in Hounsfield units{hint}; the model expects HU, the map may be meaningless")


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
        log.warning(f"voxel sizes differ a lot (fixed {_mm(fixed)}, moving {_mm(moving)}); the coarser image lacks "
                    "detail, so small misalignments may be missed")


def _mm(image: sitk.Image) -> str:
    """Voxel size as text."""
    return "x".join(f"{s:.2g}" for s in image.GetSpacing()) + " mm"


def warn_about_unusual_inputs(fixed: sitk.Image, moving: sitk.Image) -> None:
    """All the input warnings for a pair."""
    for image, name in ((fixed, "fixed image"), (moving, "moving image")):
        warn_if_not_ct(image, name)
        warn_if_small(image, name)
    warn_if_spacing_differs(fixed, moving)
