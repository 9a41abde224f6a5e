"""Landmark files: elastix/ITK point files, CSV (x,y,z in mm), Slicer markups (.mrk.json, .fcsv); LPS out."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, described

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def read_landmarks(path, image: sitk.Image = None) -> np.ndarray:
    """(N, 3) physical LPS coordinates from a landmark file; `image` converts elastix 'index' files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: landmark file not found")
    name = path.name.lower()
    if name.endswith(".mrk.json"):
        points = _read_markups_json(path)
    elif name.endswith(".fcsv"):
        points = _read_fcsv(path)
    elif name.endswith(".csv"):
        points = _read_csv(path)
    else:
        points = _read_elastix(path, image)
    if len(points) == 0:
        raise InputError(f"{path}: holds no landmarks; give at least one point (x y z in mm)")
    return points


def text_of(path: Path) -> str:
    """A text file's content (UTF-8; a byte-order mark, as spreadsheets write, dropped), or an InputError naming the
    file when it is not such text."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save it as UTF-8 (CSV UTF-8 in a spreadsheet)") from None


def _floats(values, path: Path, line: int) -> list:
    """Three floats from text fields, or an InputError naming the file and line."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise InputError(f"{path}:{line}: cannot parse {' '.join(values)!r} as three numbers (x y z in mm)") from None
    if len(numbers) != 3:
        raise InputError(f"{path}:{line}: expected three coordinates (x y z in mm), got {len(numbers)} values")
    if not np.all(np.isfinite(numbers)):
        raise InputError(f"{path}:{line}: coordinates {' '.join(values)!r} are not all finite numbers")
    return numbers


def millimetres(point) -> str:
    """A physical point as '(x, y, z) mm' with one decimal."""
    return "(" + ", ".join(f"{float(v):.1f}" for v in point) + ") mm"


def _read_elastix(path: Path, image) -> np.ndarray:
    """elastix point file: 'point' or 'index', the count, then one point per line."""
    lines = [(number, l.split()) for number, l in enumerate(text_of(path).splitlines(), start=1) if l.strip()]
    if len(lines) < 2 or lines[0][1][0].lower() not in ("point", "index"):
        raise InputError(f"{path}: not an elastix point file (first line must be 'point' or 'index')")
    try:
        count = int(lines[1][1][0])
    except ValueError:
        raise InputError(f"{path}:{lines[1][0]}: the second line must be the number of points") from None
    points = np.array([_floats(fields, path, number) for number, fields in lines[2:]]).reshape(-1, 3)
    if len(points) != count:
        raise InputError(f"{path}: header says {count} points but the file has {len(points)}")
    if lines[0][1][0].lower() == "index":
        if image is None:
            raise InputError(f"{path}: index coordinates need the image they refer to")
        points = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in points])
    return points


def _read_csv(path: Path) -> np.ndarray:
    """CSV with x,y,z in mm (LPS) per row; one header row allowed (errors name the file's line)."""
    rows = [(line, r) for line, r in enumerate(csv.reader(text_of(path).splitlines()), start=1)
            if any(c.strip() for c in r)]
    if rows and not _is_numeric(rows[0][1]):
        rows = rows[1:]
    return np.array([_floats(r, path, line) for line, r in rows]).reshape(-1, 3)


def _is_numeric(row) -> bool:
    """True when every field of a row parses as a number."""
    try:
        [float(v) for v in row]
        return True
    except ValueError:
        return False


def _read_markups_json(path: Path) -> np.ndarray:
    """Slicer markups JSON: control point positions in the file's coordinate system (LPS default)."""
    try:
        markups = json.loads(text_of(path))["markups"][0]
        system = markups.get("coordinateSystem", "LPS")
        control_points = list(markups["controlPoints"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise InputError(f"{path}: not a Slicer markups file with control points") from None
    if system not in ("LPS", "RAS"):
        raise InputError(f"{path}: coordinate system {system!r} is not supported; save the markups in LPS or RAS")
    for number, point in enumerate(control_points, start=1):
        if "position" not in point or point.get("positionStatus") == "undefined":
            raise InputError(f"{path}: control point {number} ({point.get('label', 'no label')}) has no position; "
                             "place it or delete it in Slicer")
    points = np.array([_floats(p["position"], path, i) for i, p in enumerate(control_points, start=1)])
    return points.reshape(-1, 3) * (RAS_TO_LPS if system == "RAS" else 1.0)


def _read_fcsv(path: Path) -> np.ndarray:
    """Slicer fiducial CSV (.fcsv): id,x,y,z,...; '# CoordinateSystem' says RAS (or 0) or LPS (or 1)."""
    system = "RAS"
    points = []
    for i, line in enumerate(text_of(path).splitlines()):
        if line.startswith("#"):
            if "CoordinateSystem" in line:
                value = line.split("=", 1)[1].strip()
                system = "LPS" if value in ("LPS", "1") else "RAS"
            continue
        if line.strip():
            points.append(_floats(line.split(",")[1:4], path, i + 1))
    return np.array(points).reshape(-1, 3) * (RAS_TO_LPS if system == "RAS" else 1.0)


def physical_points(points) -> np.ndarray:
    """(N, 3) float64 physical points from x, y, z triples (a single flat triple is one point), or an InputError."""
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("points must be x, y, z triples of numbers (physical LPS coordinates in mm)") from None
    if array.size == 0:
        return array.reshape(0, 3)
    if array.ndim == 0 or array.ndim > 2 or array.shape[-1] != 3:
        given = f"shape {array.shape}" if array.ndim else described(points)
        raise InputError(f"points must be x, y, z triples (physical LPS coordinates in mm), got {given}")
    array = array.reshape(-1, 3)
    if not np.isfinite(array).all():
        raise InputError("points contain NaN or infinite coordinates; pass finite LPS coordinates in mm")
    return array


def check_inside(points: np.ndarray, image: sitk.Image, name: str, noun: str = "landmark") -> None:
    """Raise InputError if any point lies outside the image's extent."""
    size = np.asarray(image.GetSize())
    for i, p in enumerate(points):
        index = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)))
        if np.any(index < -0.5) or np.any(index > size - 0.5):
            raise InputError(f"{name}: {noun} {i + 1} at {millimetres(p)} lies outside the image; {noun}s are "
                             "physical coordinates in mm (LPS, or RAS in Slicer markups)")
