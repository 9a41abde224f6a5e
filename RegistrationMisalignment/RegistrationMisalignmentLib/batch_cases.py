"""The cases of a batch run: reading PAIRS.csv and fingerprinting each case's inputs."""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .checkpoint import sha256_of
from .errors import InputError

REQUIRED_COLUMNS = ("case_id", "fixed", "moving")
OPTIONAL_COLUMNS = ("mask", "transform")
INPUT_COLUMNS = ("fixed", "moving") + OPTIONAL_COLUMNS
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Case:
    """One registered pair to check: absolute input paths (mask and transform optional)."""

    case_id: str
    fixed: str
    moving: str
    mask: str = None
    transform: str = None

    def inputs(self) -> dict:
        """Input paths by column name (None where absent)."""
        return {k: v for k, v in asdict(self).items() if k != "case_id"}


def read_cases(csv_path) -> list:
    """Parse PAIRS.csv (header: case_id, fixed, moving[, mask][, transform]); paths are relative to the CSV."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"{csv_path}: no such file; pass a CSV with columns {', '.join(REQUIRED_COLUMNS)}")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path}: not a readable CSV text file ({exc})") from None
    rows = [(n, row) for n, row in enumerate(rows, start=1) if any(cell.strip() for cell in row)]
    if not rows:
        raise InputError(f"{csv_path}: file is empty; add a header line 'case_id,fixed,moving' and one line per case")
    header = [cell.strip().lower() for cell in rows[0][1]]
    _check_header(csv_path, header)
    cases = [_case_from_row(csv_path, n, header, row) for n, row in rows[1:]]
    if not cases:
        raise InputError(f"{csv_path}: no cases listed under the header")
    _check_unique(csv_path, cases)
    return cases


def _check_header(csv_path: Path, header: list) -> None:
    """Raise InputError for missing, unknown or repeated columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown or len(set(header)) != len(header):
        raise InputError(f"{csv_path}: header must name columns {', '.join(REQUIRED_COLUMNS)} "
                         f"(optional: {', '.join(OPTIONAL_COLUMNS)}), each once; got {','.join(header)}")


def _case_from_row(csv_path: Path, line: int, header: list, row: list) -> Case:
    """One Case from a CSV row, with paths resolved against the CSV's folder."""
    if len(row) > len(header):
        raise InputError(f"{csv_path}:{line}: {len(row)} cells but {len(header)} columns; quote paths with commas")
    cells = dict(zip(header, [c.strip() for c in row]))
    case_id = cells.get("case_id", "")
    if not CASE_ID.match(case_id):
        raise InputError(f"{csv_path}:{line}: case_id {case_id!r} must be 1-128 letters, digits, '.', '_' or '-' "
                         "(it names the case's output folder)")
    paths = {}
    for column in INPUT_COLUMNS:
        value = cells.get(column, "")
        if column in REQUIRED_COLUMNS and not value:
            raise InputError(f"{csv_path}:{line}: case {case_id} has no {column} path")
        paths[column] = str((csv_path.parent / value).resolve()) if value else None
    return Case(case_id, **paths)


def _check_unique(csv_path: Path, cases: list) -> None:
    """Raise InputError if two cases share an id (their outputs would collide)."""
    seen = set()
    for case in cases:
        key = case.case_id.lower()
        if key in seen:
            raise InputError(f"{csv_path}: case_id {case.case_id} is listed twice; case ids must be unique")
        seen.add(key)


def path_sha256(path, ignored=()) -> str:
    """sha256 of a file, or of a folder's files (relative names and their sha256, sorted), e.g. a DICOM series; the
    `ignored` paths (absolute, resolved: files or folders, and the temporary files written beside them) are left out,
    e.g. a batch's own outputs in the folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_dir():
        return sha256_of(path)
    digest, root = hashlib.sha256(), path.resolve()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not _is_ignored(p, ignored)):
        digest.update(f"{file.relative_to(root)}\0{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def _is_ignored(file: Path, ignored) -> bool:
    """Whether a file is one of the `ignored` paths, lies in one, or is one's temporary file (`.NAME.*` beside it)."""
    return any(file == path or path in file.parents or (file.parent == path.parent and
                                                         file.name.startswith(f".{path.name}."))
               for path in ignored)


def input_checksums(case: Case, ignored=()) -> dict:
    """sha256 of every input of a case (None for absent optional inputs), leaving out the `ignored` paths."""
    return {column: path_sha256(path, ignored) if path else None for column, path in case.inputs().items()}
