"""Accuracy by true residual (bands, predicted-class shares, errors near the class boundaries), by field family and
as a residual precision, pooled over seeds."""
import json

import numpy as np
import pytest

from RegistrationMisalignmentLib.evaluation import pooled_by_family, pooled_by_residual, scores_by_family
from RegistrationMisalignmentLib.metrics import (REFERENCE_NOISE_MM, RESIDUAL_BAND_EDGES_MM, accuracy_by_residual,
                                                 classification_report, errors_near_boundary_text, f1_text,
                                                 residual_precision)


def test_bands_count_accuracy_and_shares_with_upper_bounds_inclusive_like_the_classes():
    residual = [1.0, 3.0, 3.0, 3.5, 5.9, 6.0, 20.0]
    truth = [0, 0, 0, 1, 1, 1, 2]
    predicted = [0, 1, 0, 1, 2, 2, 2]
    report = accuracy_by_residual(truth, predicted, residual)
    bands = {(b["from_mm"], b["to_mm"]): b for b in report["bands"]}
    assert len(report["bands"]) == len(RESIDUAL_BAND_EDGES_MM) + 1 and bands[(12.0, None)]["n"] == 1
    assert bands[(2.0, 3.0)]["n"] == 2 and bands[(2.0, 3.0)]["accuracy"] == 0.5  # 3.0 mm is still "correct"
    assert bands[(2.0, 3.0)]["predicted"] == {"correct": 0.5, "poor": 0.5, "wrong": 0.0}
    assert bands[(5.0, 6.0)]["n"] == 2 and bands[(5.0, 6.0)]["accuracy"] == 0.0
    assert bands[(7.0, 9.0)]["n"] == 0 and bands[(7.0, 9.0)]["accuracy"] is None
    # errors at 3.0, 5.9 and 6.0 mm: all within 1 mm of a boundary; 5 of the 7 voxels are
    assert report["errors"] == 3 and report["errors_near_boundary"] == 1.0
    assert report["voxels_near_boundary"] == pytest.approx(5 / 7)
    assert errors_near_boundary_text(report) == ("100.0 % of the 3 errors lie within 1 mm of the 3 or 6 mm "
                                                 "class boundary")
    json.dumps(report, allow_nan=False)  # valid JSON: no infinity for the open band


def test_pooling_weights_each_seed_by_its_voxels():
    a = accuracy_by_residual([0, 0, 0], [0, 0, 1], [1.0, 1.5, 1.9])  # 0-2 mm: 2 of 3 right
    b = accuracy_by_residual([0, 2], [0, 2], [0.5, 10.0])  # 0-2 mm: 1 of 1 right
    pooled = pooled_by_residual([a, b])
    first = pooled["bands"][0]
    assert first["n"] == 4 and first["accuracy"] == pytest.approx(3 / 4)
    assert first["predicted"]["poor"] == pytest.approx(1 / 4)
    assert pooled["bands"][1]["n"] == 0 and pooled["bands"][1]["accuracy"] is None
    # b has no errors: it adds nothing to the errors' share, and its voxels weigh in the voxels' share
    assert b["errors_near_boundary"] is None and "no errors" in errors_near_boundary_text(b)
    assert pooled["errors"] == 1 and pooled["errors_near_boundary"] == a["errors_near_boundary"] == 0.0
    near = (3 * a["voxels_near_boundary"] + 2 * b["voxels_near_boundary"]) / 5
    assert pooled["voxels_near_boundary"] == pytest.approx(near)
    assert pooled_by_residual([b, b])["errors_near_boundary"] is None


def test_scores_by_family_split_the_voxels_and_pool_by_summing_confusion_matrices():
    truth = np.array([0, 0, 1, 2, 0, 0])
    predicted = np.array([0, 1, 1, 2, 0, 0])
    family = np.array([0, 0, 1, 1, 3, 3])  # single, single, mixed, mixed, zero, zero; no respiratory voxel
    first = scores_by_family(truth, predicted, family)
    assert list(first) == ["single_frequency", "mixed_frequency", "respiratory", "zero"]
    assert first["single_frequency"]["n"] == 2 and first["single_frequency"]["accuracy"] == 0.5
    assert first["mixed_frequency"]["accuracy"] == 1.0 and first["respiratory"]["n"] == 0
    second = scores_by_family(np.array([0, 0]), np.array([0, 0]), np.array([0, 0]))
    pooled = pooled_by_family([first, second])
    assert pooled["single_frequency"]["n"] == 4 and pooled["single_frequency"]["accuracy"] == 0.75
    assert pooled["zero"]["accuracy"] == 1.0 and pooled["zero"]["per_class"]["poor"]["support"] == 0


def test_residual_precision_matches_a_model_that_is_the_noisy_reference_itself():
    rng = np.random.default_rng(3)
    residual = rng.uniform(0.0, 12.0, 100_000)
    exact = residual_precision(residual, 1.0)
    assert exact["equivalent_noise_mm"] < 1e-6  # perfect accuracy: the residual must be known exactly
    assert [r["sigma_mm"] for r in exact["reference"]] == list(REFERENCE_NOISE_MM)
    accuracies = [r["accuracy"] for r in exact["reference"]]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[0] < 1.0
    # a "model" that classifies the residual with 0.8 mm noise (other noise than the reference's) is placed near 0.8
    noisy = np.searchsorted([3.0, 6.0], residual + 0.8 * rng.standard_normal(len(residual)), side="left")
    truth = np.searchsorted([3.0, 6.0], residual, side="left")
    found = residual_precision(residual, float((noisy == truth).mean()))["equivalent_noise_mm"]
    assert found == pytest.approx(0.8, abs=0.03)


def test_average_f1_leaves_out_classes_that_are_neither_true_nor_predicted():
    perfect_correct_only = classification_report([[300, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert perfect_correct_only["accuracy"] == 1.0 and perfect_correct_only["average_f1"] == 1.0
    assert [f1_text(c) for c in perfect_correct_only["per_class"].values()] == ["100.0 %", "-", "-"]
    false_poor = classification_report([[297, 3, 0], [0, 0, 0], [0, 0, 0]])  # 'poor' predicted, never true: F1 0
    assert false_poor["average_f1"] == pytest.approx((2 * 297 / (2 * 297 + 3) + 0.0) / 2)
    assert [f1_text(c) for c in false_poor["per_class"].values()] == ["99.5 %", "0.0 %", "-"]
    every_class = classification_report([[5, 1, 0], [1, 4, 1], [0, 2, 6]])
    assert every_class["average_f1"] == pytest.approx(np.mean([c["f1"] for c in every_class["per_class"].values()]))
