"""The `batch` command: per-case outputs, summary and report, resume after Ctrl-C and crashes, concurrent runs."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib.batch_cases import read_cases
from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.imageio import write_image
from RegistrationMisalignmentLib.regions import wrong_regions

from conftest import engine_environment, image_like, run_in_terminal, save_weights_with_card, warnings_stand_alone

GOOD_CASES = ["plain", "shifted", "masked"]
SHIFT_MM = (6.0, -3.0, 2.0)


@pytest.fixture(scope="module")
def cohort(small_pair, small_phantom, tiny_model, tmp_path_factory):
    """A folder with a CSV of four cases: plain, through a translation transform, with a mask, and a broken file."""
    folder = tmp_path_factory.mktemp("cohort")
    write_image(small_pair.fixed, folder / "fixed.nrrd")
    write_image(small_pair.moving, folder / "moving.nrrd")
    write_image(small_pair.moving, folder / "moving_copy.nrrd")
    shifted = sitk.Image(small_pair.moving)
    shifted.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) + SHIFT_MM))
    write_image(shifted, folder / "moving_shifted.nrrd")
    sitk.WriteTransform(sitk.TranslationTransform(3, SHIFT_MM), str(folder / "shift.tfm"))
    lungs = sitk.GetArrayFromImage(small_phantom[1])
    half = np.zeros_like(lungs)
    half[:, :, : lungs.shape[2] // 2] = lungs[:, :, : lungs.shape[2] // 2]
    write_image(image_like(half.astype(np.uint8), small_pair.fixed), folder / "right_lung.nrrd")
    (folder / "truncated.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    weights = folder / "tiny.safetensors"
    save_weights_with_card(tiny_model, weights)
    (folder / "cases.csv").write_text(
        "case_id,fixed,moving,mask,transform\n"
        "plain,fixed.nrrd,moving.nrrd,,\n"
        "shifted,fixed.nrrd,moving_shifted.nrrd,,shift.tfm\n"
        "masked,fixed.nrrd,moving_copy.nrrd,right_lung.nrrd,\n"
        "broken,fixed.nrrd,truncated.nii.gz,,\n")
    (folder / "good.csv").write_text("".join(line + "\n" for line in (folder / "cases.csv").read_text().splitlines()
                                             if not line.startswith("broken")))
    return folder


def _args(cohort, out, csv="cases.csv", *extra):
    return ["batch", str(cohort / csv), "--out", str(out), "--weights", str(cohort / "tiny.safetensors"),
            "--device", "cpu", *extra]


def _labels(out, case_id):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cases" / case_id / "labels.nrrd")))


def _leftovers(out):
    """Staging folders, replaced folders and lock files left in the cases folder."""
    return sorted(p.name for p in (out / "cases").iterdir() if p.name.startswith("."))


def test_batch_writes_each_case_summary_and_report_and_resumes(cohort, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(cohort, out, "cases.csv", "--probabilities", "--json")) == 1  # one broken case
    result = json.loads(capsys.readouterr().out)
    assert (result["done"], result["failed"], result["skipped"]) == (3, 1, 0)
    assert "truncated" in result["failures"]["broken"] or "cannot be read" in result["failures"]["broken"]
    for case_id in GOOD_CASES:
        folder = out / "cases" / case_id
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["axial.png", "case.json", "coronal.png", "labels.nrrd", "probabilities.nrrd", "sagittal.png"])
        record = json.loads((folder / "case.json").read_text())
        counts = np.bincount(_labels(out, case_id).ravel(), minlength=4)
        assert [record["classes"][n]["voxels"] for n in ("correct", "poor", "wrong")] == counts[1:].tolist()
        assert record["checksums"]["fixed"] and len(record["checksums"]["moving"]) == 64
        assert record["model"]["architecture"] == "hierarchical_lstm" and record["timings_s"]["total"] > 0
        assert record["precision"] == "float32" and record["calibrated"] is False  # the tiny test weights
        with_probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "probabilities.nrrd")))
        largest = with_probabilities.max(-1)[_labels(out, case_id) > 0]
        assert record["mean_confidence"] == pytest.approx(float(largest.mean()), abs=1e-5)
        labels_image = sitk.ReadImage(str(folder / "labels.nrrd"))
        assert {key: record[key] for key in ("wrong_region_count", "wrong_regions")} == wrong_regions(labels_image)
    assert np.array_equal(_labels(out, "shifted"), _labels(out, "plain"))  # the transform undoes the shift
    masked = _labels(out, "masked")
    assert masked.any() and not masked[:, :, masked.shape[2] // 2:].any()
    broken = json.loads((out / "cases" / "broken" / "case.json").read_text())
    assert broken["status"] == "failed"
    assert sorted(p.name for p in (out / "cases" / "broken").iterdir()) == ["case.json"]
    summary = (out / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert len(summary) == 5 and summary[0].startswith("case_id,status")
    report = (out / "report.html").read_text(encoding="utf-8")
    assert all(case_id in report for case_id in GOOD_CASES + ["broken"])
    assert _leftovers(out) == []

    write_image(sitk.ReadImage(str(cohort / "moving.nrrd")) + 1, cohort / "moving_copy.nrrd")
    assert main(_args(cohort, out, "cases.csv", "--probabilities", "--json")) == 1
    again = json.loads(capsys.readouterr().out)
    assert (again["done"], again["skipped"], again["failed"]) == (1, 2, 1)  # only the changed case is redone
    assert main(_args(cohort, out, "cases.csv", "--json")) == 1  # other options: recomputed without probabilities
    third = json.loads(capsys.readouterr().out)
    assert third["done"] == 3 and not (out / "cases" / "plain" / "probabilities.nrrd").exists()


def _run_cli(args):
    return subprocess.Popen([sys.executable, "-m", "RegistrationMisalignmentLib", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, encoding="utf-8", errors="replace", env=engine_environment())


def _wait_for(predicate, process=None, timeout=240.0):
    """Poll until `predicate` returns something true; fail if `process` ends first."""
    end = time.time() + timeout
    while time.time() < end:
        found = predicate()
        if found:
            return found
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended early: {process.communicate()[1][-2000:]}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _finished(out):
    return [p.parent.name for p in (out / "cases").glob("*/case.json")] if (out / "cases").exists() else []


def test_a_run_killed_between_the_renames_that_replace_a_result_loses_nothing(cohort, tmp_path, capsys):
    """Killed after moving the earlier result aside and before moving the new one in: the next run puts it back."""
    out = tmp_path / "run"
    args = _args(cohort, out, "good.csv", "--json")
    assert main(args) == 0
    capsys.readouterr()
    cases = out / "cases"
    before = (cases / "plain" / "labels.nrrd").read_bytes()
    os.rename(cases / "plain", cases / ".plain.old-0123")  # the state such a kill leaves
    (cases / ".plain.staging-4567").mkdir()
    (cases / ".plain.staging-4567" / "labels.nrrd").write_bytes(b"the new result, complete or not")
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["skipped"] == 3 and result["done"] == 0  # the earlier result is back, and still up to date
    assert (cases / "plain" / "labels.nrrd").read_bytes() == before and _leftovers(out) == []


def test_ctrl_c_and_a_crash_leave_nothing_half_written_and_the_next_run_resumes(cohort, tmp_path):
    out = tmp_path / "run"
    args = _args(cohort, out, "good.csv")
    run = _run_cli(args)
    _wait_for(lambda: _finished(out), run)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and err.strip().splitlines()[-1].startswith("error: interrupted")
    assert _leftovers(out) == [] and 1 <= len(_finished(out)) < 3

    run = _run_cli(args)  # a crash: killed while a case is half-way
    before = set(_finished(out))
    _wait_for(lambda: list((out / "cases").glob(".*.lock")), run)
    run.kill()
    run.communicate(timeout=60)
    assert set(_finished(out)) >= before

    run = _run_cli(args + ["--json"])
    stdout, _ = run.communicate(timeout=300)
    result = json.loads(stdout)
    assert run.returncode == 0 and result["skipped"] >= len(before) and result["done"] + result["skipped"] == 3
    assert _leftovers(out) == []


def test_concurrent_runs_on_one_folder_process_each_case_once(cohort, tmp_path):
    out = tmp_path / "shared"
    runs = [_run_cli(_args(cohort, out, "good.csv", "--json", *extra)) for extra in ([], ["--workers", "2"])]
    results = [json.loads(run.communicate(timeout=300)[0]) for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert sum(r["done"] for r in results) == 3  # every case computed by exactly one of the runs
    records = [json.loads((out / "cases" / c / "case.json").read_text()) for c in GOOD_CASES]
    assert all(r["status"] == "done" for r in records) and _leftovers(out) == []
    assert (out / "summary.csv").read_text().count(",done,") == 3


def test_dask_cluster_survives_a_killed_worker_with_identical_outputs(cohort, tmp_path):
    import threading
    from distributed import Client, LocalCluster
    from RegistrationMisalignmentLib.batch import BatchSettings
    from RegistrationMisalignmentLib.batch_runner import run_batch
    cases = read_cases(cohort / "good.csv")
    reference = tmp_path / "serial"
    run_batch(cases, BatchSettings(str(reference), str(cohort / "tiny.safetensors"), "cpu", threads=1),
              progress=False)
    out = tmp_path / "dask"
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        killed = []

        def kill_a_worker_mid_case():
            for lock in _wait_for(lambda: list((out / "cases").glob(".*.lock")) if (out / "cases").exists() else []):
                pid = json.loads(lock.read_text() or "{}").get("pid")
                if pid in worker_pids:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return

        killer = threading.Thread(target=kill_a_worker_mid_case)
        killer.start()
        settings = BatchSettings(str(out), str(cohort / "tiny.safetensors"), "cpu", threads=1)
        result = run_batch(cases, settings, scheduler=cluster.scheduler_address, progress=False)
        killer.join()
    assert killed, "no worker was killed mid-case"
    assert result["done"] == 3 and result["failed"] == 0 and _leftovers(out) == []
    for case_id in GOOD_CASES:
        record = json.loads((out / "cases" / case_id / "case.json").read_text())
        assert record["worker"]["pid"] not in killed
        assert (out / "cases" / case_id / "labels.nrrd").read_bytes() == \
            (reference / "cases" / case_id / "labels.nrrd").read_bytes()  # byte-identical across processes


@pytest.mark.parametrize("text, message", [
    ("fixed,moving\na.nrrd,b.nrrd\n", "header must name columns"),
    ("case_id,fixed,moving\np1,a.nrrd,b.nrrd\np1,c.nrrd,d.nrrd\n", "listed twice"),
    ("case_id,fixed,moving\n../up,a.nrrd,b.nrrd\n", ":2: case_id"),
    ("case_id,fixed,moving\np1,,b.nrrd\n", ":2: case p1 has no fixed"),
    ("case_id,fixed,moving\np1,a.nrrd,b.nrrd,extra\n", ":2: 4 cells"),
    ("case_id,fixed,moving\n", "no cases"),
    ("", "file is empty"),
])
def test_bad_pairs_csv_gives_a_line_numbered_error(tmp_path, text, message):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        read_cases(path)


def test_pairs_csv_paths_are_relative_to_the_csv(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "pairs.csv"
    path.write_text("Case_ID,fixed,moving,mask\n\np1,a.nrrd,/data/b.nrrd,\n")
    (case,) = read_cases(path)
    assert (case.case_id, case.fixed, case.moving, case.mask) == ("p1", str(tmp_path / "sub" / "a.nrrd"),
                                                                   "/data/b.nrrd", None)


def test_a_case_lock_appears_with_its_holder_written_and_a_dead_holder_is_replaced_at_once(tmp_path):
    """The lock file is linked into place already written (a holder killed at any moment never leaves an empty lock,
    which others could not tell from a live one for minutes); it leaves no staged file behind."""
    from RegistrationMisalignmentLib.case_lock import CaseLock
    path = tmp_path / ".case.lock"
    lock = CaseLock(path)
    assert lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    assert [p.name for p in tmp_path.iterdir()] == [".case.lock"]
    assert not CaseLock(path).acquire()  # a live holder keeps it
    lock.release()
    assert list(tmp_path.iterdir()) == []
    held_then_killed = ("import os, sys; from RegistrationMisalignmentLib.case_lock import CaseLock; "
                        f"assert CaseLock({str(path)!r}).acquire(); os._exit(0)")
    subprocess.run([sys.executable, "-c", held_then_killed], check=True, timeout=60)
    assert path.exists()
    successor = CaseLock(path)
    assert successor.acquire()
    successor.release()
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_just_after_the_lock_is_made_or_while_it_is_released_leaves_no_lock(tmp_path):
    """An interrupt lands between two steps of taking or of releasing the lock: the lock file still goes."""
    from RegistrationMisalignmentLib.case_lock import CaseLock

    class InterruptedAfterLinking(CaseLock):
        def _create(self):
            super()._create()
            raise KeyboardInterrupt

    class InterruptedWhileReleasing(CaseLock):
        def release(self):
            self._heartbeat.join = lambda: (_ for _ in ()).throw(KeyboardInterrupt)
            super().release()

    for lock in (InterruptedAfterLinking(tmp_path / ".a.lock"), InterruptedWhileReleasing(tmp_path / ".b.lock")):
        with pytest.raises(KeyboardInterrupt):
            with lock.held():
                pass
    assert list(tmp_path.iterdir()) == []


def test_inputs_inside_the_cases_folder_are_refused_before_any_work(cohort, tmp_path, capsys):
    """A study laid out as STUDY/cases/ID/ with --out STUDY: replacing a case's folder would delete its scans."""
    study = tmp_path / "study"
    (study / "cases" / "p1").mkdir(parents=True)
    for name in ("fixed.nrrd", "moving.nrrd"):
        (study / "cases" / "p1" / name).write_bytes((cohort / name).read_bytes())
    (study / "pairs.csv").write_text("case_id,fixed,moving\np1,cases/p1/fixed.nrrd,cases/p1/moving.nrrd\n")
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    args = ["batch", str(study / "pairs.csv"), "--out", str(study), "--weights", str(cohort / "tiny.safetensors")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: case p1: its fixed input") and "choose another --out" in err and "\n" not in err
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before


def test_inputs_reached_through_a_linked_cases_folder_are_refused_too(cohort, tmp_path, capsys):
    study = tmp_path / "study"
    (study / "cases" / "a").mkdir(parents=True)
    (study / "cases" / "a" / "labels.nrrd").write_bytes((cohort / "fixed.nrrd").read_bytes())  # the user's own mask
    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "cases").symlink_to(study / "cases")
    (tmp_path / "pairs.csv").write_text(f"case_id,fixed,moving,mask\na,{cohort / 'fixed.nrrd'},"
                                        f"{cohort / 'moving.nrrd'},{study / 'cases' / 'a' / 'labels.nrrd'}\n")
    before = _snapshot(study)
    args = ["batch", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "qc"), "--weights",
            str(cohort / "tiny.safetensors")]
    assert main(args) == 2
    assert "its mask input" in capsys.readouterr().err and _snapshot(study) == before


