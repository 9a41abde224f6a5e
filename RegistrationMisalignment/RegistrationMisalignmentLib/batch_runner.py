"""A batch run: its cases in this process, in local worker processes or on a Dask cluster; then summary and report."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path

from tqdm import tqdm

from .batch import BatchSettings, cases_folder, current_record, failed_record, lock_path, record_failure, run_case
from .case_lock import CaseLock
from .checkpoint import load_model
from .cli_common import Terminated, check_threads, require_at_least, sigterm_as_interrupt
from .devices import default_threads, resolve_device
from .errors import InputError
from .imageio import same_file
from .report import REPORT_NAME, SUMMARY_NAME, write_report, write_summary_csv, written_by_batch

_WORKER = {}  # in a worker process: the parent's log queue and the event the parent sets to stop the batch
LOST_ALONE = "the worker process running it died (out of memory? killed?), also when it ran alone; run again to retry"
LOST_BEFORE_STARTING = ("the worker processes died before starting a case (out of memory loading the model? or, from a "
                        "Python script, run_batch not under if __name__ == '__main__'); run again")


def run_batch(cases: list, settings: BatchSettings, workers: int = 1, scheduler: str = None,
              flag_wrong_fraction: float = 0.1, progress: bool = True) -> dict:
    """Process every case (skipping finished ones), then write summary.csv and report.html; return the counts."""
    if settings.weights:  # workers elsewhere (a cluster) or in another folder read the same file
        settings = replace(settings, weights=str(Path(settings.weights).resolve()))
    check_model_options(settings, scheduler)
    check_inputs_outside_cases_folder(cases, settings.out_dir)
    check_cohort_files(settings.out_dir, case_inputs(cases))
    cases_folder(settings.out_dir).mkdir(parents=True, exist_ok=True)
    returned = {}
    with tqdm(total=len(cases), unit="case", desc="cases", disable=not progress or None) as bar:
        for record in _execute(cases, settings, workers, scheduler):
            returned[record["case_id"]] = record
            bar.update(1)
            bar.set_postfix(Counter(_outcome(r) for r in returned.values()), refresh=False)
    records = [_final_record(settings.out_dir, case, returned.get(case.case_id)) for case in cases]
    out = Path(settings.out_dir)
    write_summary_csv(records, out / SUMMARY_NAME, flag_wrong_fraction)
    write_report(records, out, flag_wrong_fraction)
    counts = Counter(_outcome(r) for r in returned.values())
    failures = {c.case_id: returned[c.case_id]["error"] for c in cases
                if returned.get(c.case_id, {}).get("status") == "failed"}
    flagged = [r["case_id"] for r in records if r.get("status") == "done"
               and r["classes"]["wrong"]["fraction"] > flag_wrong_fraction]
    return {"cases": len(cases), "done": counts["done"], "skipped": counts["skipped"], "failed": counts["failed"],
            "busy": counts["busy"], "flagged": flagged, "summary": str(out / SUMMARY_NAME),
            "report": str(out / REPORT_NAME), "failures": failures}


def check_model_options(settings: BatchSettings, scheduler: str = None) -> None:
    """Raise InputError for bad weights, threads or device before any case is touched (every case would fail); on a
    cluster, the workers check the threads and device themselves."""
    if scheduler:  # a cluster's workers may have the CPUs and the GPU that this machine lacks
        require_at_least(0, threads=settings.threads)
    else:
        check_threads(settings.threads)
        resolve_device(settings.device)
    load_model(settings.weights)


def check_inputs_outside_cases_folder(cases: list, out_dir) -> None:
    """Raise InputError if an input lies in OUT/cases/, where batch replaces each case's folder (also reached through
    a link, or named in another letter case on a file system that ignores case)."""
    folder = cases_folder(out_dir)
    if not folder.exists():
        return  # nothing there yet, so no input there either
    for case in cases:
        for column, path in case.inputs().items():
            if path and any(parent.exists() and os.path.samefile(parent, folder)
                            for parent in Path(path).resolve().parents):
                raise InputError(f"case {case.case_id}: its {column} input {path} lies inside {folder.resolve()}, "
                                 "where batch replaces each case's folder; move the inputs elsewhere or choose another "
                                 "--out")


def case_inputs(cases: list) -> dict:
    """Every input of the cases, by what it is ('case ID's COLUMN input' -> path)."""
    return {f"case {case.case_id}'s {column} input": path for case in cases
            for column, path in case.inputs().items() if path}


def check_cohort_files(out_dir, inputs: dict) -> None:
    """Raise InputError when summary.csv or report.html in `out_dir`, which batch replaces, is one of the `inputs`
    ('what it is' -> path; also through a link) or an existing file that batch did not write."""
    paths = [Path(out_dir) / name for name in (SUMMARY_NAME, REPORT_NAME)]
    for path in paths:
        for what, other in inputs.items():
            if same_file(path, other):
                raise InputError(f"{what} {other} is the {path.name} that batch writes in --out {out_dir}; move it "
                                 "or choose another --out (inputs are never overwritten)")
    for path in paths:
        if os.path.isfile(path) and not written_by_batch(path):
            raise InputError(f"{path} exists and was not written by batch, which would replace it; move it or "
                             "choose another --out")


def _outcome(record: dict) -> str:
    """done, skipped, failed or busy."""
    return "skipped" if record.get("skipped") else record["status"]


def _final_record(out_dir, case, returned):
    """What the report shows for a case: this run's outcome, or for a case another run held, what that run left."""
    if returned is not None and (returned["status"] != "busy" or lock_path(out_dir, case.case_id).exists()):
        return returned
    return current_record(out_dir, case.case_id) or returned or failed_record(case, "not finished; run again to "
                                                                                     "resume")


def _execute(cases: list, settings: BatchSettings, workers: int, scheduler: str):
    """Yield each case's record as it completes."""
    if scheduler:
        yield from _on_dask(cases, settings, scheduler)
    elif workers > 1:
        yield from _in_processes(cases, settings, workers)
    else:
        for case in cases:
            yield run_case(case, settings)


def _in_processes(cases: list, settings: BatchSettings, workers: int):
    """Run cases in `workers` local processes, sharing the cores between them. When a worker dies (killed, out of
    memory), the cases held by dead processes are redone one at a time (only a case whose worker dies again alone
    fails) and the others go on in a new pool; if a pool ends with no case finished or held, its cases fail (its
    processes die before they start one)."""
    shared = replace(settings, threads=settings.threads or max(1, default_threads() // workers))
    queue = list(cases)
    while queue:
        interrupted = yield from _in_pool(queue, shared, workers)
        held = [case for case in interrupted if _held_by_dead_process(settings.out_dir, case)]
        for case in held:
            if (yield from _in_pool([case], settings, 1)):
                yield _record_lost_case(case, settings.out_dir, LOST_ALONE)
        if interrupted and not held and len(interrupted) == len(queue):
            for case in interrupted:
                yield _record_lost_case(case, settings.out_dir, LOST_BEFORE_STARTING)
            return
        queue = [case for case in interrupted if case not in held]


def _in_pool(cases: list, settings: BatchSettings, workers: int):
    """Yield the records of the cases that a new pool of `workers` processes finishes; return the others (in order),
    which it did not because one of its processes died."""
    broken = set()
    context = multiprocessing.get_context("spawn")
    worker_log, stop = context.Queue(), context.Event()
    listener = QueueListener(worker_log, _IntoThisProcessLog())
    listener.start()
    pool = ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=context, initializer=_start_worker,
                               initargs=(worker_log, stop))
    try:
        futures = {pool.submit(_run_case_in_worker, case, settings): case for case in cases}
        for future in as_completed(futures):
            try:
                yield future.result()
            except BrokenProcessPool:
                broken.add(futures[future])
    except BaseException:  # Ctrl-C, SIGTERM, or the caller stopped: the workers end their cases as Ctrl-C would
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        listener.stop()
    return [case for case in cases if case in broken]


class _IntoThisProcessLog(logging.Handler):
    """Hands a worker's log record to this process's log, which shows it as it shows its own (above the progress
    bar, on the command line)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


def _start_worker(parent_log, stop) -> None:
    """Set up a worker process: the engine's warnings go to the parent's log (queue `parent_log`), the worker ends
    with its parent, and the parent's `stop` event interrupts the case under way. Ctrl-C, which a terminal sends to
    every process of the run, is left to the parent, which stops the workers so."""
    logging.getLogger("RegistrationMisalignment").addHandler(QueueHandler(parent_log))
    _WORKER.update(log=parent_log, stop=stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    threading.Thread(target=_interrupt_when_stopped, args=(stop,), daemon=True).start()


def _run_case_in_worker(case, settings: BatchSettings) -> dict:
    """run_case in a worker process, which SIGTERM (also the parent's stop) interrupts as Ctrl-C does: the case cleans
    up and the worker ends, starting no other case. Between cases SIGTERM ends a worker at once."""
    with sigterm_as_interrupt():
        try:
            if _WORKER["stop"].is_set():
                raise Terminated()
            return run_case(case, settings)
        except Terminated:
            _end_worker()


def _end_worker() -> None:
    """End this worker process now, once the log records it sent have reached the parent's queue."""
    _WORKER["log"].close()
    _WORKER["log"].join_thread()
    os._exit(128 + signal.SIGTERM)


def _interrupt_when_stopped(stop) -> None:
    """Wait until the parent sets `stop`, then raise SIGTERM in this worker, which interrupts the case under way."""
    stop.wait()
    signal.raise_signal(signal.SIGTERM)


def _exit_with_parent() -> None:
    """Wait until the parent process ends (killed, say), then end this worker at once rather than let it finish its
    queue: a case under way leaves no result, and its lock names a dead process, which the next run breaks."""
    multiprocessing.parent_process().join()  # wakes when the parent ends, on Linux, macOS and Windows alike
    os._exit(1)


def _held_by_dead_process(out_dir, case) -> bool:
    """Whether a case's lock is left by a process that died holding it (the case was under way)."""
    path = lock_path(out_dir, case.case_id)
    return path.exists() and CaseLock(path).abandoned()


def _record_lost_case(case, out_dir, error: str) -> dict:
    """The failed record of a case whose process was lost, written under the case's lock unless another run holds
    it."""
    record = failed_record(case, error)
    with CaseLock(lock_path(out_dir, case.case_id)).held() as taken:
        if taken:
            record_failure(out_dir, record)
    return record


def _on_dask(cases: list, settings: BatchSettings, address: str):
    """Run cases on an existing Dask distributed cluster; the output folder must be shared with its workers."""
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError:
        raise InputError("--scheduler needs Dask distributed: pip install distributed") from None
    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise InputError(f"cannot reach the Dask scheduler at {address} ({exc}); check the address") from None
    try:
        futures = {client.submit(run_case, case, settings, pure=False, key=f"misalignment-{case.case_id}-"
                                 f"{os.urandom(4).hex()}"): case for case in cases}
        for future in dask_completed(futures):
            try:
                yield future.result()
            except Exception as exc:  # a worker died too often (KilledWorker) or the cluster went away
                yield _record_lost_case(futures[future], settings.out_dir, f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        client.close()
