"""release on run folders made without training (seconds): what it writes, and what it refuses before any work."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, load_model, sha256_of
from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.imageio import read_image, write_image

from test_imageio import _write_dicom_series


@pytest.fixture(scope="module")
def cts(small_pair, tmp_path_factory):
    """Two small phantom CTs: moving.nii.gz to train on, fixed.nrrd to hold out."""
    folder = tmp_path_factory.mktemp("release_cts")
    write_image(small_pair.fixed, folder / "fixed.nrrd")
    write_image(small_pair.moving, folder / "moving.nii.gz")
    return folder


def fake_run(folder: Path, model, **train) -> Path:
    """A run folder as `train --out` leaves it (weights and checkpoint), with these training settings."""
    folder.mkdir(parents=True, exist_ok=True)
    export_weights(model, folder / "weights.safetensors")
    settings = dict({"steps": 1, "batch_size": 1, "out_size": 8, "ct_paths": [], "phantom_seeds": []}, **train)
    torch.save({"train_config": json.dumps(settings), "step": 1, "history": "[]"}, folder / "training_state.pt")
    return folder


def _release(run, weights_out, heldout, *extra) -> int:
    """Run `release` with one held-out sample."""
    return main(["release", "--run", str(run), "--weights-out", str(weights_out), "--heldout-ct", str(heldout),
                 "--samples", "1", *map(str, extra)])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_release_named_with_dots_leaves_the_cards_of_other_weights_alone(cts, tiny_model, tmp_path, capsys):
    run = fake_run(tmp_path / "run", tiny_model, ct_paths=[str(cts / "moving.nii.gz")])
    own = {"sha256": sha256_of(run / "weights.safetensors")}
    card_path(run / "weights.safetensors").write_text(json.dumps(own))  # the run's weights have a card
    assert _release(run, run / "weights.final.safetensors", cts / "fixed.nrrd") == 0
    assert sorted(p.name for p in run.iterdir()) == ["training_state.pt", "weights.card.json",
                                                     "weights.final.card.json", "weights.final.md",
                                                     "weights.final.safetensors", "weights.safetensors"]
    assert json.loads(card_path(run / "weights.safetensors").read_text()) == own
    assert load_model(run / "weights.safetensors")
    assert json.loads((run / "weights.final.card.json").read_text())["name"] == "weights.final"
    assert "checked against `weights.final.card.json`" in (run / "weights.final.md").read_text()
    markdown = (run / "weights.final.md").read_text()
    assert "- Training command: not recorded (release --training-command)\n" in markdown  # a run of 0.6.0 or earlier
    assert load_model(run / "weights.final.safetensors")


def test_release_training_command_overrides_the_commands_the_run_recorded(cts, tiny_model, tmp_path, capsys):
    run = fake_run(tmp_path / "run", tiny_model, commands=["registration-misalignment train A", "... B"])
    assert _release(run, tmp_path / "given.safetensors", cts / "fixed.nrrd", "--training-command", "my cmd") == 0
    card = json.loads((tmp_path / "given.card.json").read_text())
    assert card["training_command"] == "my cmd" and card["training_resumed_with"] == []
    assert "- Training command: `my cmd`\n" in (tmp_path / "given.md").read_text()


def test_a_release_never_replaces_an_earlier_one_or_any_of_its_files(cts, tiny_model, tmp_path, capsys):
    run = fake_run(tmp_path / "run", tiny_model, ct_paths=[str(cts / "moving.nii.gz")])
    weights = tmp_path / "rel" / "mine.safetensors"
    weights.parent.mkdir()
    assert _release(run, weights, cts / "fixed.nrrd") == 0
    card = json.loads(card_path(weights).read_text())
    card_path(weights).write_text(json.dumps(dict(card, robustness={"added": "later"})))  # as --card adds
    released = {path: path.read_bytes() for path in weights.parent.iterdir()}
    capsys.readouterr()
    assert _release(run, weights, cts / "fixed.nrrd") == 2
    assert _error_line(capsys).endswith(f"--weights-out {weights} exists already; remove it or choose another "
                                        "--weights-out (an existing file is never replaced)")
    weights.unlink()  # the card and the Markdown stay: still refused, named
    assert _release(run, weights, cts / "fixed.nrrd") == 2
    assert f"--weights-out {weights}: {card_path(weights)} exists already" in _error_line(capsys)
    assert {path: path.read_bytes() for path in weights.parent.iterdir()} == {
        path: data for path, data in released.items() if path != weights}


def test_a_release_whose_cts_are_not_there_is_refused_before_any_work(cts, tiny_model, tmp_path, capsys):
    run = fake_run(tmp_path / "run", tiny_model, ct_paths=[str(cts / "moving.nii.gz")])
    (tmp_path / "empty").mkdir()
    weights, missing = tmp_path / "r.safetensors", tmp_path / "nothere.nii.gz"
    cases = [((missing,), f"--heldout-ct {missing}: no such file or folder"),
             ((cts / "fixed.nrrd", "--calibration-ct", missing), f"--calibration-ct {missing}: no such file or folder"),
             ((cts / "fixed.nrrd", "--calibration-ct", tmp_path / "empty"), "folder holds no DICOM series")]
    for (heldout, *extra), message in cases:
        assert _release(run, weights, heldout, *extra) == 2, extra
        assert message in _error_line(capsys), extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]


def _cache(cts: list, out: Path) -> Path:
    """A sources file of these CTs (no phantoms), written by cache-sources."""
    assert main(["cache-sources", *[arg for ct in cts for arg in ("--ct", str(ct))], "--phantoms", "0", "--out",
                 str(out), "--json"]) == 0
    return out


def _dicom_folder(ct_path: Path, folder: Path, uid: str) -> Path:
    """The CT at `ct_path` written again as a DICOM series in `folder`."""
    folder.mkdir(parents=True)
    _write_dicom_series(read_image(ct_path), folder, uid)
    return folder


def test_a_training_ct_renamed_linked_reoriented_or_as_dicom_is_refused_as_held_out(cts, tiny_model, tmp_path,
                                                                                     capsys):
    train_ct = tmp_path / "train.nii.gz"
    shutil.copyfile(cts / "moving.nii.gz", train_ct)
    sources = _cache([train_ct], tmp_path / "sources.npz")
    assert list(json.loads(capsys.readouterr().out)["fingerprints"]) == [str(train_ct)]
    shutil.copyfile(train_ct, tmp_path / "renamed.nii.gz")
    (tmp_path / "link.nii.gz").symlink_to(train_ct)
    write_image(sitk.DICOMOrient(read_image(train_ct), "RAS"), tmp_path / "stored_as_ras.nrrd")
    copies = [tmp_path / "renamed.nii.gz", tmp_path / "link.nii.gz", tmp_path / "stored_as_ras.nrrd",
              _dicom_folder(train_ct, tmp_path / "dicom" / "series", "1.2.826.0.1.3680043.2.1125.7")]
    cached = fake_run(tmp_path / "cached", tiny_model, source_files=[str(sources)])
    direct = fake_run(tmp_path / "direct", tiny_model, ct_paths=[str(train_ct)])
    for run in (cached, direct):
        for copy in copies:
            assert _release(run, tmp_path / "r.safetensors", copy) == 2, (run, copy)
            assert _error_line(capsys).endswith(f"--heldout-ct {copy} is a training CT of this run or of the weights "
                                                "it started from (train.nii.gz); evaluate on a CT they never saw")
    other_scan = tmp_path / "other" / "train.nii.gz"  # another scan with the same name: its voxels tell them apart
    other_scan.parent.mkdir()
    shutil.copyfile(cts / "fixed.nrrd", other_scan.with_name("fixed.nrrd"))
    write_image(read_image(cts / "fixed.nrrd"), other_scan)
    assert _release(cached, tmp_path / "r.safetensors", other_scan) == 0
    card = json.loads(card_path(tmp_path / "r.safetensors").read_text())
    assert card["training_cts"] == ["train.nii.gz"] and len(card["training_ct_fingerprints"][0]) == 64
    assert _release(cached, tmp_path / "c.safetensors", other_scan, "--calibration-ct",
                    other_scan.with_name("fixed.nrrd")) == 2  # the held-out CT in another file
    assert f"--calibration-ct {other_scan.with_name('fixed.nrrd')} is the held-out CT" in _error_line(capsys)


def test_a_fine_tune_refuses_a_renamed_copy_of_a_ct_its_starting_weights_trained_on(cts, tiny_model, tmp_path,
                                                                                     capsys):
    sources = _cache([cts / "moving.nii.gz"], tmp_path / "sources.npz")
    first = tmp_path / "first.v1.safetensors"
    assert _release(fake_run(tmp_path / "first", tiny_model, source_files=[str(sources)]), first,
                    cts / "fixed.nrrd") == 0
    shutil.copyfile(cts / "moving.nii.gz", tmp_path / "renamed.nii.gz")
    tuned = fake_run(tmp_path / "tuned", tiny_model, ct_paths=[str(cts / "fixed.nrrd")], init_weights=str(first))
    capsys.readouterr()
    assert _release(tuned, tmp_path / "r.safetensors", tmp_path / "renamed.nii.gz") == 2
    assert "is a training CT of this run or of the weights it started from (moving.nii.gz)" in _error_line(capsys)


def test_without_fingerprints_a_held_out_ct_is_refused_on_its_name_and_told_so(cts, tiny_model, tmp_path, capsys,
                                                                              monkeypatch):
    trained = _dicom_folder(cts / "moving.nii.gz", tmp_path / "patient1" / "series", "1.2.826.0.1.3680043.2.1125.8")
    heldout = _dicom_folder(cts / "fixed.nrrd", tmp_path / "patient2" / "series", "1.2.826.0.1.3680043.2.1125.9")
    sources = _cache([trained], tmp_path / "sources.npz")
    run = fake_run(tmp_path / "run", tiny_model, source_files=[str(sources)])
    monkeypatch.chdir(heldout.parent)  # "series" here is the held-out CT, not the training CT of that name
    assert _release(run, tmp_path / "r.safetensors", "series") == 0  # fingerprints: the same name, other voxels
    with np.load(sources) as data:  # as cache-sources 0.5.1 wrote it: names only
        arrays = {key: data[key] for key in data.files if key != "fingerprints"}
    np.savez_compressed(sources, **arrays)
    capsys.readouterr()
    assert _release(run, tmp_path / "r2.safetensors", heldout) == 2
    assert _error_line(capsys).endswith(f"--heldout-ct {heldout} has the name of a training CT of this run or of the "
                                        "weights it started from (series); that CT is recorded without a fingerprint "
                                        "of its voxels, so this matched on the name only: if it is another scan (e.g. "
                                        "DICOM folders all called `series`), rename its file or folder")
    assert _release(run, tmp_path / "r2.safetensors", heldout.rename(heldout.with_name("patient2_ct"))) == 0