def test_a_finished_case_with_a_stray_file_in_its_folder_is_still_skipped(cohort, finished_run, tmp_path, capsys):
    """A .DS_Store (Finder) or a note beside a finished result replaces nothing, so it fails nothing."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "cases" / "plain" / ".DS_Store").write_bytes(b"finder")
    assert main(_args(cohort, out, "good.csv", "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["skipped"], result["failed"]) == (3, 0)
    assert (out / "cases" / "plain" / ".DS_Store").read_bytes() == b"finder"


def test_a_case_folder_holding_other_files_is_never_replaced(cohort, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "cases" / "plain").mkdir(parents=True)
    (out / "cases" / "plain" / "notes.txt").write_text("clinical notes")
    (out / "cases" / "shifted").write_text("a file where the case's folder would go")
    assert main(_args(cohort, out, "good.csv", "--json")) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["done"], result["failed"]) == (1, 2)
    assert "did not write (notes.txt)" in result["failures"]["plain"]
    assert "did not write (shifted)" in result["failures"]["shifted"]
    assert (out / "cases" / "shifted").read_text().startswith("a file")
    assert [p.name for p in (out / "cases" / "plain").iterdir()] == ["notes.txt"]
    assert (out / "cases" / "plain" / "notes.txt").read_text() == "clinical notes" and _leftovers(out) == []


@pytest.fixture(scope="module")
def finished_run(cohort, tmp_path_factory):
    """An output folder where the good cases have finished."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(_args(cohort, out, "good.csv")) == 0
    return out


