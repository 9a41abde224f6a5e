"""The command line: predict, demo, evaluate-synthetic; bad input exits 2 with one line and writes nothing."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.imageio import write_image

from conftest import engine_environment, image_like, run_in_terminal, save_weights_with_card, warnings_stand_alone


@pytest.fixture(scope="module")
def files(small_pair, tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    write_image(small_pair.fixed, folder / "fixed.nrrd")
    write_image(small_pair.moving, folder / "moving.nii.gz")
    weights = folder / "tiny.safetensors"
    save_weights_with_card(tiny_model, weights)
    return folder


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_predict_writes_labels_probabilities_and_a_json_summary(files, tmp_path, capsys):
    out, probs = tmp_path / "labels.nrrd", tmp_path / "probs.nrrd"
    code = main(["predict", "--fixed", str(files / "fixed.nrrd"), "--moving", str(files / "moving.nii.gz"),
                 "--output", str(out), "--probabilities", str(probs), "--weights", str(files / "tiny.safetensors"),
                 "--device", "cpu", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    labels = sitk.ReadImage(str(out))
    assert labels.GetSize() == sitk.ReadImage(str(files / "fixed.nrrd")).GetSize()
    assert sitk.ReadImage(str(probs)).GetNumberOfComponentsPerPixel() == 3
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=4)
    assert [summary["classes"][n]["voxels"] for n in ("correct", "poor", "wrong")] == counts[1:].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nrrd", "probs.nrrd"]


def _bad_inputs(files, folder):
    """Bad-input cases: (name, extra args replacing defaults, expected message fragment)."""
    fixed = sitk.ReadImage(str(files / "fixed.nrrd"))
    write_image(sitk.Image([20, 20], sitk.sitkInt16), folder / "flat.nrrd")
    nan = sitk.GetArrayFromImage(fixed).astype(np.float32)
    nan[10, 10, 10] = np.nan
    write_image(image_like(nan, fixed), folder / "nan.nrrd")
    far = sitk.Image(fixed)
    far.SetOrigin((5000.0, 0.0, 0.0))
    write_image(far, folder / "far.nrrd")
    (folder / "garbage.nrrd").write_bytes(b"garbage")
    (folder / "corrupt.safetensors").write_bytes(b"\x00" * 64)
    return [
        ({"--fixed": folder / "garbage.nrrd"}, "cannot be read"),
        ({"--moving": folder / "flat.nrrd"}, "3-D"),
        ({"--moving": folder / "far.nrrd"}, "do not overlap"),
        ({"--fixed": folder / "nan.nrrd"}, "NaN"),
        ({"--weights": folder / "absent.safetensors"}, "not found"),
        ({"--weights": folder / "corrupt.safetensors"}, "not a valid weights file"),
        ({"--output": folder / "no_such_dir" / "labels.nrrd"}, "does not exist"),
    ]


def test_bad_input_exits_2_with_one_line_and_leaves_no_output(files, tmp_path, capsys):
    out = tmp_path / "labels.nrrd"
    defaults = {"--fixed": files / "fixed.nrrd", "--moving": files / "moving.nii.gz", "--output": out,
                "--weights": files / "tiny.safetensors"}
    for change, message in _bad_inputs(files, tmp_path):
        args = dict(defaults, **change)
        argv = ["predict", "--device", "cpu"] + [str(x) for kv in args.items() for x in kv]
        assert main(argv) == 2, change
        assert message in _error_line(capsys), change
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_demo_writes_its_files_and_reports_agreement(files, tmp_path, capsys, monkeypatch):
    from RegistrationMisalignmentLib import demo
    from conftest import SMALL
    from RegistrationMisalignmentLib.phantom import make_chest_phantom
    monkeypatch.setattr(demo, "make_chest_phantom", lambda seed: make_chest_phantom(seed, SMALL))
    code = main(["demo", "--out", str(tmp_path), "--weights", str(files / "tiny.safetensors"), "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "wrong" in out
    for name in ("fixed.nrrd", "moving.nrrd", "truth.nrrd", "labels.nrrd", "probabilities.nrrd", "demo.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "truth.nrrd")))
    assert {1, 2, 3} <= set(np.unique(truth).tolist())


def test_every_command_has_help():
    from RegistrationMisalignmentLib.cli import COMMANDS
    assert {"demo", "predict", "batch", "train", "evaluate", "benchmark", "calibrate"} <= set(COMMANDS)
    for command in COMMANDS:
        done = subprocess.run([sys.executable, "-m", "RegistrationMisalignmentLib", command, "--help"],
                              capture_output=True, encoding="utf-8", errors="replace")
        assert done.returncode == 0 and "usage:" in done.stdout, command


@pytest.fixture
def small_benchmark_phantom(monkeypatch):
    """Benchmarks run on the small phantom instead of the full-size demo phantom."""
    from RegistrationMisalignmentLib import benchmark
    from RegistrationMisalignmentLib.phantom import make_chest_phantom
    from conftest import SMALL
    monkeypatch.setattr(benchmark, "make_chest_phantom", lambda seed: make_chest_phantom(seed, SMALL))


def test_benchmark_compares_dense_with_per_patch_with_identical_results(files, capsys, small_benchmark_phantom):
    code = main(["benchmark", "--weights", str(files / "tiny.safetensors"), "--device", "cpu", "--blocks", "16",
                 "--max-memory", "0.2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_probability_difference_dense_vs_per_patch"] <= 1e-4
    seconds = result["seconds"]  # the ratio itself is a measurement (BENCHMARKS.md), not asserted: load varies
    assert result["speedup_dense_over_per_patch"] == pytest.approx(
        seconds["per_patch_estimated_for_the_map"] / seconds["dense_network"])
    assert result["flops_per_output_voxel"] > 0 and result["peak_rss_bytes"] > 0
    assert result["per_patch_blocks_sampled"] == 16
    parts = seconds["checks_and_masks_within_preprocessing"], seconds["resampling_to_1mm_within_preprocessing"]
    assert min(parts) > 0 and sum(parts) == pytest.approx(seconds["preprocessing_checks_masks_resample"])


def test_benchmark_with_amp_compares_the_mixed_precision_map_with_float32(files, capsys, caplog,
                                                                          small_benchmark_phantom):
    code = main(["benchmark", "--weights", str(files / "tiny.safetensors"), "--device", "cpu", "--blocks", "4",
                 "--max-memory", "0.2", "--amp"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "bfloat16 autocast vs float32" in printed and "same class at" in printed
    assert "--blocks 4: fewer blocks than one per-patch batch (16)" in caplog.text


def test_benchmark_measures_predict_memory_in_a_child_and_training_throughput(files, capsys, small_benchmark_phantom):
    model = ["--weights", str(files / "tiny.safetensors"), "--device", "cpu", "--max-memory", "0.05"]
    assert main(["benchmark", "--memory-size", "100,90,80", *model, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image_size"] == [100, 90, 80] and result["voxels"] == 720000
    for run in result["runs"].values():
        assert run["peak_rss_bytes"] > 50 * 2 ** 20 and run["mask_voxels"] > 0 and run["seconds"]["total"] > 0
    assert main(["benchmark", "--training", *model, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["synthetic_pairs_per_second"] > 0 and result["training_samples_per_second"] > 0
    assert result["batch_size"] == 4 and result["out_size"] == 32 and result["torch_threads"] >= 1
    feeding = result["training_samples_per_second_synthesising_in_process"]
    assert set(feeding) == {"without_synthesis_thread", "with_synthesis_thread"} and min(feeding.values()) > 0
    assert main(["benchmark", "--training", "--out-size", "16", *model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["out_size"] == 16
    assert main(["benchmark", "--memory-size", "512,512", *model]) == 2
    assert "three voxel counts" in _error_line(capsys)
    assert main(["benchmark", "--training", "--out-size", "12", *model]) == 2
    assert "positive multiple of 8, got 12" in _error_line(capsys)


def test_train_fine_tunes_calibrated_weights_uncalibrated_and_records_them(files, tmp_path, capsys):
    from RegistrationMisalignmentLib.checkpoint import load_model, sha256_of
    from RegistrationMisalignmentLib.model import MisalignmentNet, ModelConfig
    calibrated = tmp_path / "calibrated.safetensors"
    save_weights_with_card(MisalignmentNet(ModelConfig(features=4, hidden=4, temperature=0.7,
                                                       class_bias=(0.0, 0.3, -0.2))), calibrated)
    train = ["train", "--ct", str(files / "fixed.nrrd"), "--phantoms", "0", "--init-weights", str(calibrated),
             "--steps", "1", "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu"]
    assert main([*train, "--features", "8", "--out", str(tmp_path / "mismatch")]) == 2
    assert "--features 8 differs from the 4 of" in _error_line(capsys)
    assert not (tmp_path / "mismatch" / "weights.safetensors").exists()
    assert main([*train, "--architecture", "hierarchical_lstm", "--synthesis-thread", "on", "--out",
                 str(tmp_path / "run"), "--json"]) == 0
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    assert json.loads(state["train_config"])["synthesis_thread"] is True
    tuned = load_model(tmp_path / "run" / "weights.safetensors")
    assert tuned.config.features == 4 and tuned.config.temperature == 1.0 and not any(tuned.config.class_bias)
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    recorded = json.loads(state["train_config"])
    assert recorded["init_weights_sha256"] == sha256_of(calibrated)
    assert recorded["init_weights"] == str(calibrated.resolve())


def test_evaluate_synthetic_reports_each_seed_and_their_mean(files, capsys):
    common = ["evaluate-synthetic", "--ct", str(files / "fixed.nrrd"), "--samples", "2",
              "--weights", str(files / "tiny.safetensors"), "--device", "cpu", "--json"]
    assert main([*common, "--seed", "0", "--seed", "1"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["seeds"] == [0, 1] and [r["seed"] for r in both["per_seed"]] == [0, 1]
    accuracies = [r["all_lung_voxels"]["accuracy"] for r in both["per_seed"]]
    assert accuracies[0] != accuracies[1]  # other seeds, other pairs
    assert both["mean"]["all_lung_voxels"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert main([*common, "--seed", "1"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["all_lung_voxels"]["accuracy"] == accuracies[1]  # reproducible by seed
    assert alone["seeds"] == [1] and alone["per_seed"][0]["all_lung_voxels"] == alone["all_lung_voxels"]
    assert alone["mean"]["all_lung_voxels"]["accuracy"] == accuracies[1]  # the same keys as for several seeds
    assert alone["weights_sha256"] == both["weights_sha256"]
    voxels = sum(b["n"] for b in alone["by_residual"]["bands"])
    assert voxels == alone["all_lung_voxels"]["n"] and len(both["mean"]["by_residual"]["bands"]) == 9
    assert sum(r["n"] for r in alone["by_family"].values()) == alone["all_lung_voxels"]["n"]
    assert both["mean"]["by_family"]["zero"]["n"] == sum(r["by_family"]["zero"]["n"] for r in both["per_seed"])
    seed = max(both["per_seed"], key=lambda r: r["all_lung_voxels"]["n"])["seed"]
    assert main([*common[:-1], "--seed", str(seed)]) == 0
    text = capsys.readouterr().out
    assert f"seed {seed} accuracy by true residual: 0-2 mm" in text and "the 3 or 6 mm class boundary" in text
    assert f"seed {seed} accuracy by field family: " in text
    assert f"seed {seed} as accurate as the true residual known to Gaussian noise of sigma" in text
    precision = both["mean"]["residual_precision"]
    assert precision["equivalent_noise_mm"] == pytest.approx(
        np.mean([r["residual_precision"]["equivalent_noise_mm"] for r in both["per_seed"]]))


def test_evaluate_synthetic_uncalibrated_ignores_temperature_and_class_bias(files, tmp_path, capsys):
    from RegistrationMisalignmentLib.checkpoint import export_weights, load_model
    model = load_model(files / "tiny.safetensors")
    model.config.temperature, model.config.class_bias = 0.5, (0.0, 3.0, -3.0)
    export_weights(model, tmp_path / "biased.safetensors")
    common = ["evaluate-synthetic", "--ct", str(files / "fixed.nrrd"), "--samples", "2", "--device", "cpu", "--json"]
    results, reported = {}, {}
    for name, extra in (("plain", ["--weights", str(files / "tiny.safetensors")]),
                        ("biased", ["--weights", str(tmp_path / "biased.safetensors")]),
                        ("uncalibrated", ["--weights", str(tmp_path / "biased.safetensors"), "--uncalibrated"])):
        assert main([*common, *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        results[name], reported[name] = result["all_lung_voxels"], (result["temperature"], result["class_bias"])
    assert results["uncalibrated"]["confusion_matrix"] == results["plain"]["confusion_matrix"]
    assert reported["biased"] == (0.5, [0.0, 3.0, -3.0]) and reported["uncalibrated"] == (1.0, [0.0, 0.0, 0.0])
    assert results["biased"]["confusion_matrix"] != results["plain"]["confusion_matrix"]


@pytest.mark.parametrize("temperature_only", [False, True])
def test_release_calibrates_and_writes_a_card_that_matches_the_weights(files, tmp_path, capsys, temperature_only):
    from RegistrationMisalignmentLib.checkpoint import card_path, load_model
    run, weights = tmp_path / "run", tmp_path / "released.safetensors"
    ct, heldout = str(files / "moving.nii.gz"), str(files / "fixed.nrrd")  # two phantom CTs, one for training
    assert main(["train", "--ct", ct, "--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "1",
                 "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu",
                 "--out", str(run), "--json"]) == 0
    only = ["--temperature-only"] if temperature_only else []
    assert main(["release", "--run", str(run), "--weights-out", str(weights), "--heldout-ct", heldout, "--samples",
                 "2", "--calibration-ct", ct, "--calibration-samples", "2", *only, "--json"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["released.card.json", "released.md", "released.safetensors",
                                                          "run"]
    card = json.loads(card_path(weights).read_text())
    config = load_model(weights).config  # also checks the sha256 against the card
    assert config.temperature == card["calibration"]["temperature"] == card["architecture"]["temperature"]
    assert list(config.class_bias) == card["calibration"]["class_bias"] == card["architecture"]["class_bias"]
    assert any(config.class_bias) != temperature_only
    markdown = weights.with_name("released.md").read_text()
    assert f"- Training data: synthetic pairs from {ct}; all deformation families" in markdown  # no phantoms
    assert f"- Training command: `registration-misalignment train --ct {ct} --phantoms 0 " in markdown  # recorded
    assert "## Calibration" in markdown and card["calibration"]["heldout_uncalibrated_command"] in markdown
    assert ("(b = 0)" in markdown) == temperature_only
    assert "Accuracy by true residual" in markdown and len(card["heldout_synthetic"]["by_residual"]["bands"]) == 9
    assert "| field family | voxels | accuracy |" in markdown and "zero" in card["heldout_synthetic"]["by_family"]
    assert "As a residual precision" in markdown and card["heldout_synthetic"]["residual_precision"]["reference"]


def test_train_records_its_command_line_keeps_it_on_resuming_and_release_puts_it_on_the_card(files, tmp_path, capsys):
    """The card names the command that started the run (shell-quoted), then one that trained it on; a resume with the
    same command adds nothing (test_release: --training-command still overrides)."""
    run = tmp_path / "my run"  # quoted in the recorded command
    common = ["train", "--ct", str(files / "moving.nii.gz"), "--phantoms", "0", "--features", "4", "--hidden", "4",
              "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu", "--out", str(run),
              "--time-limit", "1e-6", "--json"]  # a step per call
    started, more = [*common, "--steps", "2"], [*common, "--steps", "3"]
    assert main(started) == 0 and main(started) == 0 and main(more) == 0  # stopped, finished, trained on
    commands = [shlex.join(["registration-misalignment", *args]) for args in (started, more)]
    assert f"--out '{run}'" in commands[0]
    state = torch.load(run / "training_state.pt", weights_only=True)
    assert state["step"] == 3 and json.loads(state["train_config"])["commands"] == commands
    release = ["release", "--run", str(run), "--heldout-ct", str(files / "fixed.nrrd"), "--samples", "1", "--json"]
    assert main([*release, "--weights-out", str(tmp_path / "recorded.safetensors")]) == 0
    card = json.loads((tmp_path / "recorded.card.json").read_text())
    assert card["training_command"] == commands[0] and card["training_resumed_with"] == commands[1:]
    assert (f"- Training command: `{commands[0]}`; resumed with `{commands[1]}`\n"
            in (tmp_path / "recorded.md").read_text())
    capsys.readouterr()


def test_a_release_that_would_mislead_or_overwrite_is_refused_before_any_work(files, tmp_path, capsys):
    run, ct, heldout = tmp_path / "run", str(files / "moving.nii.gz"), str(files / "fixed.nrrd")
    assert main(["train", "--ct", ct, "--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "1",
                 "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu",
                 "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    run_weights = (run / "weights.safetensors").read_bytes()
    out = str(tmp_path / "r.safetensors")
    cases = [(["--run", str(tmp_path / "nothing"), "--weights-out", out, "--heldout-ct", heldout], "not a training run"),
             (["--run", str(run), "--weights-out", out, "--heldout-ct", ct], "is a training CT of this run"),
             (["--run", str(run), "--weights-out", out, "--heldout-ct", heldout, "--calibration-ct", heldout],
              "is the held-out CT"),
             (["--run", str(run), "--weights-out", str(run / "weights.safetensors"), "--heldout-ct", heldout],
              "is the run's own weights"),
             (["--run", str(run), "--weights-out", str(tmp_path / "none" / "r.safetensors"), "--heldout-ct", heldout],
              "does not exist"),
             (["--run", str(run), "--weights-out", out, "--heldout-ct", heldout], "r.md: is a folder")]
    for extra, message in cases:
        if message.startswith("r.md"):
            (tmp_path / "r.md").mkdir()  # the Markdown card could not be published beside the weights
        assert main(["release", "--samples", "1", *extra]) == 2, extra
        assert message in _error_line(capsys), extra
    assert (run / "weights.safetensors").read_bytes() == run_weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md", "run"]
    for extra, message in [(["--out", str(run / "weights.safetensors")], "is the weights being calibrated"),
                           (["--out", str(tmp_path / "none" / "c.safetensors")], "does not exist"),
                           (["--out", str(tmp_path / "c.pt")], "name the file .safetensors")]:
        assert main(["calibrate", "--weights", str(run / "weights.safetensors"), "--ct", ct, *extra]) == 2, extra
        assert message in _error_line(capsys), extra
    assert (run / "weights.safetensors").read_bytes() == run_weights


def test_a_release_of_an_unfinished_uncalibrated_run_says_so(files, tmp_path, capsys, caplog):
    from RegistrationMisalignmentLib.checkpoint import card_path
    run, weights = tmp_path / "run", tmp_path / "r.safetensors"
    ct, heldout = str(files / "moving.nii.gz"), str(files / "fixed.nrrd")
    assert main(["train", "--ct", ct, "--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "3",
                 "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu",
                 "--time-limit", "1e-6", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    assert main(["release", "--run", str(run), "--weights-out", str(weights), "--heldout-ct", heldout, "--samples",
                 "1"]) == 0
    printed = capsys.readouterr()
    assert f"{run} stopped at step 1 of the 3 asked" in caplog.text
    assert printed.out.startswith(f"wrote {weights} (sha256 ") and "uncalibrated: give --calibration-ct" in printed.out
    card = json.loads(card_path(weights).read_text())
    assert (card["training_steps"], card["training_steps_asked"]) == (1, 3)
    assert "Stopped early: 1 of the 3 steps asked." in weights.with_name("r.md").read_text()


def test_an_ablation_refuses_a_training_ct_as_held_out(files, tmp_path, capsys):
    ct = str(files / "moving.nii.gz")
    assert main(["ablation", "--out", str(tmp_path / "ablation"), "--ct", ct, "--heldout-ct", ct, "--steps", "1"]) == 2
    assert "is a training CT of this run" in _error_line(capsys)
    assert not (tmp_path / "ablation").exists()


def test_an_ablation_checks_its_options_as_train_does_before_reading_a_ct_or_making_a_folder(tmp_path, capsys):
    out = tmp_path / "ablation"
    base = ["ablation", "--out", str(out), "--ct", str(tmp_path / "not_read.nii.gz"), "--heldout-ct",
            str(tmp_path / "heldout_not_read.nii.gz"), "--device", "cpu"]
    cases = [(["--steps", "0"], "--steps must be at least 1, got 0"),
             (["--steps", "-3", "--batch-size", "0"], "--steps must be at least 1, got -3"),
             (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
             (["--samples", "0"], "--samples must be at least 1, got 0"),
             (["--phantoms", "-1"], "--phantoms must be at least 0, got -1")]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert _error_line(capsys).endswith(message), extra
    assert main(base[:3] + base[5:] + ["--phantoms", "0"]) == 2  # no --ct
    assert _error_line(capsys).endswith("no training data: give --ct (repeatable) or --phantoms N")
    assert not out.exists()
    (out / "multires_cnn").mkdir(parents=True)
    (out / "multires_cnn" / "weights.safetensors").write_bytes(b"trained weights")
    assert main(base) == 2
    assert f"--out {out / 'multires_cnn'} holds weights.safetensors but no training_state.pt" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["multires_cnn"]


def test_the_class_table_calls_confidence_calibrated_only_for_calibrated_weights():
    from RegistrationMisalignmentLib.cli import _class_table
    summary = {"mask_ml": 10.0, "classes": {"correct": {"ml": 10.0, "fraction": 1.0}}, "mean_confidence": 0.9}
    assert ("(calibrated: the share of voxels whose class is right over many pairs, not this pair's accuracy)"
            in _class_table(dict(summary, calibrated=True)))
    assert "(uncalibrated weights: not the share" in _class_table(dict(summary, calibrated=False))


def test_a_fine_tune_refuses_as_held_out_a_ct_its_starting_weights_trained_on(files, tmp_path, capsys, caplog):
    first_ct, second_ct = str(files / "moving.nii.gz"), str(files / "fixed.nrrd")
    small = ["--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "1", "--batch-size", "1",
             "--out-size", "8", "--validate-every", "1", "--device", "cpu", "--json"]
    assert main(["train", "--ct", first_ct, *small, "--out", str(tmp_path / "first")]) == 0
    assert main(["train", "--ct", second_ct, *small, "--out", str(tmp_path / "second"), "--init-weights",
                 str(tmp_path / "first" / "weights.safetensors")]) == 0
    assert "repeats its training tiles" not in caplog.text  # another CT: other tiles
    assert main(["train", "--ct", first_ct, *small, "--out", str(tmp_path / "again"), "--init-weights",
                 str(tmp_path / "first" / "weights.safetensors"), "--batch-size", "2"]) == 0
    assert "--seed 0 is the seed" in caplog.text and "repeats its training tiles" in caplog.text
    capsys.readouterr()
    assert main(["release", "--run", str(tmp_path / "second"), "--weights-out", str(tmp_path / "r.safetensors"),
                 "--heldout-ct", first_ct, "--samples", "1"]) == 2
    assert "is a training CT of this run or of the weights it started from (moving.nii.gz)" in _error_line(capsys)


def test_a_release_trained_on_cached_sources_names_their_cts_and_refuses_one_as_held_out(files, tmp_path, capsys):
    from RegistrationMisalignmentLib.checkpoint import card_path
    ct, heldout, sources = str(files / "moving.nii.gz"), str(files / "fixed.nrrd"), tmp_path / "sources.npz"
    assert main(["cache-sources", "--ct", ct, "--phantoms", "1", "--out", str(sources)]) == 0
    run, weights = tmp_path / "run", tmp_path / "r.safetensors"
    assert main(["train", "--sources", str(sources), "--phantoms", "0", "--features", "4", "--hidden", "4", "--steps",
                 "1", "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu",
                 "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    assert main(["release", "--run", str(run), "--weights-out", str(weights), "--heldout-ct", ct, "--samples",
                 "1"]) == 2
    assert "is a training CT of this run" in _error_line(capsys)
    assert main(["release", "--run", str(run), "--weights-out", str(weights), "--heldout-ct", heldout, "--samples",
                 "1", "--json"]) == 0
    assert json.loads(card_path(weights).read_text())["training_cts"] == ["moving.nii.gz"]  # not the phantom
    assert (f"synthetic pairs from the sources file {sources} (cache-sources: moving.nii.gz and any phantoms"
            in weights.with_name("r.md").read_text())


def test_counts_below_one_are_refused_with_the_option_named(files, tmp_path, capsys):
    ct = str(files / "fixed.nrrd")
    commands = [
        ["evaluate-synthetic", "--ct", ct, "--samples", "0"],
        ["calibrate", "--ct", ct, "--out", str(tmp_path / "c.safetensors"), "--samples", "0"],
        ["release", "--run", str(tmp_path), "--weights-out", str(tmp_path / "r.safetensors"), "--heldout-ct", ct,
         "--calibration-samples", "-1"],
        ["make-landmark-pair", "--ct", ct, "--out", str(tmp_path / "pair"), "--points", "0"],
    ]
    for argv, option in zip(commands, ["--samples 0", "--samples 0", "--calibration-samples -1", "--points 0"]):
        assert main(argv) == 2, argv
        name, value = option.split()
        assert _error_line(capsys).endswith(f"{name} must be at least 1, got {value}"), argv
    assert main(["evaluate-synthetic", "--ct", ct, "--seed", "0", "--seed", "1000"]) == 2  # the calibration's pairs
    assert _error_line(capsys).endswith("--seed must be below 1000 (larger seeds draw the pairs of the calibration "
                                        "fit), got 1000")


def test_training_options_out_of_range_are_refused_before_any_work(files, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    zeros = sitk.Image([40, 40, 40], sitk.sitkInt16)
    write_image(zeros, tmp_path / "zeros.nrrd")
    base = ["train", "--phantoms", "1", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "run")]
    cases = [(["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
             (["--validate-every", "0"], "--validate-every must be at least 1, got 0"),
             (["--steps", "-1"], "--steps must be at least 1, got -1"),
             (["--learning-rate", "-1"], "--learning-rate must be more than 0, got -1.0"),
             (["--time-limit", "0"], "--time-limit must be more than 0, got 0.0"),
             (["--seed", "-1"], "--seed must be at least 0, got -1"),
             (["--seed", "300"], "--seed must be below 100 (larger seeds draw the pairs of validation, held-out "
                                 "evaluation and calibration), got 300"),
             (["--loader-workers", "-1"], "--loader-workers must be at least 0, got -1"),
             (["--phantoms", "0"], "no training data: give --ct"),
             (["--out", str(tmp_path / "a_file")], "is a file; give a run folder"),
             (["--phantoms", "0", "--ct", str(tmp_path / "zeros.nrrd")], "no air-filled lungs found")]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        assert message in _error_line(capsys), extra
    assert not (tmp_path / "run").exists()
    assert main(["cache-sources", "--phantoms", "0", "--out", str(tmp_path / "s.npz")]) == 2
    assert "nothing to cache" in _error_line(capsys)
    assert main(["benchmark", "--blocks", "0", "--weights", str(files / "tiny.safetensors")]) == 2
    assert "--blocks must be at least 1, got 0" in _error_line(capsys)


def test_train_refuses_a_run_folder_without_its_training_state_before_reading_a_ct(tmp_path, capsys):
    run = tmp_path / "existing"
    run.mkdir()
    (run / "weights.safetensors").write_bytes(b"trained weights")
    assert main(["train", "--ct", str(tmp_path / "not_read.nii.gz"), "--phantoms", "0", "--device", "cpu", "--out",
                 str(run)]) == 2
    assert f"--out {run} holds weights.safetensors but no training_state.pt to resume from" in _error_line(capsys)
    assert [p.name for p in run.iterdir()] == ["weights.safetensors"]


def test_resuming_after_the_sources_file_or_starting_weights_changed_in_place_is_refused(files, tmp_path, capsys):
    """The run records the sha256 of its sources file and starting weights: other contents at the same path are
    refused, in one line, before any work."""
    from RegistrationMisalignmentLib.model import MisalignmentNet, ModelConfig
    start, sources, run = tmp_path / "start.safetensors", tmp_path / "sources.npz", tmp_path / "run"
    save_weights_with_card(MisalignmentNet(ModelConfig(features=4, hidden=4)), start)
    cache = ["cache-sources", "--phantoms", "0", "--out", str(sources)]
    assert main([*cache, "--ct", str(files / "fixed.nrrd")]) == 0
    train = ["train", "--sources", str(sources), "--phantoms", "0", "--init-weights", str(start), "--steps", "2",
             "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu", "--out", str(run),
             "--json"]
    assert main([*train, "--time-limit", "1e-6"]) == 0  # stopped after its first step, to be resumed
    before = (run / "training_state.pt").read_bytes()
    original = sources.read_bytes()
    other = tmp_path / "other.npz"  # another CT's sources, then moved to the same path (cache-sources replaces none)
    assert main(["cache-sources", "--phantoms", "0", "--out", str(other), "--ct", str(files / "moving.nii.gz")]) == 0
    os.replace(other, sources)
    capsys.readouterr()
    assert main(train) == 2
    assert _error_line(capsys) == (f"error: {run}: the contents (sha256) of --sources {sources} changed since the run "
                                   "started; resume it with the files it started with, or train in a new --out folder")
    sources.write_bytes(original)
    save_weights_with_card(MisalignmentNet(ModelConfig(features=4, hidden=4, temperature=0.5)), start)
    assert main(train) == 2
    assert f"the contents (sha256) of --init-weights {start} changed since the run started" in _error_line(capsys)
    assert (run / "training_state.pt").read_bytes() == before


def test_density_change_is_a_share_and_the_card_tells_it_with_the_starting_weights(files, tmp_path, capsys):
    from RegistrationMisalignmentLib.checkpoint import sha256_of
    from RegistrationMisalignmentLib.model import MisalignmentNet, ModelConfig
    start = tmp_path / "start.safetensors"
    save_weights_with_card(MisalignmentNet(ModelConfig(features=4, hidden=4)), start)
    common = ["train", "--ct", str(files / "fixed.nrrd"), "--phantoms", "0", "--init-weights", str(start),
              "--steps", "1", "--batch-size", "1", "--out-size", "8", "--validate-every", "1", "--device", "cpu",
              "--json"]
    assert main([*common, "--out", str(tmp_path / "bad"), "--density-change", "1.5"]) == 2
    assert "--density-change" in _error_line(capsys) and not (tmp_path / "bad").exists()
    assert main([*common, "--out", str(tmp_path / "run"), "--density-change", "0.5"]) == 0
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    assert json.loads(state["train_config"])["density_change"] == 0.5
    weights = tmp_path / "released.safetensors"
    assert main(["release", "--run", str(tmp_path / "run"), "--weights-out", str(weights), "--heldout-ct",
                 str(files / "moving.nii.gz"), "--samples", "1", "--json"]) == 0
    card = weights.with_name("released.md").read_text()
    assert "in 50 % of the pairs one image's lungs have another breathing state's density" in card
    assert f"Fine-tuned from `{start.resolve()}` (sha256 `{sha256_of(start)}`)" in card


def test_train_and_ablation_options_are_described_with_their_defaults():
    import argparse
    from RegistrationMisalignmentLib.cli import build_parser
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in ("train", "ablation"):
        for action in commands[command]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (command, action.dest)
                if action.default not in (None, [], False):
                    assert "default" in action.help, (command, action.dest)
    architecture = next(a for a in commands["train"]._actions if a.dest == "architecture")
    assert "default hierarchical_lstm, the paper's method; the released model is multires_cnn" in architecture.help


def test_threads_bound_torch_and_simpleitk():
    from RegistrationMisalignmentLib.cli_common import set_threads
    from RegistrationMisalignmentLib.devices import default_threads
    before = (torch.get_num_threads(), sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    try:
        assert set_threads(1) == 1
        assert torch.get_num_threads() == 1 and sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
        assert set_threads(0) == default_threads() == sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    finally:
        torch.set_num_threads(before[0])
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before[1])


def test_more_threads_than_usable_cpus_are_refused_with_the_limit_named(files, tmp_path, capsys):
    limit = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for command in (["predict", "--fixed", str(files / "fixed.nrrd"), "--moving", str(files / "moving.nii.gz"),
                     "--output", str(tmp_path / "labels.nrrd")], ["demo", "--out", str(tmp_path / "demo")],
                    ["benchmark", "--memory-size", "8,8,8"]):
        assert main(command + ["--threads", "100000", "--device", "cpu"]) == 2
        assert _error_line(capsys) == (f"error: --threads 100000 is more than the {limit} CPUs this process may run "
                                       f"on; give at most {limit} (0: all physical cores)")
    assert list(tmp_path.iterdir()) == []


def test_options_the_chosen_mode_would_ignore_and_seeds_out_of_range_are_refused_in_one_line(files, tmp_path,
                                                                                             capsys):
    fixed, moving = str(files / "fixed.nrrd"), str(files / "moving.nii.gz")
    evaluate = ["evaluate", "--fixed", fixed, "--fixed-landmarks", str(tmp_path / "f.csv")]
    registered = evaluate + ["--registered-moving", moving, "--residuals", str(tmp_path / "r.csv")]
    elastix = evaluate + ["--moving", moving, "--moving-landmarks", str(tmp_path / "m.csv")]
    for argv, message in [
            (registered + ["--moving", moving], "--moving cannot go with --registered-moving (its residuals are "
                                                "given); leave it out"),
            (registered + ["--setups", "affine", "--moving-landmarks", "m.csv"],
             "--moving-landmarks and --setups cannot go with --registered-moving"),
            (elastix + ["--residuals", "r.csv"], "--residuals cannot go with --moving (elastix registers it and the "
                                                 "moving landmarks give the residuals); leave it out"),
            (evaluate + ["--registered-moving", moving], "--registered-moving needs --residuals"),
            (evaluate + ["--moving", moving], "give --moving-landmarks (or --registered-moving with --residuals)"),
            (["demo", "--out", str(tmp_path / "d"), "--seed", "99999999999999999999"],
             "--seed must be below 4294967296 (a 32-bit seed), got 99999999999999999999"),
            (["benchmark", "--training", "--out-size", "0"],
             "output tile size must be a positive multiple of 8, got 0"),
            (["benchmark", "--out-size", "64"], "--out-size is the training tile's edge: it goes with --training")]:
        assert main(argv + ["--device", "cpu"]) == 2, argv
        assert message in _error_line(capsys), argv
    assert list(tmp_path.iterdir()) == []


CPU_SHORTAGE = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                "to allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_torch_running_out_of_memory_is_one_line_with_what_to_change_and_other_errors_are_not_hidden(
        files, tmp_path, capsys, monkeypatch):
    from RegistrationMisalignmentLib.inference import MisalignmentPredictor
    error = RuntimeError(CPU_SHORTAGE)

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(MisalignmentPredictor, "predict", fail)
    argv = _predict_argv(files, "--fixed", files / "fixed.nrrd", "--output", tmp_path / "labels.nrrd")
    assert main(argv) == 1
    assert _error_line(capsys) == ("error: out of memory (an allocation of 37252.9 GiB failed); lower --max-memory, "
                                   "give a --mask of a smaller region, or crop or downsample the image")
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)")
    assert main(argv) == 1
    assert _error_line(capsys).startswith("error: out of memory (an allocation of 2.00 GiB failed); lower")
    (tmp_path / "pairs.csv").write_text(f"case_id,fixed,moving\np1,{files / 'fixed.nrrd'},{files / 'moving.nii.gz'}\n")
    assert main(["batch", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "qc"), "--weights",
                 str(files / "tiny.safetensors"), "--device", "cpu", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["failures"]["p1"].startswith("out of memory (an allocation of 2.00 GiB")
    error = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)
    assert not (tmp_path / "labels.nrrd").exists()


def _predict_argv(files, *extra):
    return ["predict", "--moving", str(files / "moving.nii.gz"), "--weights", str(files / "tiny.safetensors"),
            "--device", "cpu", *[str(x) for x in extra]]


def test_outputs_never_overwrite_an_input_or_each_other_and_need_a_3d_format(files, tmp_path, capsys):
    fixed = tmp_path / "fixed.nrrd"
    fixed.write_bytes((files / "fixed.nrrd").read_bytes())
    (tmp_path / "link.nrrd").symlink_to(fixed)
    before = fixed.read_bytes()
    for extra, message in [(["--output", fixed], "--output {} is the same file as --fixed".format(fixed)),
                           (["--output", tmp_path / "link.nrrd"], "is the same file as --fixed"),
                           (["--output", tmp_path / "x.nrrd", "--probabilities", tmp_path / "x.nrrd"],
                            "--probabilities {} is the same file as --output".format(tmp_path / "x.nrrd")),
                           (["--output", tmp_path / "labels.png"], "not a file format for a 3-D map; end the name "
                                                                   "with .nrrd, .nii.gz, .nii or .mha"),
                           (["--output", tmp_path / "labels.nrrd", "--probabilities", tmp_path / "p.txt"],
                            "--probabilities"),
                           (["--output", tmp_path / "labels"], "not a file format"),
                           (["--output", tmp_path / "labels.MHA"], "or .mha (lower case)")]:  # ITK would not read it
        assert main(_predict_argv(files, "--fixed", fixed, *extra)) == 2, extra
        assert message in _error_line(capsys), extra
    assert fixed.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.nrrd", "link.nrrd"]


def test_an_empty_output_a_bare_extension_or_a_name_too_long_to_write_is_refused_before_any_work(
        files, tmp_path, capsys, monkeypatch):
    long = "a" * 245 + ".nrrd"  # 250 bytes fit; its temporary file, 10 more, does not
    for extra, message in [(["--output", ""], "--output is empty; give a file name"),
                           (["--output", tmp_path / "l.nrrd", "--probabilities", ""], "--probabilities is empty"),
                           (["--output", tmp_path / ".nrrd"], "the name is only an extension"),
                           (["--output", tmp_path / ".nii.gz"], "the name is only an extension"),
                           (["--output", tmp_path / long],
                            f"--output {tmp_path / long}: file name too long (250 bytes; the temporary file written "
                            "beside it first takes 10 more and the folder allows 255); choose a name of at most 245 "
                            "bytes")]:
        assert main(_predict_argv(files, "--fixed", files / "fixed.nrrd", *extra)) == 2, extra
        assert message in _error_line(capsys), extra
    assert list(tmp_path.iterdir()) == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pairs.csv").write_text(f"case_id,fixed,moving\np1,{files / 'fixed.nrrd'},{files / 'moving.nii.gz'}\n")
    assert main(["batch", "pairs.csv", "--out", ""]) == 2
    assert _error_line(capsys) == "error: --out is empty; give a folder"


def test_the_same_file_as_fixed_and_moving_is_refused(files, tmp_path, capsys):
    (tmp_path / "moving.nii.gz").symlink_to(files / "moving.nii.gz")
    argv = ["predict", "--fixed", str(tmp_path / "moving.nii.gz"), "--moving", str(files / "moving.nii.gz"),
            "--output", str(tmp_path / "labels.nrrd"), "--weights", str(files / "tiny.safetensors")]
    assert main(argv) == 2
    assert "--fixed and --moving are the same file" in _error_line(capsys)
    assert not (tmp_path / "labels.nrrd").exists()


def test_identical_copies_as_fixed_and_moving_are_refused_by_predict_and_evaluate(files, tmp_path, capsys):
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes((files / "moving.nii.gz").read_bytes())
    moving = str(files / "moving.nii.gz")
    assert main(["predict", "--fixed", str(copy), "--moving", moving, "--output", str(tmp_path / "labels.nrrd"),
                 "--weights", str(files / "tiny.safetensors")]) == 2
    assert f"--fixed and --moving are identical files ({copy} and {moving})" in _error_line(capsys)
    evaluate = ["evaluate", "--fixed-landmarks", str(tmp_path / "f.csv"), "--residuals", str(tmp_path / "r.csv"),
                "--out", str(tmp_path / "evaluation")]
    for fixed, message in [(moving, "are the same file"), (str(copy), "are identical files")]:
        assert main(evaluate + ["--fixed", fixed, "--registered-moving", moving]) == 2
        assert f"--fixed and --registered-moving {message}" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.nii.gz"]


SLOW_WRITE = """
import sys, time
import SimpleITK as sitk
from RegistrationMisalignmentLib.cli import main
write = sitk.WriteImage
def write_then_wait(*args):
    write(*args)
    time.sleep(120)
