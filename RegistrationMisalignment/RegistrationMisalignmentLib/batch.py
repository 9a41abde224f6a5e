"""One case of a batch run: skip it if finished with the same inputs, else predict and publish its folder atomically."""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import SimpleITK as sitk

from . import __version__
from .batch_cases import Case, input_checksums
from .case_lock import STAGED_SUFFIX, CaseLock
from .checkpoint import released_weights_path
from .cli_common import check_two_scans
from .errors import CapturedWarnings, InputError, out_of_memory_text, warnings_named
from .figures import VIEWS, thumbnail_pngs
from .imageio import read_image, write_bytes, write_image
from .orientation import in_network_orientation
from .report import REPORT_NAME, SUMMARY_NAME

RECORD_NAME = "case.json"
LABELS_NAME = "labels.nrrd"
PROBABILITIES_NAME = "probabilities.nrrd"
FAILURE_NAME = "failure.json"  # a failed rerun's record, beside the earlier result it keeps
OWN_FILES = frozenset([RECORD_NAME, FAILURE_NAME, LABELS_NAME, PROBABILITIES_NAME] + [f"{view}.png" for view in VIEWS])
_PREDICTORS = {}


@dataclass(frozen=True)
class BatchSettings:
    """What every case of a batch run shares: output folder and model options."""

    out_dir: str
    weights: str = None
    device: str = "auto"
    max_memory_gb: float = 2.0
    threads: int = 0
    probabilities: bool = False
    amp: bool = False


def cases_folder(out_dir) -> Path:
    """Folder holding one sub-folder per case."""
    return Path(out_dir) / "cases"


def case_folder(out_dir, case_id: str) -> Path:
    """A case's published output folder."""
    return cases_folder(out_dir) / case_id


def batch_outputs(out_dir) -> tuple:
    """What batch writes in `out_dir` (resolved): the cases folder, the summary and the report; an input folder that
    holds them (--out inside a DICOM folder) is fingerprinted without them."""
    out = Path(out_dir).resolve()
    return cases_folder(out), out / SUMMARY_NAME, out / REPORT_NAME


def lock_path(out_dir, case_id: str) -> Path:
    """The lock file held while a case is being processed."""
    return cases_folder(out_dir) / f".{case_id}.lock"


def _read_json(path: Path):
    """A JSON file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_record(out_dir, case_id: str):
    """The published record of a case, or None if the case has not finished."""
    return _read_json(case_folder(out_dir, case_id) / RECORD_NAME)


def current_record(out_dir, case_id: str):
    """The record of a case's last run: its failure when it failed after an earlier result, else the published one."""
    return _read_json(case_folder(out_dir, case_id) / FAILURE_NAME) or read_record(out_dir, case_id)


def predictor_for(settings: BatchSettings):
    """The predictor for these settings, loaded once per process (workers reuse it across cases) and again when the
    weights file changes."""
    key = (_weights_identity(settings.weights), settings.device, settings.max_memory_gb, settings.threads, settings.amp)
    if key not in _PREDICTORS:
        from .cli_common import set_threads
        from .inference import MisalignmentPredictor
        set_threads(settings.threads)
        _PREDICTORS[key] = MisalignmentPredictor.load(settings.weights, settings.device, settings.max_memory_gb,
                                                      amp=settings.amp)
        _PREDICTORS[key].start_warming_up()  # a GPU warms up while the first case is read
    return _PREDICTORS[key]


def _weights_identity(weights) -> tuple:
    """The weights file's path, size and modification time (None for a missing file, which loading reports)."""
    path = Path(weights) if weights is not None else released_weights_path()
    try:
        status = path.stat()
    except OSError:
        return str(path), None, None
    return str(path.resolve()), status.st_size, status.st_mtime_ns


def run_case(case: Case, settings: BatchSettings) -> dict:
    """Process one case under its lock and return its record; the case's own problems become a 'failed' record. The
    log shows the case's warnings as `CASE_ID: message` (its record keeps them without the id)."""
    with warnings_named(case.case_id), CaseLock(lock_path(settings.out_dir, case.case_id)).held() as taken:
        if not taken:
            return {"case_id": case.case_id, "status": "busy", "error": "being processed by another run"}
        _restore_replaced(cases_folder(settings.out_dir), case.case_id)
        _remove_leftovers(cases_folder(settings.out_dir), case.case_id)
        record = _finished_or_predicted(case, settings)
        if record["status"] == "failed":
            record_failure(settings.out_dir, record)
        return record


