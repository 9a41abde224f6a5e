"""Training loop: losses at every step, checkpoints, exact resume, exported weights."""
import hashlib
import json
import math
import re

import pytest
import torch

from RegistrationMisalignmentLib.checkpoint import load_model
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.model import ModelConfig
from RegistrationMisalignmentLib.sources import source_from_image
from RegistrationMisalignmentLib.training import (TrainConfig, check_before_loading_sources, hierarchy_loss, train,
                                                  training_batches, with_fingerprints)

MODEL = ModelConfig(features=4, hidden=4)


@pytest.fixture(scope="module")
def sources(small_phantom):
    ct, lungs = small_phantom
    return [source_from_image("phantom-small", ct, lungs)]


def _config(steps):
    return TrainConfig(steps=steps, batch_size=2, out_size=8, validate_every=2, validation_samples=2,
                       learning_rate=1e-3)


def test_interrupted_training_resumes_to_the_same_weights(sources, tmp_path):
    straight = train(sources, MODEL, _config(4), tmp_path / "straight", device="cpu", progress=False,
                     log=lambda m: None)
    train(sources, MODEL, _config(2), tmp_path / "resumed", device="cpu", progress=False, log=lambda m: None)
    state_path = tmp_path / "resumed" / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["history"] = json.dumps([dict(h, seconds=1000.0) for h in json.loads(state["history"])])
    torch.save(state, state_path)  # as if the first session had trained for 1000 s
    messages = []
    resumed = train(sources, MODEL, _config(4), tmp_path / "resumed", device="cpu", progress=False,
                    log=messages.append)
    assert any("resuming from step 2" in m for m in messages)
    assert straight["steps"] == resumed["steps"] == 4
    a = load_model(tmp_path / "straight" / "weights.safetensors").state_dict()
    b = load_model(tmp_path / "resumed" / "weights.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["step"] for h in history] == [2, 4]
    assert 1000.0 < history[1]["seconds"] < 1000.0 + 300.0  # the clock goes on from the first session's time


def test_the_last_step_is_validated_once_and_a_finished_run_returns_its_recorded_result(sources, tmp_path,
                                                                                        monkeypatch):
    import RegistrationMisalignmentLib.training as training
    validated = []
    validate = training.validate
    monkeypatch.setattr(training, "validate", lambda *args: validated.append(args) or validate(*args))  # counted
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_state.pt.tmp").write_bytes(b"half")  # an interrupted first save: the run still starts here
    first = train(sources, MODEL, _config(2), run, device="cpu", progress=False, log=lambda m: None)
    assert len(validated) == 1 and first["finished"]  # step 2 only, not once more after the last step
    saved = {path.name: path.read_bytes() for path in run.iterdir()}
    messages = []
    again = train([], MODEL, _config(2), run, device="cpu", progress=False, log=messages.append)  # nothing to draw from
    assert again == first and len(validated) == 1
    assert messages == [f"{run}: already finished at step 2; its recorded result, nothing trained again (a larger "
                        "--steps trains on)"]
    assert {path.name: path.read_bytes() for path in run.iterdir()} == saved


def test_a_time_limit_stops_with_a_checkpoint_and_rerunning_finishes_the_same_run(sources, tmp_path):
    straight = train(sources, MODEL, _config(4), tmp_path / "straight", device="cpu", progress=False,
                     log=lambda m: None)
    messages = []
    stopped = train(sources, MODEL, _config(4), tmp_path / "run", device="cpu", progress=False,
                    log=messages.append, time_limit_s=0.0)
    assert stopped["steps"] == 1 and not stopped["finished"] and straight["finished"]
    assert any("time limit reached at step 1 of 4" in m and "resumes" in m for m in messages)
    assert [h["step"] for h in json.loads((tmp_path / "run" / "history.json").read_text())] == [1]
    resumed = train(sources, MODEL, _config(4), tmp_path / "run", device="cpu", progress=False,
                    log=lambda m: None, time_limit_s=3600.0)
    assert resumed["steps"] == 4 and resumed["finished"]
    a = load_model(tmp_path / "straight" / "weights.safetensors").state_dict()
    b = load_model(tmp_path / "run" / "weights.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_with_another_architecture_or_settings_is_refused_and_keeps_the_checkpoint(sources, tmp_path):
    from RegistrationMisalignmentLib.errors import InputError
    train(sources, MODEL, _config(2), tmp_path / "run", device="cpu", progress=False, log=lambda m: None)
    before = (tmp_path / "run" / "training_state.pt").read_bytes()
    for other, message in ((ModelConfig(features=8, hidden=4), "features 4 \\(asked 8\\)"),
                           (ModelConfig(features=4, hidden=4, architecture="multires_cnn"),
                            "architecture hierarchical_lstm \\(asked multires_cnn\\)")):
        with pytest.raises(InputError, match="holds a run started with " + message):
            train(sources, other, _config(4), tmp_path / "run", device="cpu", progress=False, log=lambda m: None)
    from dataclasses import replace
    with pytest.raises(InputError, match="--batch-size 2 \\(asked 3\\), --learning-rate 0.001 \\(asked 0.01\\)"):
        train(sources, MODEL, replace(_config(4), batch_size=3, learning_rate=1e-2), tmp_path / "run", device="cpu",
              progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "training_state.pt").read_bytes() == before


def test_loader_workers_feed_the_same_batches_as_synthesis_in_process(sources, tmp_path):
    from dataclasses import replace
    config = _config(3)
    inline = list(training_batches(sources, MODEL, config, 1, torch.device("cpu")))
    loaded = list(training_batches(sources, MODEL, replace(config, loader_workers=2), 1, torch.device("cpu")))
    assert len(inline) == len(loaded) == 2  # steps 1 and 2, in order
    for (inputs_a, targets_a), (inputs_b, targets_b) in zip(inline, loaded):
        assert all(torch.equal(targets_a[lv], targets_b[lv]) for lv in targets_a)
        assert all(torch.allclose(inputs_a[lv], inputs_b[lv], atol=1e-4) for lv in inputs_a)  # 1 thread per worker
    result = train(sources, MODEL, replace(config, loader_workers=2), tmp_path, device="cpu", progress=False,
                   log=lambda m: None)
    assert result["steps"] == 3 and (tmp_path / "weights.safetensors").is_file()


def test_a_gpu_loader_device_without_a_gpu_is_refused_before_any_work(sources, tmp_path, monkeypatch):
    from dataclasses import replace
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = replace(_config(2), loader_workers=1, loader_device="cuda")
    with pytest.raises(InputError, match="--loader-device cuda: no CUDA GPU is available here; leave it out"):
        train(sources, MODEL, config, tmp_path / "run", device="cpu", progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / "training_state.pt").exists()


def test_training_changes_the_weights_and_exports_a_loadable_model(sources, tmp_path):
    result = train(sources, MODEL, _config(2), tmp_path, device="cpu", progress=False, log=lambda m: None)
    model = load_model(tmp_path / "weights.safetensors")
    assert model.config == MODEL
    assert len(result["sha256"]) == 64
    assert 0.0 <= result["validation"]["accuracy"] <= 1.0
    torch.manual_seed(0)
    from RegistrationMisalignmentLib.model import MisalignmentNet
    fresh = dict(MisalignmentNet(MODEL).named_parameters())
    trained = dict(model.named_parameters())  # learnt weights, not only batch norm's running statistics
    assert all(not torch.equal(fresh[k], v) for k, v in trained.items() if k.endswith(".weight"))


def test_loss_covers_every_step_and_ignores_unlabelled_voxels():
    logits = {4: torch.zeros(1, 2, 2, 2, 2), 2: torch.zeros(1, 2, 3, 3, 3), 1: torch.zeros(1, 3, 4, 4, 4)}
    targets = {lv: torch.zeros(x.shape[:1] + x.shape[2:], dtype=torch.long) for lv, x in logits.items()}
    uniform = hierarchy_loss(logits, targets)
    assert float(uniform) == pytest.approx(0.5 * 2 * math.log(2.0) + math.log(3.0), rel=1e-5)
    targets[1][:] = -1
    assert float(hierarchy_loss(logits, targets)) == pytest.approx(float(torch.log(torch.tensor(2.0))), rel=1e-5)
    for target in targets.values():
        target[:] = -1  # no labelled voxel at any level (small batches outside the body): nothing to learn from
    nothing = hierarchy_loss({lv: x.requires_grad_() for lv, x in logits.items()}, targets)
    assert float(nothing) == 0.0 and not nothing.requires_grad


def test_ablation_trains_every_architecture_the_same_way_and_tabulates(small_phantom, tmp_path, monkeypatch):
    from RegistrationMisalignmentLib.ablation import run_ablation
    from RegistrationMisalignmentLib.imageio import write_image
    ct, _ = small_phantom
    write_image(ct, tmp_path / "heldout.nrrd")
    config = TrainConfig(steps=1, batch_size=1, out_size=8, validate_every=1, validation_samples=1,
                         phantom_seeds=[0])
    summary = run_ablation(config, tmp_path / "heldout.nrrd", tmp_path / "ablation", samples=2, base=MODEL,
                           device="cpu", log=lambda m: None)
    assert set(summary["results"]) == {"hierarchical_lstm", "multires_cnn", "single_cnn"}
    params = {k: v["parameters"] for k, v in summary["results"].items()}
    assert params["single_cnn"] < params["multires_cnn"] < params["hierarchical_lstm"]
    table = (tmp_path / "ablation" / "ablation.md").read_text()
    assert all(f"| {name} |" in table for name in params)
    from RegistrationMisalignmentLib import ablation
    evaluated = []
    real = ablation.evaluate_synthetic
    monkeypatch.setattr(ablation, "evaluate_synthetic", lambda *a, **k: evaluated.append(1) or real(*a, **k))
    messages = []
    again = run_ablation(config, tmp_path / "heldout.nrrd", tmp_path / "ablation", samples=2, base=MODEL,
                         device="cpu", log=messages.append)
    assert not evaluated and again["results"] == summary["results"]  # finished: nothing trained or evaluated again
    assert sum("reusing its held-out evaluation" in m for m in messages) == 3
    trained_lines = [m for m in messages if "already finished" in m]
    assert sorted(m.split(":")[0] for m in trained_lines) == sorted(params)  # each run's lines name its architecture
    assert sum("held-out average F1 (class-stratified points)" in m for m in messages) == 3
    run_ablation(config, tmp_path / "heldout.nrrd", tmp_path / "ablation", samples=3, base=MODEL, device="cpu",
                 log=lambda m: None)
    assert len(evaluated) == 3  # another sample count: evaluated afresh


def test_an_ablation_without_training_data_is_refused_and_leaves_no_folder(small_phantom, tmp_path):
    from RegistrationMisalignmentLib.ablation import run_ablation
    from RegistrationMisalignmentLib.imageio import write_image
    write_image(small_phantom[0], tmp_path / "heldout.nrrd")
    config = TrainConfig(steps=1, batch_size=1, out_size=8, phantom_seeds=[])
    with pytest.raises(InputError, match="no training data"):
        run_ablation(config, tmp_path / "heldout.nrrd", tmp_path / "ablation", samples=1, base=MODEL, device="cpu",
                     log=lambda m: None)
    assert not (tmp_path / "ablation").exists()


def test_fine_tuning_starts_from_the_given_weights(sources, tmp_path):
    from dataclasses import replace
    train(sources, MODEL, replace(_config(2), seed=1), tmp_path / "first", device="cpu", progress=False,
          log=lambda m: None)  # another seed: other initial weights than the runs below
    start = tmp_path / "first" / "weights.safetensors"
    still = replace(_config(1), learning_rate=1e-9)  # one step that barely moves the weights
    messages = []
    train(sources, MODEL, replace(still, init_weights=str(start)), tmp_path / "tuned", device="cpu", progress=False,
          log=messages.append)
    train(sources, MODEL, still, tmp_path / "scratch", device="cpu", progress=False, log=lambda m: None)
    assert any("fine-tuning from" in m for m in messages)
    initial = dict(load_model(start).named_parameters())
    tuned = dict(load_model(tmp_path / "tuned" / "weights.safetensors").named_parameters())
    scratch = dict(load_model(tmp_path / "scratch" / "weights.safetensors").named_parameters())
    assert all(torch.allclose(tuned[k], initial[k], atol=1e-6) for k in initial)
    assert any(not torch.allclose(scratch[k], initial[k], atol=1e-4) for k in initial)


def test_a_fine_tune_is_warned_of_repeated_tiles_only_when_it_would_draw_them(tmp_path, caplog):
    """Tile i is drawn from the seed, tile size and training data alone: the batch size does not matter."""
    from dataclasses import asdict, replace
    from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, released_weights_path
    from RegistrationMisalignmentLib.model import MisalignmentNet
    from RegistrationMisalignmentLib.training import warn_if_same_tiles
    sources_file = tmp_path / "sources.npz"
    sources_file.write_bytes(b"the training CT's sources")
    earlier = TrainConfig(batch_size=16, ct_paths=["/data/a.nii.gz"], source_files=["carry/sources.npz"],
                          source_files_sha256=[hashlib.sha256(b"the training CT's sources").hexdigest()])
    weights = tmp_path / "start.safetensors"
    card_path(weights).write_text(json.dumps({"sha256": export_weights(MisalignmentNet(MODEL), weights),
                                              "training": asdict(earlier)}))
    same = TrainConfig(init_weights=str(weights), ct_paths=[str(tmp_path / "a.nii.gz")],
                       source_files=[str(sources_file)])  # the same files, elsewhere
    readme_example = TrainConfig(init_weights=str(released_weights_path()), ct_paths=["mine1.nii.gz", "mine2.nii.gz"],
                                 learning_rate=5e-4, steps=1000, density_change=0.5)
    cases = [(same, True), (replace(same, batch_size=2, density_change=0.5), True),
             (replace(same, seed=1), False), (replace(same, out_size=16), False),
             (replace(same, ct_paths=["b.nii.gz"]), False), (replace(same, phantom_seeds=[0]), False),
             (replace(same, source_files_sha256=["0" * 64]), False), (readme_example, False)]
    for config, warned in cases:
        caplog.clear()
        with caplog.at_level("WARNING", logger="RegistrationMisalignment"):
            warn_if_same_tiles(with_fingerprints(config))
        assert ("repeats its training tiles" in caplog.text) == warned, config


def test_resuming_with_other_data_starting_weights_or_fewer_steps_is_refused_and_the_same_files_resume(
        sources, tmp_path, monkeypatch):
    """The stored run names the data and starting weights its weights were trained from: a resume cannot change them."""
    from dataclasses import replace
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    started = replace(_config(4), ct_paths=[str(tmp_path / "a.nii.gz")], phantom_seeds=[0])
    train(sources, MODEL, started, run, device="cpu", progress=False, log=lambda m: None, time_limit_s=0.0)
    before = (run / "training_state.pt").read_bytes()
    cases = [(replace(started, ct_paths=[str(tmp_path / "b.nii.gz")]),
              f"--ct {tmp_path / 'a.nii.gz'} \\(asked {tmp_path / 'b.nii.gz'}\\)"),
             (replace(started, source_files=["cache.npz"]), f"--sources none \\(asked {tmp_path / 'cache.npz'}\\)"),
             (replace(started, phantom_seeds=[0, 1]), "--phantoms 1 \\(asked 2\\)"),
             (replace(started, phantom_seeds=[5]), "phantom seeds \\[0\\] \\(asked \\[5\\]\\)"),
             (replace(started, init_weights="w.safetensors", init_weights_sha256="ab" * 32),
              "--init-weights none \\(random weights\\) \\(asked w.safetensors\\)"),
             (replace(started, steps=3), "--steps 4 \\(asked 3: only more may be asked\\)")]
    for asked, message in cases:
        with pytest.raises(InputError, match="holds a run started with " + message):
            train(sources, MODEL, asked, run, device="cpu", progress=False, log=lambda m: None)
    assert (run / "training_state.pt").read_bytes() == before
    same_file_relative = replace(started, ct_paths=["a.nii.gz"], steps=5)  # relative to the folder it ran in
    assert train(sources, MODEL, same_file_relative, run, device="cpu", progress=False, log=lambda m: None)["finished"]


def test_training_files_are_compared_by_their_recorded_contents_else_by_path(tmp_path):
    """A CT (by fingerprint) or sources file (by sha256) moved is the same file; other contents at its path are a
    changed file, at another path another file; a CT not read yet is compared later; without recorded contents, by
    path."""
    from dataclasses import asdict, replace
    from RegistrationMisalignmentLib.training import check_same_run
    a, b = str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")
    started = replace(_config(4), ct_paths=[a], ct_fingerprints=["f1"], source_files=[a + ".npz"],
                      source_files_sha256=["s1"])
    state = {"model_config": json.dumps(MODEL.to_dict()), "train_config": json.dumps(asdict(started))}
    unread = replace(started, ct_paths=[b], ct_fingerprints=[])  # the CT not read yet, or given no fingerprint
    for asked, cts_read in [(replace(started, ct_paths=[b]), True), (replace(started, source_files=[b + ".npz"]), True),
                            (unread, False)]:
        check_same_run(tmp_path, state, MODEL, asked, cts_read)
    changed, other = "the contents \\(sha256\\) of {} changed", f"started with --ct {a} \\(asked {b}\\)"
    for asked, message in [(replace(started, ct_fingerprints=["f2"]), changed.format(f"--ct {a}")),
                           (replace(started, source_files_sha256=["s2"]), changed.format(f"--sources {a}.npz")),
                           (replace(started, ct_paths=[b], ct_fingerprints=["f2"]), other), (unread, other)]:
        with pytest.raises(InputError, match=message):
            check_same_run(tmp_path, state, MODEL, asked, cts_read=True)
    older = {**state, "train_config": json.dumps(dict(asdict(started), ct_fingerprints=[]))}  # recorded none
    with pytest.raises(InputError, match=other):
        check_same_run(tmp_path, older, MODEL, replace(started, ct_paths=[b]), cts_read=False)


def test_a_source_ct_stored_without_its_rescale_intercept_is_refused_with_the_hint(small_phantom, caplog):
    """Training sources get predict's HU check: a CT stored as HU + 1024 is named with 'subtract 1024'."""
    import SimpleITK as sitk
    ct, _ = small_phantom
    shifted = sitk.Cast(ct, sitk.sitkInt32) + 1024
    with caplog.at_level("WARNING", logger="RegistrationMisalignment"), \
            pytest.raises(InputError, match="no air-filled"):
        source_from_image("shifted.nii.gz", shifted)
    assert "shifted.nii.gz: intensities" in caplog.text and "subtract 1024" in caplog.text
    assert caplog.text.rstrip().endswith("pairs made from it would teach the model other intensities")


def test_a_folder_holding_files_but_no_training_state_is_refused_and_left_as_it_is(sources, tmp_path):
    """A finished run whose training_state.pt was deleted: training there would overwrite its weights."""
    run = tmp_path / "finished"
    run.mkdir()
    (run / "weights.safetensors").write_bytes(b"trained weights")
    (run / "history.json").write_text("[]")
    with pytest.raises(InputError, match=re.escape(f"--out {run} holds history.json, weights.safetensors but no "
                                                   "training_state.pt to resume from; training there would overwrite "
                                                   "it: choose a new --out folder")):
        train(sources, MODEL, _config(1), run, device="cpu", progress=False, log=lambda m: None)
    assert sorted(p.name for p in run.iterdir()) == ["history.json", "weights.safetensors"]
    assert (run / "weights.safetensors").read_bytes() == b"trained weights"
    interrupted = tmp_path / "interrupted"  # stopped while saving its first checkpoint: the same run goes on
    interrupted.mkdir()
    for name in ("training_state.pt.tmp", "history.json.tmp", ".weights.safetensors.tmp"):
        (interrupted / name).write_bytes(b"half")
    check_before_loading_sources(interrupted, MODEL, _config(1))
    check_before_loading_sources(tmp_path / "new" / "run", MODEL, _config(1))
