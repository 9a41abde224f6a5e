"""Landmark files: elastix/ITK point files, CSV (x,y,z in mm), Slicer markups (.mrk.json, .fcsv); LPS out."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def read_landmarks(path, image: sitk.Image = None) -> np.ndarray:
    """(N, 3) physical LPS coordinates from a landmark file; `image` converts elastix 'index' files."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: landmark file not found")
    name = path.name.lower()
    if name.endswith(".mrk.json"):
        return _read_markups_json(path)
    if name.endswith(".fcsv"):
        return _read_fcsv(path)
    if name.endswith(".csv"):
        return _read_csv(path)
    return _read_elastix(path, image)


def _floats(values, path: Path, line: int) -> list:
    """Three floats from text fields, or an InputError naming the file and line."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise InputError(f"{path}:{line}: cannot parse {' '.join(values)!r} as three numbers (x y z in mm)") from None
    if len(numbers) != 3 or not np.all(np.isfinite(numbers)):
        raise InputError(f"{path}:{line}: expected three finite coordinates, got {len(numbers)} values")
    return numbers


def _read_elastix(path: Path, image) -> np.ndarray:
    """elastix point file: 'point' or 'index', the count, then one point per line."""
    lines = [l.split() for l in path.read_text().splitlines() if l.strip()]
    if len(lines) < 2 or lines[0][0].lower() not in ("point", "index"):
        raise InputError(f"{path}: not an elastix point file (first line must be 'point' or 'index')")
    try:
        count = int(lines[1][0])
    except ValueError:
        raise InputError(f"{path}:2: the second line must be the number of points") from None
    points = np.array([_floats(l, path, i + 3) for i, l in enumerate(lines[2:])]).reshape(-1, 3)
    if len(points) != count:
        raise InputError(f"{path}: header says {count} points but the file has {len(points)}")
    if lines[0][0].lower() == "index":
        if image is None:
            raise InputError(f"{path}: index coordinates need the image they refer to")
        points = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in points])
    return points


def _read_csv(path: Path) -> np.ndarray:
    """CSV with x,y,z in mm (LPS) per row; one header row allowed."""
    rows = [r for r in csv.reader(path.read_text().splitlines()) if any(c.strip() for c in r)]
    if rows and not _is_numeric(rows[0]):
        rows = rows[1:]
    return np.array([_floats(r, path, i + 1) for i, r in enumerate(rows)]).reshape(-1, 3)


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
        markups = json.loads(path.read_text())["markups"][0]
        system = markups.get("coordinateSystem", "LPS")
        points = np.array([_floats(p["position"], path, i + 1) for i, p in enumerate(markups["controlPoints"])])
    except (ValueError, KeyError, IndexError, TypeError):
        raise InputError(f"{path}: not a Slicer markups file with control points") from None
    return points.reshape(-1, 3) * (RAS_TO_LPS if system == "RAS" else 1.0)


def _read_fcsv(path: Path) -> np.ndarray:
    """Slicer fiducial CSV (.fcsv): id,x,y,z,...; '# CoordinateSystem' says RAS (or 0) or LPS (or 1)."""
    system = "RAS"
    points = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.startswith("#"):
            if "CoordinateSystem" in line:
                value = line.split("=", 1)[1].strip()
                system = "LPS" if value in ("LPS", "1") else "RAS"
            continue
        if line.strip():
            points.append(_floats(line.split(",")[1:4], path, i + 1))
    return np.array(points).reshape(-1, 3) * (RAS_TO_LPS if system == "RAS" else 1.0)


def check_inside(points: np.ndarray, image: sitk.Image, name: str) -> None:
    """Raise InputError if any point lies outside the image's extent."""
    size = np.asarray(image.GetSize())
    for i, p in enumerate(points):
        index = np.asarray(image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in p)))
        if np.any(index < -0.5) or np.any(index > size - 0.5):
            raise InputError(f"{name}: landmark {i + 1} at {tuple(np.round(p, 1))} mm lies outside the image")
