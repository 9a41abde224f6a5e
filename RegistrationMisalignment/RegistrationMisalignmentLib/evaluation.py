"""Held-out synthetic evaluation: metrics at lung voxels of reproducible synthetic tiles from unseen CTs."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .metrics import classification_report, confusion_matrix, stratified_indices
from .model import MisalignmentNet
from .synthesis import FAMILIES, IGNORE, make_sample

EVALUATION_SEED = 2 * 10 ** 9
POINTS_PER_CLASS = 2000


@torch.no_grad()
def lung_truth_and_prediction(model: MisalignmentNet, sample) -> tuple:
    """True and predicted finest-step classes (numpy) at the labelled lung voxels of one sample."""
    logits = model({lv: x[None] for lv, x in sample.inputs.items()})[1][0]
    target = sample.targets[1]
    keep = (target != IGNORE) & sample.lungs
    return target[keep].cpu().numpy(), logits.argmax(0)[keep].cpu().numpy()


@torch.no_grad()
def evaluate_synthetic(model: MisalignmentNet, source, samples: int = 48, out_size: int = 32, seed: int = 0,
                       device="cpu", progress: bool = False) -> dict:
    """Accuracy, F1 and confusion matrices over lung voxels of `samples` synthetic tiles (all families)."""
    model = model.to(device).eval()
    truths, preds = [], []
    for i in tqdm(range(samples), disable=not progress, desc="evaluating", unit="pair"):
        family = FAMILIES[i % len(FAMILIES)]
        sample = make_sample(source, model.config, out_size, seed=EVALUATION_SEED + seed * 10 ** 6 + i,
                             device=device, family=family)
        truth, pred = lung_truth_and_prediction(model, sample)
        truths.append(truth)
        preds.append(pred)
    truth, pred = np.concatenate(truths), np.concatenate(preds)
    chosen = stratified_indices(truth, POINTS_PER_CLASS, seed)
    return {"source": source.name, "samples": samples, "seed": seed, "out_size": out_size,
            "all_lung_voxels": classification_report(confusion_matrix(truth, pred)),
            "class_stratified_points": classification_report(confusion_matrix(truth[chosen], pred[chosen]))}