sitk.WriteImage = write_then_wait
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_while_writing_leaves_no_temporary_file_and_keeps_the_earlier_outputs(files, tmp_path):
    """`timeout`, Slurm and `docker stop` send SIGTERM: the same clean-up as Ctrl-C, exit status 143, one line."""
    import signal
    import time
    (tmp_path / "labels.nrrd").write_text("earlier labels")
    (tmp_path / "p.nrrd").write_text("earlier probabilities")
    argv = _predict_argv(files, "--fixed", files / "fixed.nrrd", "--output", tmp_path / "labels.nrrd",
                         "--probabilities", tmp_path / "p.nrrd")
    run = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           encoding="utf-8", env=engine_environment())
    end = time.time() + 240
    while not any(p.name.startswith(".") for p in tmp_path.iterdir()) and run.poll() is None and time.time() < end:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "error: interrupted by SIGTERM; nothing half-written was left behind"
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"labels.nrrd": "earlier labels",
                                                                  "p.nrrd": "earlier probabilities"}


def test_a_memory_budget_must_be_positive(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(_predict_argv(files, "--fixed", files / "fixed.nrrd", "--output", tmp_path / "l.nrrd",
                           "--max-memory", "0"))
    assert stop.value.code == 2 and "must be more than 0 GiB" in capsys.readouterr().err


def test_predict_applies_a_transform_file_and_reports_warnings_in_its_json(files, tmp_path, capsys):
    from RegistrationMisalignmentLib.inference import MisalignmentPredictor
    fixed, moving = sitk.ReadImage(str(files / "fixed.nrrd")), sitk.ReadImage(str(files / "moving.nii.gz"))
    shift = sitk.TranslationTransform(3, (2.0, -1.0, 3.0))
    sitk.WriteTransform(shift, str(tmp_path / "shift.tfm"))
    assert main(_predict_argv(files, "--fixed", files / "fixed.nrrd", "--output", tmp_path / "labels.nrrd",
                              "--transform", tmp_path / "shift.tfm", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []
    expected = MisalignmentPredictor.load(files / "tiny.safetensors", device="cpu").predict(fixed, moving,
                                                                                          transform=shift)
    got = sitk.ReadImage(str(tmp_path / "labels.nrrd"))
    assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected.labels))
    coarse = sitk.Resample(moving, [n // 2 for n in moving.GetSize()], sitk.Transform(), sitk.sitkLinear,
                           moving.GetOrigin(), [2 * s for s in moving.GetSpacing()], moving.GetDirection(), -1024)
    write_image(coarse, tmp_path / "coarse.nrrd")
    assert main(["predict", "--fixed", str(files / "fixed.nrrd"), "--moving", str(tmp_path / "coarse.nrrd"),
                 "--output", str(tmp_path / "coarse_labels.nrrd"), "--weights", str(files / "tiny.safetensors"),
                 "--device", "cpu", "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert len(warnings) == 1 and "another grid" in warnings[0]


def test_on_a_terminal_a_warning_stands_on_its_own_line_above_the_progress_bar(files, tmp_path):
    """The warning that the moving image is resampled comes while a bar is drawn; the bar makes way for it."""
    moving = sitk.ReadImage(str(files / "moving.nii.gz"))
    moving.SetOrigin(tuple(np.asarray(moving.GetOrigin()) + 0.5))
    write_image(moving, tmp_path / "off_grid.nrrd")
    status, terminal = run_in_terminal(["predict", "--fixed", files / "fixed.nrrd", "--moving",
                                        tmp_path / "off_grid.nrrd", "--output", tmp_path / "labels.nrrd",
                                        "--weights", files / "tiny.safetensors", "--device", "cpu"])
    assert status == 0, terminal[-2000:]
    assert "preparing images" in terminal  # the progress bar was drawn
    assert [line for line in warnings_stand_alone(terminal) if "another grid" in line]


def test_a_misused_option_is_one_line_naming_it_and_the_help(capsys):
    for argv, problem in ((["predict", "--fixed", "a", "--moving", "b", "--output", "c.nrrd", "--device", "tpu"],
                           "argument --device: invalid choice: 'tpu'"),
                          (["predict", "--fixed", "a"], "the following arguments are required: --moving, --output"),
                          (["predct"], "invalid choice: 'predct'")):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert problem in err and err.strip().endswith("--help)"), err


def test_no_command_prints_the_help(capsys):
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_version_prints_the_package_version(capsys):
    from RegistrationMisalignmentLib import __version__
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"registration-misalignment {__version__}"


def test_a_resumed_run_knows_its_ct_folder_moved_and_refuses_another_ct_in_its_place(files, tmp_path, capsys):
    """--ct files are compared by their content fingerprint: a DICOM folder renamed resumes, another CT written in
    its place is refused in one line and the run is left as it was; a run that recorded no fingerprints (0.6.0 and
    earlier) is resumed by the CTs' paths."""
    import shutil
    from RegistrationMisalignmentLib.imageio import read_image
    from RegistrationMisalignmentLib.sources import ct_fingerprint
    from test_release import _dicom_folder
    series, run = _dicom_folder(files / "moving.nii.gz", tmp_path / "series", "1.2.826.0.1.3680043.2.1125.9"), \
        tmp_path / "run"
    common = ["--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "3", "--batch-size", "1",
              "--out-size", "8", "--validate-every", "1", "--device", "cpu", "--out", str(run), "--time-limit", "1e-6",
              "--json"]  # a step per call
    assert main(["train", "--ct", str(series), *common]) == 0
    state = torch.load(run / "training_state.pt", weights_only=True)
    assert json.loads(state["train_config"])["ct_fingerprints"] == [ct_fingerprint(read_image(series))]
    moved = tmp_path / "patient 1" / "series"
    moved.parent.mkdir()
    series.rename(moved)
    assert main(["train", "--ct", str(moved), *common]) == 0  # the same CT, elsewhere: resumed
    state = torch.load(run / "training_state.pt", weights_only=True)
    assert state["step"] == 2 and json.loads(state["train_config"])["ct_paths"] == [str(moved)]
    before = (run / "training_state.pt").read_bytes()
    shutil.rmtree(moved)
    _dicom_folder(files / "fixed.nrrd", moved, "1.2.826.0.1.3680043.2.1125.10")  # another CT in its place
    capsys.readouterr()
    assert main(["train", "--ct", str(moved), *common]) == 2
    assert _error_line(capsys) == (f"error: {run}: the contents (sha256) of --ct {moved} changed since the run "
                                   "started; resume it with the files it started with, or train in a new --out folder")
    assert (run / "training_state.pt").read_bytes() == before
    settings = json.loads(state["train_config"])
    del settings["ct_fingerprints"]  # as a run of 0.6.0 recorded it: compared by path, before any CT is read
    torch.save(dict(state, train_config=json.dumps(settings)), run / "training_state.pt")
    elsewhere = tmp_path / "elsewhere"
    moved.rename(elsewhere)
    assert main(["train", "--ct", str(elsewhere), *common]) == 2
    assert f"holds a run started with --ct {moved} (asked {elsewhere})" in _error_line(capsys)


def test_train_reports_a_wrong_option_before_loading_its_sources(files, tmp_path, capsys, monkeypatch):
    """A bad --out-size or a change refused on resuming is reported before the CTs are read (seconds each)."""
    from RegistrationMisalignmentLib import sources
    ct, run = str(files / "moving.nii.gz"), str(tmp_path / "run")
    common = ["train", "--ct", ct, "--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "1",
              "--validate-every", "1", "--device", "cpu", "--out", run, "--json"]
    assert main([*common, "--batch-size", "1", "--out-size", "8"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sources, "training_sources", lambda *args: pytest.fail("the sources were loaded"))
    assert main([*common, "--batch-size", "1", "--out-size", "8"]) == 0  # finished: its recorded result at once
    assert "already finished at step 1" in capsys.readouterr().err
    assert main([*common, "--batch-size", "1", "--out-size", "12"]) == 2
    assert "output tile size must be a positive multiple of 8, got 12" in _error_line(capsys)
    assert main([*common, "--batch-size", "2", "--out-size", "8"]) == 2
    assert "holds a run started with --batch-size 1 (asked 2)" in _error_line(capsys)