def _snapshot(folder):
    """Every file under a folder with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("option, value, message", [
    ("--weights", "typo.safetensors", "weights file not found"),
    ("--threads", "-1", "--threads must be at least 0"),
    ("--threads", "100000", "--threads 100000 is more than the"),
    ("--device", "cuda", "no CUDA GPU"),
])
def test_a_bad_model_option_is_refused_before_any_case_is_touched(cohort, finished_run, tmp_path, capsys, option,
                                                                    value, message, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # --device cuda asks for a GPU this run lacks
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _snapshot(out)
    override = [option, str(tmp_path / value) if option == "--weights" else value]  # the last one given counts
    assert main(_args(cohort, out, "good.csv", *override)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert _snapshot(out) == before


def test_a_failed_rerun_keeps_the_earlier_result_and_reports_the_failure(cohort, finished_run, tmp_path, capsys):
    """An input missing on a rerun (a share not mounted): the finished outputs stay, the summary says 'failed'."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _snapshot(out / "cases" / "plain")
    (tmp_path / "unmounted.csv").write_text(f"case_id,fixed,moving\nplain,{cohort / 'fixed.nrrd'},"
                                            f"{tmp_path / 'share' / 'moving.nrrd'}\n")
    assert main(_args(tmp_path, out, "unmounted.csv", "--weights", str(cohort / "tiny.safetensors"), "--json")) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] == 1 and "no such file" in result["failures"]["plain"]
    assert "earlier run" in result["failures"]["plain"]
    kept = _snapshot(out / "cases" / "plain")
    failure = json.loads(kept.pop(Path("failure.json")))
    assert kept == before and failure["status"] == "failed"
    assert (out / "summary.csv").read_text().splitlines()[1].startswith("plain,failed,")

    assert main(_args(cohort, out, "good.csv", "--json")) == 0  # the share is back: nothing to redo
    assert json.loads(capsys.readouterr().out)["skipped"] == 3
    assert _snapshot(out / "cases" / "plain") == before
    assert (out / "summary.csv").read_text().count(",done,") == 3


