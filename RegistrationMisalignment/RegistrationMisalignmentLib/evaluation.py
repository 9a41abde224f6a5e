"""Held-out synthetic evaluation: metrics and calibration at lung voxels of reproducible synthetic tiles."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from .metrics import (accuracy_by_residual, calibration_report, classification_report, confusion_matrix,
                      residual_precision, stratified_indices)
from .model import MisalignmentNet
from .synthesis import FAMILIES, IGNORE, make_sample

EVALUATION_SEED = 2 * 10 ** 9
POINTS_PER_CLASS = 2000


@torch.no_grad()
def lung_truth_and_logits(model: MisalignmentNet, sample) -> tuple:
    """True classes (N,), finest-step logits (N, 3) and true residuals in mm (N,), numpy, at labelled lung voxels."""
    logits = model({lv: x[None] for lv, x in sample.inputs.items()})[1][0]
    target = sample.targets[1]
    keep = (target != IGNORE) & sample.lungs
    return (target[keep].cpu().numpy(), logits[:, keep].T.float().cpu().numpy(),
            sample.residual_mm[keep].float().cpu().numpy())


def lung_truth_and_prediction(model: MisalignmentNet, sample) -> tuple:
    """True and predicted finest-step classes (numpy) at the labelled lung voxels of one sample."""
    truth, logits, _ = lung_truth_and_logits(model, sample)
    return truth, logits.argmax(1)


class LungVoxels(NamedTuple):
    """Per labelled lung voxel of synthetic tiles: true class, finest-step logits, true residual (mm), field family."""

    truth: np.ndarray
    logits: np.ndarray
    residual_mm: np.ndarray
    family: np.ndarray  # index into FAMILIES


@torch.no_grad()
def synthetic_lung_logits(model: MisalignmentNet, source, samples: int, out_size: int, first_seed: int, device="cpu",
                          progress: bool = False) -> LungVoxels:
    """The labelled lung voxels of `samples` synthetic tiles (families in turn, seeds from `first_seed`)."""
    model = model.to(device).eval()
    parts = []
    # disable=None: no bar when stderr is not a terminal
    for i in tqdm(range(samples), disable=not progress or None, desc="synthetic pairs", unit="pair"):
        family = i % len(FAMILIES)
        sample = make_sample(source, model.config, out_size, seed=first_seed + i, device=device,
                             family=FAMILIES[family])
        truth, logit, residual = lung_truth_and_logits(model, sample)
        parts.append((truth, logit, residual, np.full(len(truth), family, dtype=np.int64)))
    return LungVoxels(*(np.concatenate(column) for column in zip(*parts)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities (float64) of (N, C) logits."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float64)), 1).numpy()


def score(truth: np.ndarray, logits: np.ndarray) -> dict:
    """Accuracy, F1 and confusion matrix of the argmax, and calibration (ECE, reliability) of the softmax."""
    return {**classification_report(confusion_matrix(truth, logits.argmax(1))),
            **calibration_report(softmax(logits), truth)}


def heldout_scores(truth: np.ndarray, logits: np.ndarray, seed: int = 0) -> dict:
    """Scores over all lung voxels and over class-stratified points (chosen with `seed`)."""
    chosen = stratified_indices(truth, POINTS_PER_CLASS, seed)
    return {"all_lung_voxels": score(truth, logits), "class_stratified_points": score(truth[chosen], logits[chosen])}


def evaluate_synthetic(model: MisalignmentNet, source, samples: int = 48, out_size: int = 32, seed: int = 0,
                       device="cpu", progress: bool = False) -> dict:
    """Accuracy, F1, confusion matrices and ECE over lung voxels of `samples` synthetic tiles (all families)."""
    voxels = synthetic_lung_logits(model, source, samples, out_size, EVALUATION_SEED + seed * 10 ** 6, device,
                                   progress)
    predicted = voxels.logits.argmax(1)
    scores = heldout_scores(voxels.truth, voxels.logits, seed)
    return {"source": source.name, "samples": samples, "seed": seed, "out_size": out_size,
            "temperature": model.config.temperature, "class_bias": list(model.config.class_bias), **scores,
            "by_residual": accuracy_by_residual(voxels.truth, predicted, voxels.residual_mm),
            "by_family": scores_by_family(voxels.truth, predicted, voxels.family),
            "residual_precision": residual_precision(voxels.residual_mm, scores["all_lung_voxels"]["accuracy"], seed)}


def scores_by_family(truth: np.ndarray, predicted: np.ndarray, family: np.ndarray) -> dict:
    """Accuracy, average F1 and confusion matrix at the lung voxels of each deformation-field family."""
    return {name: classification_report(confusion_matrix(truth[family == i], predicted[family == i]))
            for i, name in enumerate(FAMILIES)}


def pooled_by_family(reports: list) -> dict:
    """`scores_by_family` reports of several seeds pooled (confusion matrices summed)."""
    return {name: classification_report(sum(np.asarray(r[name]["confusion_matrix"]) for r in reports))
            for name in reports[0]}


def mean_over_seeds(results: list) -> dict:
    """Mean accuracy, average F1 and ECE over `evaluate_synthetic` results of several seeds, per point set."""
    metrics = ("accuracy", "average_f1", "expected_calibration_error")
    mean = {key: {m: float(np.mean([r[key][m] for r in results])) for m in metrics}
            for key in ("all_lung_voxels", "class_stratified_points")}
    return {**mean, "by_residual": pooled_by_residual([r["by_residual"] for r in results]),
            "by_family": pooled_by_family([r["by_family"] for r in results]),
            "residual_precision": mean_residual_precision([r["residual_precision"] for r in results])}


def mean_residual_precision(reports: list) -> dict:
    """`residual_precision` reports of several seeds averaged (the equivalent noise and each reference score)."""
    reference = [{"sigma_mm": parts[0]["sigma_mm"],
                  **{k: float(np.mean([p[k] for p in parts])) for k in ("accuracy", "average_f1")}}
                 for parts in zip(*(r["reference"] for r in reports))]
    return {"equivalent_noise_mm": float(np.mean([r["equivalent_noise_mm"] for r in reports])), "reference": reference}


def pooled_by_residual(reports: list) -> dict:
    """`accuracy_by_residual` reports of several seeds pooled: band figures weighted by voxels, shares by errors."""
    bands = []
    for parts in zip(*(r["bands"] for r in reports)):
        n = sum(p["n"] for p in parts)
        weight = [p["n"] / n if n else 0.0 for p in parts]
        bands.append({"from_mm": parts[0]["from_mm"], "to_mm": parts[0]["to_mm"], "n": n,
                      "accuracy": sum(w * p["accuracy"] for w, p in zip(weight, parts) if p["n"]) if n else None,
                      "predicted": {c: sum(w * p["predicted"][c] for w, p in zip(weight, parts))
                                    for c in parts[0]["predicted"]}})
    errors = sum(r["errors"] for r in reports)
    near_errors = sum(r["errors"] * r["errors_near_boundary"] for r in reports if r["errors"])
    voxels = [sum(b["n"] for b in r["bands"]) for r in reports]
    return {"bands": bands, "near_boundary_mm": reports[0]["near_boundary_mm"], "errors": errors,
            "errors_near_boundary": near_errors / errors if errors else None,
            "voxels_near_boundary": float(np.average([r["voxels_near_boundary"] for r in reports], weights=voxels))
            if sum(voxels) else 0.0}
