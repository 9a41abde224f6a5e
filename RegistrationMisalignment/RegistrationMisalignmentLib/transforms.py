"""Registration transforms: ITK transform files and displacement-field images, their checks and where they are
defined."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError, described, library_reason
from .imageio import check_metaimage_complete, corner_points, physical_bounds

FIELD_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
GRID_KINDS = {"DisplacementFieldTransform": "displacement field", "BSplineTransform": "B-spline grid"}
WRITE_IT_RIGHT = ("write it on the fixed image's grid, in LPS (a field saved in RAS or for another image is the usual "
                  "cause)")


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


def transform_argument(value) -> sitk.Transform:
    """A Python caller's transform argument: a SimpleITK transform, or one read from a path (`read_transform`); an
    InputError for anything else."""
    if isinstance(value, (str, os.PathLike)):
        return read_transform(value)
    if not isinstance(value, sitk.Transform):
        hint = ("; for a displacement field image, pass sitk.DisplacementFieldTransform(sitk.Cast(field, "
                "sitk.sitkVectorFloat64))" if isinstance(value, sitk.Image) else "")
        raise InputError(f"transform must be a SimpleITK transform (fixed-to-moving) or the path of a transform file "
                         f"or displacement field, got {described(value)}{hint}")
    return value


def _field_transform(path: Path) -> sitk.Transform:
    """A displacement-field transform from a 3-component vector image (mm, LPS)."""
    check_metaimage_complete(path)
    field = sitk.ReadImage(str(path))
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise InputError(f"{path}: a displacement field must be a 3-D image with 3 components per voxel")
    _check_finite(sitk.GetArrayViewFromImage(field), f"{path}: the displacement field")
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def check_transform(transform: sitk.Transform) -> None:
    """Raise InputError unless `transform` is 3-D and holds only finite numbers (a displacement field's vectors too)."""
    if transform.GetDimension() != 3:
        raise InputError(f"the transform is {transform.GetDimension()}-D; pass the 3-D fixed-to-moving transform of "
                         "the registration")
    for part in applied_in_order(transform):
        if isinstance(part, sitk.DisplacementFieldTransform):
            field = part.GetDisplacementField()  # a copy: its vectors are not parameters to list
            values = sitk.GetArrayViewFromImage(field)
        else:
            values = np.asarray(part.GetParameters())
        _check_finite(values, f"the transform's {GRID_KINDS.get(part.GetName(), part.GetName())}")


def _check_finite(values: np.ndarray, what: str) -> None:
    """Raise InputError naming `what` when a transform's values hold NaN or infinity."""
    if not np.isfinite(values).all():
        raise InputError(f"{what} holds NaN or infinite values, which would leave a hole in the map; fix the "
                         "registration's output (or fill them, e.g. with 0) and save it again")


def applied_in_order(transform: sitk.Transform) -> list:
    """The transform's parts in the order they move a fixed point (a composite's last added first), nested composites
    flattened."""
    transform = transform.Downcast()
    if not isinstance(transform, sitk.CompositeTransform):
        return [transform]
    return [part for i in reversed(range(transform.GetNumberOfTransforms()))
            for part in applied_in_order(transform.GetNthTransform(i))]


class TransformDomain(NamedTuple):
    """Where a transform is defined on the fixed grid (UInt8, 1 inside), what bounds it, and that bound's extent."""

    inside: sitk.Image
    what: str
    span: str


def transform_domain(fixed: sitk.Image, transform: Optional[sitk.Transform]) -> Optional[TransformDomain]:
    """Where on the fixed grid every displacement field and B-spline part of `transform` is defined (outside its grid
    ITK takes no displacement: the same as no transform there); None when that is everywhere. Raises InputError when
    it is nowhere."""
    parts = applied_in_order(transform) if transform is not None else []
    inside, bounds = None, []
    for k, part in enumerate(parts):
        box = _grid_box(part)
        if box is None or (k == 0 and _holds_image(box, fixed)):
            continue
        before = sitk.CompositeTransform(parts[:k][::-1]) if k else sitk.Transform(3, sitk.sitkIdentity)
        here = sitk.Resample(box, fixed, before, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        inside = here if inside is None else sitk.And(inside, here)
        bounds.append((GRID_KINDS[part.GetName()], span_text(*_box_bounds(box))))
    if inside is None:
        return None
    what = "the transform's " + " and ".join(dict.fromkeys(kind for kind, _ in bounds))
    span = "; ".join(f"its {kind} spans {extent}" for kind, extent in bounds)
    if not sitk.GetArrayViewFromImage(inside).any():
        raise InputError(f"{what} does not reach the fixed image ({span}, the fixed image "
                         f"{span_text(*physical_bounds(fixed))}): ITK would take no displacement anywhere, the same as "
                         f"no transform; {WRITE_IT_RIGHT}")
    return TransformDomain(inside, what, span)


def _grid_box(part: sitk.Transform) -> Optional[sitk.Image]:
    """A one-voxel image filling the box where a displacement field (its voxels and half a voxel around) or a B-spline
    transform is defined; None for a part defined everywhere."""
    if isinstance(part, sitk.DisplacementFieldTransform):
        fixed_parameters = np.asarray(part.GetFixedParameters())
        size, origin, spacing = fixed_parameters[0:3], fixed_parameters[3:6], fixed_parameters[6:9]
        direction = fixed_parameters[9:18].reshape(3, 3)
        corner, extent = origin - direction @ (spacing / 2), size * spacing
    elif isinstance(part, sitk.BSplineTransform):
        corner = np.asarray(part.GetTransformDomainOrigin())
        extent = np.asarray(part.GetTransformDomainPhysicalDimensions())
        direction = np.asarray(part.GetTransformDomainDirection()).reshape(3, 3)
    else:
        return None
    box = sitk.Image([1, 1, 1], sitk.sitkUInt8) + 1
    box.SetSpacing(tuple(float(e) for e in extent))
    box.SetDirection(tuple(float(d) for d in direction.ravel()))
    box.SetOrigin(tuple(float(c) for c in corner + direction @ (extent / 2)))
    return box


def _holds_image(box: sitk.Image, image: sitk.Image) -> bool:
    """Whether a one-voxel box image holds all of an image's voxel centres (its corners suffice: both are boxes)."""
    index = np.asarray([box.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in corner_points(image)])
    return bool(np.all(np.abs(index) <= 0.5))


def _box_bounds(box: sitk.Image) -> tuple:
    """The axis-aligned (min, max) corners of a one-voxel box image's box."""
    corners = np.array(np.meshgrid(*[[-0.5, 0.5]] * 3)).reshape(3, -1).T
    points = np.asarray([box.TransformContinuousIndexToPhysicalPoint(tuple(c)) for c in corners])
    return points.min(0), points.max(0)


def span_text(low, high) -> str:
    """An axis-aligned box as 'x A..B, y C..D, z E..F mm (LPS)'."""
    return ", ".join(f"{axis} {a:.0f}..{b:.0f}" for axis, a, b in zip("xyz", low, high)) + " mm (LPS)"


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