def test_a_killed_worker_fails_no_case_and_the_pool_goes_on(cohort, tmp_path):
    """kill -9 of one --workers 2 process mid-case (as the out-of-memory killer does): the pool is restarted, the cases
    it held are redone, the others go on; the counts, summary and exit status agree."""
    out = tmp_path / "run"
    run = _run_cli(_args(cohort, out, "good.csv", "--workers", "2", "--json"))
    lock = _wait_for(lambda: list((out / "cases").glob(".*.lock")) if (out / "cases").exists() else [], run)[0]
    killed = _wait_for(lambda: json.loads(lock.read_text() or "{}").get("pid"), run)
    assert killed != run.pid
    os.kill(killed, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=300)
    result = json.loads(stdout)
    assert run.returncode == 0, stderr[-2000:]
    assert (result["done"], result["failed"]) == (3, 0) and _leftovers(out) == []
    assert (out / "summary.csv").read_text().count(",done,") == 3
    assert all(json.loads((out / "cases" / c / "case.json").read_text())["worker"]["pid"] != killed
               for c in GOOD_CASES)


def _cases_csv(folder, cohort, moving_by_case):
    """A PAIRS.csv in `folder` of cases with the cohort's fixed image and these moving images (absolute paths)."""
    csv = folder / "pairs.csv"
    csv.write_text("case_id,fixed,moving\n" + "".join(f"{case_id},{cohort / 'fixed.nrrd'},{cohort / moving}\n"
                                                       for case_id, moving in moving_by_case.items()))
    return csv