def _finished_or_predicted(case: Case, settings: BatchSettings) -> dict:
    """The case's earlier record when it is finished with the same inputs, model and options, else a new prediction;
    a failed record for the case's own problems."""
    started = time.perf_counter()
    try:
        predictor = predictor_for(settings)
        checksums = input_checksums(case, batch_outputs(settings.out_dir))
        check_two_scans("fixed and moving", case.fixed, case.moving, (checksums["fixed"], checksums["moving"]))
        fingerprint = _fingerprint(predictor, checksums, settings)
        previous = read_record(settings.out_dir, case.case_id)
        if _is_finished(previous, fingerprint, settings.out_dir):
            (case_folder(settings.out_dir, case.case_id) / FAILURE_NAME).unlink(missing_ok=True)
            return dict(previous, skipped=True)
        check_own_folder(case_folder(settings.out_dir, case.case_id))  # before the work that would replace it
        return _predict_case(case, predictor, settings, fingerprint, started)
    except InputError as exc:
        return failed_record(case, str(exc))
    except (RuntimeError, OSError, MemoryError, ValueError) as exc:
        shortage = out_of_memory_text(exc)
        return failed_record(case, f"{shortage}; lower --max-memory, give a smaller mask, or crop or downsample the "
                                   "images" if shortage else _exception_text(exc))


def _exception_text(exc: Exception) -> str:
    """An unexpected exception as one line: its type and the first line of its message."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0][:300]}" if message else type(exc).__name__


def record_failure(out_dir, record: dict) -> None:
    """Write a failed case's record without losing an earlier result: beside a finished one (kept, until a run
    succeeds), else as the case's folder. If even that cannot be written (e.g. disk full), the caller still has it; a
    folder holding files batch did not write is left alone; the record's error says either."""
    folder = case_folder(out_dir, record["case_id"])
    if foreign_files(folder):
        record["error"] += f" (not written into {folder}: it holds files batch did not write)"
        return
    previous = read_record(out_dir, record["case_id"])
    try:
        if previous and previous.get("status") == "done":
            record["error"] += f"; the result of an earlier run ({previous.get('finished')}) is kept in {folder}"
            write_bytes(json.dumps(record, indent=2).encode(), folder / FAILURE_NAME)
        else:
            publish(out_dir, record["case_id"], {}, record)
    except (OSError, InputError):
        record["error"] += " (this record could not be written to the output folder)"


def foreign_files(folder: Path) -> list:
    """The names in a case's folder that batch does not write (sorted; empty when the folder is missing; the name
    itself when it is a file)."""
    try:
        return sorted(path.name for path in folder.iterdir() if not path.is_file() or not _is_own(path.name))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return [folder.name]


def _is_own(name: str) -> bool:
    """Whether batch writes files of this name in a case's folder (the failure record's temporary file included)."""
    return name in OWN_FILES or name.startswith(f".{FAILURE_NAME}.")


def check_own_folder(folder: Path) -> None:
    """Raise InputError if a case's folder holds anything batch did not write: replacing it would delete that."""
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise InputError(f"{folder} holds files batch did not write ({shown}), which replacing the folder would "
                         "delete; move them out or choose another --out")


def failed_record(case: Case, error: str) -> dict:
    """The record of a case that could not be processed."""
    return {"case_id": case.case_id, "status": "failed", "error": error, "inputs": case.inputs(),
            "worker": _worker(), "finished": _now()}


def _fingerprint(predictor, checksums: dict, settings: BatchSettings) -> dict:
    """What a finished result depends on: input checksums, model and options."""
    return {"checksums": checksums,
            "model": {"weights_sha256": predictor.weights_sha256, "architecture": predictor.model.config.architecture,
                      "package_version": __version__},
            "options": {"probabilities": settings.probabilities, "amp": settings.amp}}


def _is_finished(record, fingerprint: dict, out_dir) -> bool:
    """True when a published record is done, made from the same inputs, model and options, with its files."""
    if not record or record.get("status") != "done":
        return False
    if any(record.get(key) != value for key, value in fingerprint.items()):
        return False
    folder = case_folder(out_dir, record["case_id"])
    outputs = record.get("outputs", {})
    names = [outputs.get("labels"), outputs.get("probabilities"), *outputs.get("thumbnails", {}).values()]
    return all((folder / name).is_file() for name in names if name)


