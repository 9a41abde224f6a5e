"""Calibration: ECE with known answers, the temperature and class-bias fits, calibrated weights written and loaded."""
import copy
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationMisalignmentLib.calibration import (calibrate, calibrate_weights, fit_scale_and_bias,
                                                     fit_temperature, golden_section_minimum)
from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, load_model, weights_metadata
from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.evaluation import evaluate_synthetic
from RegistrationMisalignmentLib.metrics import calibration_report, expected_calibration_error, reliability
from RegistrationMisalignmentLib.sources import source_from_image


@pytest.fixture(scope="module")
def source(small_phantom):
    ct, lungs = small_phantom
    return source_from_image("phantom-small", ct, lungs)


def test_ece_is_zero_when_confidence_equals_accuracy_and_one_when_always_confidently_wrong():
    one_hot = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(one_hot, [0, 1, 2, 1]) == 0.0
    assert expected_calibration_error(one_hot, [1, 2, 0, 0]) == pytest.approx(1.0)
    sixty = np.tile([0.6, 0.3, 0.1], (10, 1))
    assert expected_calibration_error(sixty, [0] * 6 + [1] * 4) == pytest.approx(0.0, abs=1e-12)


def test_ece_weights_each_bin_by_its_share_of_points():
    probabilities = np.array([[0.9, 0.05, 0.05]] * 5 + [[0.5, 0.3, 0.2]] * 5)
    truth = [0] * 5 + [1] * 5  # bin of 0.9: accuracy 1 (gap 0.1); bin of 0.5: accuracy 0 (gap 0.5)
    assert expected_calibration_error(probabilities, truth) == pytest.approx(0.5 * 0.1 + 0.5 * 0.5)
    assert expected_calibration_error(np.zeros((0, 3)), []) == 0.0


def test_reliability_bins_are_right_closed_and_report_per_class_curves():
    curve = reliability([0.0, 0.2, 0.21, 1.0], [1, 0, 1, 1], bins=5)
    assert curve["count"] == [2, 1, 0, 0, 1]
    assert curve["confidence"][0] == pytest.approx(0.1) and curve["frequency"][0] == pytest.approx(0.5)
    report = calibration_report(np.eye(3)[[0, 1, 2]], [0, 1, 1], bins=4)
    assert set(report["reliability"]) == {"top_label", "correct", "poor", "wrong"}
    assert report["reliability"]["wrong"]["count"] == [2, 0, 0, 1]
    assert report["reliability"]["wrong"]["frequency"][3] == 0.0
    assert report["expected_calibration_error"] == pytest.approx(1 / 3)


def test_golden_section_finds_the_minimum_and_the_fit_recovers_a_known_temperature():
    assert golden_section_minimum(lambda x: (x - 1.3) ** 2, -3.0, 3.0) == pytest.approx(1.3, abs=1e-4)
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, (100000, 3))
    probabilities = torch.softmax(torch.from_numpy(logits / 2.0), 1).numpy()
    truth = (probabilities.cumsum(1) < rng.random((len(logits), 1))).sum(1)
    assert fit_temperature(logits, truth) == pytest.approx(2.0, rel=0.05)


def test_joint_fit_recovers_a_known_scale_and_class_bias():
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, (100000, 3))
    probabilities = torch.softmax(torch.from_numpy(0.5 * logits + [0.0, 0.7, -0.4]), 1).numpy()
    truth = (probabilities.cumsum(1) < rng.random((len(logits), 1))).sum(1)
    scale, bias = fit_scale_and_bias(logits, truth)
    assert scale == pytest.approx(0.5, rel=0.05)
    assert bias[0] == 0.0 and bias[1:] == pytest.approx((0.7, -0.4), abs=0.05)


def test_class_bias_fit_lowers_the_nll_and_the_model_reproduces_it(tiny_model, source):
    model = copy.deepcopy(tiny_model)
    fit = calibrate(model, source, samples=4, out_size=8)
    assert fit["method"] == "temperature_and_class_bias" and fit["nll_after"] < fit["nll_before"]
    assert model.config.temperature == fit["temperature"] and model.config.class_bias == tuple(fit["class_bias"])
    assert any(fit["class_bias"]) and fit["class_bias"][0] == 0.0
    refit = calibrate(copy.deepcopy(model), source, samples=4, out_size=8)  # the model now gives the fitted logits
    assert refit["nll_before"] == pytest.approx(fit["nll_after"], rel=1e-4)
    assert refit["accuracy_before"] == pytest.approx(fit["accuracy"])