@pytest.mark.parametrize("workers", ["1", "2"])
def test_every_warning_on_stderr_names_its_case_once_and_the_records_keep_it_alone(cohort, tmp_path, workers):
    """Warnings of many cases on one stderr: each line says which case warned, in this process or a worker."""
    csv = _cases_csv(tmp_path, cohort, {"off-grid-a": "moving_shifted.nrrd", "plain": "moving.nrrd",
                                        "off-grid-b": "moving_shifted.nrrd"})
    out = tmp_path / "run"
    run = _run_cli(_args(cohort, out, csv, "--workers", workers, "--json"))
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-2000:]
    warnings = {case_id: json.loads((out / "cases" / case_id / "case.json").read_text())["warnings"]
                for case_id in ("off-grid-a", "plain", "off-grid-b")}
    assert warnings["plain"] == [] and warnings["off-grid-a"] == warnings["off-grid-b"]
    assert "another grid" in warnings["off-grid-a"][0]  # as the engine words it, without the case id
    assert sorted(stderr.splitlines()) == sorted(f"warning: {case_id}: {message}" for case_id, messages in
                                                 warnings.items() for message in messages)


def test_on_a_terminal_the_workers_warnings_stand_on_their_own_lines_above_the_progress_bar(cohort, tmp_path):
    """A worker's warning reaches the terminal through the batch process, which clears its bar to show it."""
    csv = _cases_csv(tmp_path, cohort, {"off-grid-a": "moving_shifted.nrrd", "off-grid-b": "moving_shifted.nrrd"})
    status, terminal = run_in_terminal(_args(cohort, tmp_path / "run", csv, "--workers", "2"))
    assert status == 0, terminal[-2000:]
    assert "cases:" in terminal  # the progress bar was drawn
    assert sorted(line.split(": ")[1] for line in warnings_stand_alone(terminal)) == ["off-grid-a", "off-grid-b"]


def test_a_named_block_names_the_warnings_in_the_log_and_captures_keep_them_alone(caplog):
    import logging
    import threading
    from RegistrationMisalignmentLib.errors import CapturedWarnings, warnings_named
    log = logging.getLogger("RegistrationMisalignment")
    with warnings_named("p001"), CapturedWarnings() as outer:
        with CapturedWarnings() as inner:
            log.warning("first")
        log.warning("second of %d", 2)
        other = threading.Thread(target=log.warning, args=("from another thread",))
        other.start()
        other.join()
    log.warning("after")
    assert inner == ["first"] and outer == ["first", "second of 2"]
    assert [r.getMessage() for r in caplog.records] == ["p001: first", "p001: second of 2", "from another thread",
                                                        "after"]