def _predict_case(case: Case, predictor, settings: BatchSettings, fingerprint: dict, started: float) -> dict:
    """Read the inputs, predict, and publish labels, probabilities, thumbnails and the record."""
    from .transforms import read_transform
    with CapturedWarnings() as warnings:
        fixed, moving = read_image(case.fixed), read_image(case.moving)
        mask = read_image(case.mask) if case.mask else None
        transform = read_transform(case.transform) if case.transform else None
        read_s = time.perf_counter() - started
        result = predictor.predict(fixed, moving, mask=mask, transform=transform)
    images = {LABELS_NAME: result.labels}
    if settings.probabilities:
        images[PROBABILITIES_NAME] = result.probabilities
    thumbnails = case_thumbnails(fixed, result.labels)
    files = dict(images, **{f"{view}.png": png for view, png in thumbnails.items()})
    summary = result.summary
    timings = dict(summary.get("timings_s", {}), reading=read_s)
    record = {"case_id": case.case_id, "status": "done", "error": None, "warnings": list(warnings),
              "inputs": case.inputs(), **fingerprint,
              "outputs": {"labels": LABELS_NAME,
                          "probabilities": PROBABILITIES_NAME if settings.probabilities else None,
                          "thumbnails": {view: f"{view}.png" for view in thumbnails}},
              "classes": summary["classes"], "mask_voxels": summary["mask_voxels"], "mask_ml": summary["mask_ml"],
              "mean_confidence": summary["mean_confidence"], "calibrated": summary["calibrated"],
              "wrong_region_count": summary["wrong_region_count"],
              "wrong_regions": summary["wrong_regions"], "device": summary["device"],
              "precision": summary["precision"], "tile_size": summary.get("tile_size"), "worker": _worker()}
    publish(settings.out_dir, case.case_id, files, record, timings, started)
    return record


def case_thumbnails(fixed: sitk.Image, labels: sitk.Image) -> dict:
    """The case's axial, coronal and sagittal PNGs, drawn in the network's (LPS) orientation whatever the order of
    axes the files store, so that each view shows the plane it names."""
    fixed, labels = in_network_orientation(fixed), in_network_orientation(labels)
    return thumbnail_pngs(sitk.GetArrayViewFromImage(fixed), sitk.GetArrayViewFromImage(labels),
                          fixed.GetSpacing()[::-1])


def publish(out_dir, case_id: str, files: dict, record: dict, timings: dict = None, started: float = None) -> None:
    """Write a case's files into a staging folder, then swap it in place of the published one (never half-written)."""
    folder = cases_folder(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{case_id}.staging-{uuid.uuid4().hex}"
    try:  # made inside, so that an interruption right after it removes it too
        staging.mkdir()
        writing = time.perf_counter()
        for name, content in files.items():
            if isinstance(content, bytes):
                write_bytes(content, staging / name)
            else:
                write_image(content, staging / name)
        if timings is not None:
            now = time.perf_counter()
            record["timings_s"] = dict(timings, writing=now - writing, total=now - started)
        record["finished"] = record.get("finished") or _now()
        write_bytes(json.dumps(record, indent=2).encode(), staging / RECORD_NAME)
        _swap_in(staging, case_folder(out_dir, case_id))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, final: Path) -> None:
    """Replace `final` by `staging` with renames; the old folder, only batch's own files (checked first), is removed
    only once the new one is in place."""
    check_own_folder(final)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _restore_replaced(folder: Path, case_id: str) -> None:
    """Put back the case's earlier result when a run died between the two renames of `_swap_in` (we hold its lock):
    the case's folder is missing and the folder moved aside for replacement holds a record."""
    if (folder / case_id).exists():
        return
    replaced = sorted((path for path in folder.glob(f".{case_id}.old-*") if (path / RECORD_NAME).is_file()),
                      key=lambda path: path.stat().st_mtime_ns)
    if replaced:
        os.rename(replaced[-1], folder / case_id)


def _remove_leftovers(folder: Path, case_id: str) -> None:
    """Remove staging and replaced folders that an interrupted run left for this case (we hold its lock)."""
    for pattern in (f".{case_id}.staging-*", f".{case_id}.old-*", f".{case_id}.lock.broken-*",
                    f".{case_id}.lock.*{STAGED_SUFFIX}", f"{case_id}/.{FAILURE_NAME}.*"):
        for path in folder.glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _worker() -> dict:
    """Which machine and process handled a case."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _now() -> str:
    """Current time, ISO 8601 with time zone."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
