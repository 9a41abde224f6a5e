"""Hard inputs and hostile conditions: a one-line error or a warning, never a traceback or a half-written file."""
import logging
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.imageio import write_image
from RegistrationMisalignmentLib.input_checks import warn_about_unusual_inputs

from conftest import image_like, save_weights_with_card

ENGINE = str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment")


@pytest.fixture(scope="module")
def files(small_pair, tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    write_image(small_pair.fixed, folder / "fixed.nrrd")
    write_image(small_pair.moving, folder / "moving.nrrd")
    weights = folder / "tiny.safetensors"
    save_weights_with_card(tiny_model, weights)
    return folder


def _predict_args(files, output, *extra):
    return ["predict", "--fixed", str(files / "fixed.nrrd"), "--moving", str(files / "moving.nrrd"),
            "--output", str(output), "--weights", str(files / "tiny.safetensors"), "--device", "cpu", *extra]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


def _limit_file_size(limit: int):
    """For a child process: files may not grow beyond `limit` bytes (writes fail as on a full disk)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_mid_write_gives_one_line_and_leaves_no_partial_file(files, tmp_path):
    env = dict(os.environ, PYTHONPATH=ENGINE, PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run([sys.executable, "-m", "RegistrationMisalignmentLib",
                          *_predict_args(files, tmp_path / "labels.nrrd", "--probabilities",
                                         str(tmp_path / "probabilities.nrrd"))],
                         capture_output=True, encoding="utf-8", errors="replace", env=env,
                         preexec_fn=_limit_file_size(4096), timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "could not be written" in _one_error_line(run.stderr)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_folder_is_refused_before_any_work(files, tmp_path, capsys):
    folder = Path("/sys") if os.geteuid() == 0 else tmp_path / "read-only"  # root may write anywhere but /sys
    if folder != Path("/sys"):
        folder.mkdir()
        folder.chmod(0o555)
    assert main(_predict_args(files, folder / "labels.nrrd")) == 2
    assert "not writable" in _one_error_line(capsys.readouterr().err)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"case_id,fixed,moving\np1,{files / 'fixed.nrrd'},{files / 'moving.nrrd'}\n")
    assert main(["batch", str(pairs), "--out", str(folder / "cohort")]) == 2
    assert f"--out {folder / 'cohort'}: the folder cannot be created" in _one_error_line(capsys.readouterr().err)


def test_a_volume_too_large_for_memory_is_refused_from_its_header(files, tmp_path, capsys):
    header = tmp_path / "huge.nrrd"
    header.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
                       b"sizes: 8000 8000 8000\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
                       b"space origin: (0,0,0)\nencoding: raw\nendian: little\n\n")
    assert main(["predict", "--fixed", str(header), "--moving", str(files / "moving.nrrd"),
                 "--output", str(tmp_path / "labels.nrrd")]) == 2
    assert "GiB of memory" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_voxels_are_refused(files, small_pair, tmp_path, capsys, value):
    array = sitk.GetArrayFromImage(small_pair.fixed).astype(np.float32)
    array[10, 10, 10] = value
    write_image(image_like(array, small_pair.fixed), tmp_path / "bad.nrrd")
    args = _predict_args(files, tmp_path / "labels.nrrd")
    args[args.index("--fixed") + 1] = str(tmp_path / "bad.nrrd")
    assert main(args) == 2
    assert "NaN or infinite" in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nrrd"]


def test_the_same_inputs_give_byte_identical_outputs(files, tmp_path):
    for run in ("a", "b"):
        assert main(_predict_args(files, tmp_path / f"{run}.nrrd", "--probabilities", str(tmp_path / f"{run}p.nrrd"),
                                  "--json")) == 0
    assert (tmp_path / "a.nrrd").read_bytes() == (tmp_path / "b.nrrd").read_bytes()
    assert (tmp_path / "ap.nrrd").read_bytes() == (tmp_path / "bp.nrrd").read_bytes()


def _messages(caplog):
    return " | ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_non_ct_intensities_are_warned_about(small_pair, caplog):
    mr_like = sitk.RescaleIntensity(sitk.Cast(small_pair.fixed, sitk.sitkFloat32), 0.0, 1.0)
    unsigned = sitk.Cast(small_pair.moving, sitk.sitkFloat32) + 1024.0
    with caplog.at_level(logging.WARNING, logger="RegistrationMisalignment"):
        warn_about_unusual_inputs(small_pair.fixed, small_pair.moving)
        assert _messages(caplog) == ""
        warn_about_unusual_inputs(mr_like, unsigned)
    text = _messages(caplog)
    assert re.search(r"fixed image: intensities 0\.\.0\.\d+ \(", text) and "do not look like a CT" in text  # not 0..1
    assert "moving image" in text and "subtract 1024" in text


def test_a_volume_smaller_than_a_patch_runs_with_a_warning(small_pair, tiny_predictor, caplog):
    array = sitk.GetArrayFromImage(small_pair.fixed)[40:46, 30:50, 40:60]
    tiny = sitk.GetImageFromArray(array)
    tiny.SetSpacing(small_pair.fixed.GetSpacing())
    mask = image_like(np.ones_like(array, dtype=np.uint8), tiny)
    with caplog.at_level(logging.WARNING, logger="RegistrationMisalignment"):
        result = tiny_predictor.predict(tiny, tiny, mask=mask)
    labels = sitk.GetArrayFromImage(result.labels)
    assert labels.shape == array.shape and (labels > 0).all()
    assert "only 6 mm across" in _messages(caplog)


def test_very_different_voxel_sizes_run_with_warnings(small_pair, tiny_predictor, caplog):
    moving = small_pair.moving
    coarse = sitk.Resample(moving, [n // 3 for n in moving.GetSize()], sitk.Transform(), sitk.sitkLinear,
                           moving.GetOrigin(), [3 * s for s in moving.GetSpacing()], moving.GetDirection())
    with caplog.at_level(logging.WARNING, logger="RegistrationMisalignment"):
        result = tiny_predictor.predict(small_pair.fixed, coarse)
    assert result.labels.GetSize() == small_pair.fixed.GetSize() and result.summary["mask_voxels"] > 0
    text = _messages(caplog)
    assert "resampling it onto the fixed grid" in text and "voxel sizes differ a lot" in text