def _children(pid):
    """The ids of the processes whose parent is `pid` (Linux)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
    return children


def _running(pid):
    """Whether process `pid` runs (a zombie, ended but not yet reaped, does not; Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _still_running(pids, seconds):
    """The processes of `pids` that still run after up to `seconds` of waiting for them to end (Linux)."""
    end = time.time() + seconds
    while any(map(_running, pids)) and time.time() < end:
        time.sleep(0.05)
    return [pid for pid in pids if _running(pid)]


@pytest.mark.skipif(sys.platform != "linux", reason="reads the processes' parents from /proc")
def test_workers_end_within_seconds_when_their_parent_is_killed_and_the_next_run_finishes(cohort, tmp_path):
    """kill -9 of a --workers 2 run: its workers stop at once instead of going on with their queue, and the next run
    breaks the lock of the case they were computing and finishes every case."""
    csv = _cases_csv(tmp_path, cohort, {f"case{n}": "moving.nrrd" for n in range(4)})
    out = tmp_path / "run"
    run = _run_cli(_args(cohort, out, csv, "--workers", "2", "--json"))
    _wait_for(lambda: _finished(out), run)  # both workers have started and more cases are queued
    workers = _children(run.pid)
    run.kill()
    run.wait(timeout=60)
    run.stdout.close()  # not read to the end: left workers would hold them open
    run.stderr.close()
    left = _still_running(workers, 10.0)
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # a failure leaves no process behind
    assert len(workers) >= 2 and left == []
    rerun = _run_cli(_args(cohort, out, csv, "--json"))
    stdout, stderr = rerun.communicate(timeout=300)
    result = json.loads(stdout)
    assert rerun.returncode == 0, stderr[-2000:]
    assert (result["done"] + result["skipped"], result["failed"], result["busy"]) == (4, 0, 0)
    assert _leftovers(out) == []


def test_a_lock_not_refreshed_for_long_is_broken_even_if_its_pid_is_alive(tmp_path):
    """After a reboot the pid in a left lock may be another live program's: the old heartbeat shows it is abandoned."""
    import socket
    from RegistrationMisalignmentLib.case_lock import STALE_AFTER_S, CaseLock
    path = tmp_path / ".case.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "token": "left-by-a-reboot"}))
    assert not CaseLock(path).acquire()  # refreshed just now: a live holder
    os.utime(path, (time.time() - 2 * STALE_AFTER_S,) * 2)
    lock = CaseLock(path)
    assert lock.acquire()
    lock.release()
    assert list(tmp_path.iterdir()) == []


def test_a_live_holder_keeps_its_lock_however_long_it_is_silent_and_a_reused_pid_does_not(tmp_path):
    """A suspended run (Ctrl-Z, a sleeping laptop) stops refreshing its lock but still holds the case; a process that
    took a dead holder's id (after a reboot) is told from it by the boot and the process start time."""
    import socket
    from RegistrationMisalignmentLib.case_lock import STALE_AFTER_S, CaseLock, process_identity
    path = tmp_path / ".case.lock"
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "process": process_identity(os.getppid()),
              "token": "suspended"}
    path.write_text(json.dumps(holder))
    os.utime(path, (time.time() - 10 * STALE_AFTER_S,) * 2)
    assert not CaseLock(path).acquire()
    path.write_text(json.dumps(dict(holder, process=holder["process"] + "0", token="before-a-reboot")))
    os.utime(path, (time.time() - 10 * STALE_AFTER_S,) * 2)
    lock = CaseLock(path)
    assert lock.acquire()  # at once, not after STALE_AFTER_S: the live process is not the holder
    lock.release()


@pytest.mark.skipif(sys.platform != "linux", reason="reads the processes' states from /proc")
def test_a_holder_that_ended_but_is_not_reaped_yet_is_dead(tmp_path):
    """A worker whose parent was killed stays a zombie until the system reaps it: its lock is broken at once."""
    import socket
    from RegistrationMisalignmentLib.case_lock import CaseLock, process_identity
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        path = tmp_path / ".case.lock"
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid,
                                    "process": process_identity(holder.pid), "token": "ended"}))
        assert not CaseLock(path).acquire()  # alive
        holder.stdin.close()  # it ends, and stays a zombie until waited for
        _wait_for(lambda: not _running(holder.pid), timeout=30)
        assert Path(f"/proc/{holder.pid}").exists()
        lock = CaseLock(path)
        assert lock.acquire()
        lock.release()
    finally:
        holder.wait()