def test_a_fit_on_few_pairs_warns_and_one_on_enough_does_not(tiny_model, source, caplog, monkeypatch):
    from RegistrationMisalignmentLib import calibration
    with caplog.at_level("WARNING", logger="RegistrationMisalignment"):
        calibrate(copy.deepcopy(tiny_model), source, samples=4, out_size=8)
    assert "calibrating on only 4 synthetic pairs" in caplog.text and "48 (the default) or more" in caplog.text
    caplog.clear()
    monkeypatch.setattr(calibration, "FEW_SAMPLES", 4)
    with caplog.at_level("WARNING", logger="RegistrationMisalignment"):
        calibrate(copy.deepcopy(tiny_model), source, samples=4, out_size=8)
    assert "synthetic pairs" not in caplog.text


def test_a_fit_at_the_limit_of_its_range_warns_and_one_inside_does_not(tiny_model, source, caplog, monkeypatch):
    from RegistrationMisalignmentLib import calibration
    for scale, warned in ((np.exp(-3.0), True), (np.exp(3.0), True), (0.7, False)):
        monkeypatch.setattr(calibration, "fit_scale_and_bias", lambda logits, truth: (scale, (0.0, 0.5, -0.5)))
        caplog.clear()
        with caplog.at_level("WARNING", logger="RegistrationMisalignment"):
            calibrate(copy.deepcopy(tiny_model), source, samples=4, out_size=8)
        assert ("reached the limit of its range" in caplog.text) == warned, scale


def test_fitted_temperature_lowers_the_nll_and_keeps_the_classes(tiny_model, source):
    model = copy.deepcopy(tiny_model)
    fit = calibrate(model, source, samples=4, out_size=8, temperature_only=True)
    assert fit["nll_after"] <= fit["nll_before"] and fit["voxels"] > 0
    assert model.config.temperature == fit["temperature"] != 1.0 and not any(model.config.class_bias)
    assert fit["accuracy"] == fit["accuracy_before"]
    before = evaluate_synthetic(tiny_model, source, samples=2, out_size=8)
    after = evaluate_synthetic(model, source, samples=2, out_size=8)
    for key in ("all_lung_voxels", "class_stratified_points"):
        assert after[key]["confusion_matrix"] == before[key]["confusion_matrix"]
        assert 0.0 <= after[key]["expected_calibration_error"] <= 1.0
    assert after["temperature"] == fit["temperature"]


def test_calibrated_weights_keep_the_tensors_and_store_the_temperature(tiny_model, source, tmp_path):
    weights = tmp_path / "tiny.safetensors"
    export_weights(tiny_model, weights, extra={"steps": 7})
    fit = calibrate_weights(weights, source, tmp_path / "calibrated.safetensors", samples=1)
    loaded = load_model(tmp_path / "calibrated.safetensors")
    assert loaded.config.temperature == pytest.approx(fit["temperature"])
    assert loaded.config.class_bias == pytest.approx(fit["class_bias"])
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in loaded.state_dict().items())
    metadata = weights_metadata(tmp_path / "calibrated.safetensors")
    assert metadata["steps"] == 7 and metadata["calibration"]["temperature"] == fit["temperature"]


def test_calibrate_command_writes_weights_and_refuses_to_orphan_a_model_card(tiny_model, small_phantom, tmp_path,
                                                                              capsys):
    weights, ct = tmp_path / "tiny.safetensors", tmp_path / "ct.nii.gz"
    export_weights(tiny_model, weights)
    sitk.WriteImage(small_phantom[0], str(ct))
    out = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--weights", str(weights), "--ct", str(ct), "--samples", "1", "--out", str(out),
                 "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert load_model(out).config.temperature == pytest.approx(fit["temperature"])
    card_path(out).write_text(json.dumps({"sha256": "0" * 64}))
    assert main(["calibrate", "--weights", str(weights), "--ct", str(ct), "--out", str(out)]) == 2
    assert "model card" in capsys.readouterr().err
