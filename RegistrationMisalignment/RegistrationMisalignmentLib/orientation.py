"""The orientation the network works in: voxel axes closest to left, posterior and superior (LPS), as its training
sources are stored (`sources.py`). A file may store the same scan in any order and sense of its axes; the images are
reordered (never interpolated) into this orientation and the results put back onto the caller's grid, so the map of a
scan does not depend on how it was stored."""
from __future__ import annotations

from typing import Optional

import SimpleITK as sitk

NETWORK_ORIENTATION = "LPS"


def orientation_code(direction) -> str:
    """The three-letter code (DICOM convention, e.g. LPS, RAS, PIR) of the axes closest to a direction matrix."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(direction))


def in_network_orientation(image: Optional[sitk.Image]) -> Optional[sitk.Image]:
    """The image with its voxels reordered so that its axes run closest to L, P, S; the image itself when they
    already do, or when it is None or not 3-D (the input checks report that)."""
    if image is None or image.GetDimension() != 3 or orientation_code(image.GetDirection()) == NETWORK_ORIENTATION:
        return image
    return sitk.DICOMOrient(image, NETWORK_ORIENTATION)


def reordered_onto(image: sitk.Image, grid_direction) -> sitk.Image:
    """An image in the network's orientation with its voxels reordered into the orientation of `grid_direction`."""
    return sitk.DICOMOrient(image, orientation_code(grid_direction))