def test_a_pool_whose_processes_die_before_any_case_fails_its_cases_instead_of_looping(cohort, tmp_path,
                                                                                      monkeypatch):
    from RegistrationMisalignmentLib import batch_runner
    from RegistrationMisalignmentLib.batch import BatchSettings
    pools = []

    def dying_pool(cases, settings, workers):
        pools.append(len(cases))
        return list(cases)  # every process died before taking a case
        yield

    monkeypatch.setattr(batch_runner, "_in_pool", dying_pool)
    cases = read_cases(cohort / "good.csv")
    settings = BatchSettings(str(tmp_path / "run"), str(cohort / "tiny.safetensors"), "cpu")
    (tmp_path / "run" / "cases").mkdir(parents=True)
    records = list(batch_runner._in_processes(cases, settings, 2))
    assert pools == [3] and [r["status"] for r in records] == ["failed"] * 3
    assert all("died before starting a case" in r["error"] for r in records)
    assert all((tmp_path / "run" / "cases" / c.case_id / "case.json").exists() for c in cases)


def test_a_weights_file_replaced_at_the_same_path_is_loaded_again(tiny_model, tmp_path):
    """A long-lived process (a notebook, a Dask worker) must not keep using the model it cached for that path."""
    import torch
    from RegistrationMisalignmentLib.batch import BatchSettings, predictor_for
    from RegistrationMisalignmentLib.checkpoint import sha256_of
    from RegistrationMisalignmentLib.model import MisalignmentNet
    weights = tmp_path / "mine.safetensors"
    save_weights_with_card(tiny_model, weights)
    settings = BatchSettings(str(tmp_path / "out"), str(weights), "cpu", threads=1)
    first = predictor_for(settings)
    assert predictor_for(settings) is first
    torch.manual_seed(1)
    save_weights_with_card(MisalignmentNet(tiny_model.config).eval(), weights)  # retrained, same size
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert predictor_for(settings).weights_sha256 == sha256_of(weights) != first.weights_sha256


