"""release on run folders made without training (seconds): what it writes, and what it refuses before any work."""
import json
from pathlib import Path

import pytest
import torch

from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, load_model, sha256_of
from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.imageio import write_image


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
                 "--samples", "1", *extra])


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
    assert load_model(run / "weights.final.safetensors")


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
        assert _release(run, weights, heldout, *map(str, extra)) == 2, extra
        assert message in _error_line(capsys), extra
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "run"]
