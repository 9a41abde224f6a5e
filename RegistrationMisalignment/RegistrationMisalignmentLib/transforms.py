"""Registration transforms given as files: ITK transform files and displacement-field images."""
from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from .errors import InputError, library_reason

FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def read_transform(path) -> sitk.Transform:
    """Read a fixed-to-moving transform: an ITK/Slicer transform file (.tfm, .txt, .h5) or a displacement field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: transform file not found")
    try:
        if path.name.lower().endswith(FIELD_SUFFIXES):
            return _field_transform(path)
        return sitk.ReadTransform(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as a transform ({library_reason(exc)}); pass an ITK transform file "
                         "(.tfm, .txt, .h5) or a displacement field image") from None


def _field_transform(path: Path) -> sitk.Transform:
    """A displacement-field transform from a 3-component vector image (mm, LPS)."""
    field = sitk.ReadImage(str(path))
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError(f"{path}: a displacement field must be a 3-D image with 3 components per voxel")
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def write_transform(transform: sitk.Transform, folder) -> Path:
    """Write a transform where `read_transform` reads it back: a displacement field as an image, any other as an ITK
    transform file; return the path."""
    folder = Path(folder)
    if isinstance(transform, sitk.DisplacementFieldTransform):
        path = folder / "transform_field.nrrd"
        sitk.WriteImage(transform.GetDisplacementField(), str(path))
    else:
        path = folder / "transform.tfm"
        sitk.WriteTransform(transform, str(path))
    return path