def test_a_small_flag_threshold_is_printed_as_given_and_the_device_column_sorts(cohort, finished_run, tmp_path,
                                                                                 capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    assert main(_args(cohort, out, "good.csv", "--flag-wrong-fraction", "0.004")) == 0
    assert "(wrong > 0.4 %)" in capsys.readouterr().out
    report = (out / "report.html").read_text()
    assert "fraction above 0.4 %" in report and report.count('<td class="text" data-sort="cpu">cpu</td>') == 3


def test_a_pairs_file_or_case_input_that_batch_would_write_over_is_refused_before_any_work(cohort, tmp_path, capsys):
    """`batch summary.csv --out .`: the pairs file, or a case's input, is the summary or the report batch writes."""
    study, other = tmp_path / "study", tmp_path / "other"
    study.mkdir()
    other.mkdir()
    (study / "summary.csv").write_text(f"case_id,fixed,moving\np1,{cohort / 'fixed.nrrd'},{cohort / 'moving.nrrd'}\n")
    (tmp_path / "linked.csv").symlink_to(study / "summary.csv")
    (other / "report.html").write_bytes((cohort / "fixed.nrrd").read_bytes())  # a scan, whatever its name
    (other / "pairs.csv").write_text(f"case_id,fixed,moving\np1,report.html,{cohort / 'moving.nrrd'}\n")
    for csv, message in [(study / "summary.csv", "the pairs file"), (tmp_path / "linked.csv", "the pairs file"),
                         (other / "pairs.csv", "case p1's fixed input")]:
        before = _snapshot(csv.resolve().parent)
        assert main(["batch", str(csv), "--out", str(csv.resolve().parent), "--weights",
                     str(cohort / "tiny.safetensors")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {message}") and "that batch writes" in err and "\n" not in err, err
        assert _snapshot(csv.resolve().parent) == before


@pytest.mark.parametrize("name", ["summary.csv", "report.html"])
def test_a_summary_or_report_that_batch_did_not_write_is_never_replaced(cohort, finished_run, tmp_path, capsys,
                                                                         name):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / name).write_text("the user's own notes\n")
    before = _snapshot(out)
    assert main(_args(cohort, out, "good.csv")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out / name} exists and was not written by batch, which would replace it; move it or " \
                  "choose another --out"
    assert _snapshot(out) == before


def test_summaries_and_reports_of_every_batch_version_are_recognised(cohort, finished_run, tmp_path):
    from RegistrationMisalignmentLib.report import written_by_batch
    assert written_by_batch(finished_run / "summary.csv") and written_by_batch(finished_run / "report.html")
    first = tmp_path / "summary.csv"  # the columns of the first version (0.1)
    first.write_text("case_id,status,error,correct_fraction,poor_fraction,wrong_fraction,correct_ml,poor_ml,wrong_ml,"
                     "mask_ml,total_s,device,weights_sha256,flagged\n")
    pairs = tmp_path / "pairs" / "summary.csv"
    pairs.parent.mkdir()
    pairs.write_text("case_id,fixed,moving\n")
    assert written_by_batch(first) and not written_by_batch(pairs) and not written_by_batch(tmp_path / "missing.csv")


def test_a_case_of_one_scan_or_two_identical_ones_fails_and_the_others_go_on(cohort, tmp_path, capsys):
    copy = tmp_path / "copy.nrrd"
    shutil.copyfile(cohort / "moving.nrrd", copy)
    csv = _cases_csv(tmp_path, cohort, {"plain": "moving.nrrd", "copy": copy, "same": "fixed.nrrd"})
    csv.write_text(csv.read_text().replace(f"copy,{cohort / 'fixed.nrrd'}", f"copy,{cohort / 'moving.nrrd'}"))
    out = tmp_path / "run"
    assert main(_args(cohort, out, csv, "--json")) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["done"], result["failed"]) == (1, 2)
    assert result["failures"]["same"].startswith(f"fixed and moving are the same file ({cohort / 'fixed.nrrd'}); give")
    assert result["failures"]["copy"].startswith(
        f"fixed and moving are identical files ({cohort / 'moving.nrrd'} and {copy}); give")


@pytest.mark.skipif(sys.platform != "linux", reason="reads the processes' parents from /proc")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_cleans_up_as_ctrl_c_does_and_stops_the_workers(cohort, tmp_path, workers):
    """What `timeout`, Slurm and `docker stop` send, to the batch process alone: exit status 143, one line, no
    half-written case, the workers stopped, nothing leaked (semaphores), and the next run resumes."""
    out = tmp_path / "run"
    csv = _cases_csv(tmp_path, cohort, {f"case{n}": "moving.nrrd" for n in range(4)})
    run = _run_cli(_args(cohort, out, csv, "--workers", workers))
    _wait_for(lambda: _finished(out), run)
    children = _children(run.pid)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM; nothing half-written")
    assert "Traceback" not in err and "leaked" not in err, err[-2000:]
    assert _still_running(children, 10.0) == [] and _leftovers(out) == [] and 1 <= len(_finished(out)) < 4
    rerun = _run_cli(_args(cohort, out, csv, "--json"))
    stdout, stderr = rerun.communicate(timeout=300)
    result = json.loads(stdout)
    assert rerun.returncode == 0 and result["skipped"] >= 1 and result["done"] + result["skipped"] == 4


def test_a_dicom_input_folder_holding_the_output_folder_is_fingerprinted_without_it_and_resumes(small_phantom, cohort,
                                                                                               tmp_path, capsys):
    """--out inside a DICOM input folder: batch's own outputs there do not change the input's checksum."""
    from RegistrationMisalignmentLib.batch import batch_outputs
    from RegistrationMisalignmentLib.batch_cases import path_sha256
    from test_imageio import _write_dicom_series
    series = tmp_path / "fixed_dicom"
    series.mkdir()
    _write_dicom_series(sitk.ReadImage(str(cohort / "fixed.nrrd")), series, "1.2.826.0.1.3680043.2.1125.7")
    before = path_sha256(series)
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"case_id,fixed,moving\np1,{series},{cohort / 'moving.nrrd'}\n")
    for out in (series / "qc", series):
        assert main(_args(cohort, out, csv, "--json")) == 0
        assert json.loads(capsys.readouterr().out)["done"] == 1
        assert main(_args(cohort, out, csv, "--json")) == 0
        assert json.loads(capsys.readouterr().out)["skipped"] == 1
        if out != series:
            shutil.rmtree(out)
    assert path_sha256(series) != before  # batch's outputs are in it: only batch leaves them out
    (series / ".summary.csv.k2j4x9ab").write_text("a summary being written")
    (series / "notes.txt").write_text("the user's own file")  # a change of the input does count
    record = json.loads((series / "cases" / "p1" / "case.json").read_text())
    assert path_sha256(series, batch_outputs(series)) != record["checksums"]["fixed"]
    (series / "notes.txt").unlink()
    assert path_sha256(series, batch_outputs(series)) == record["checksums"]["fixed"] == before
