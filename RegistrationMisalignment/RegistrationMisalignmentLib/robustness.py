"""Robustness check: the map of a CT against itself, changed in ways real pairs differ, with a known residual.

Real registered pairs differ in more than misalignment: independent noise, another reconstruction kernel, and lungs
of another breathing state (denser at exhale) even where the registration is perfect. Each condition builds the
moving image from the fixed CT with one such change, or with a shift (cranio-caudal, or 4.5 mm along the other
axes) that sets the true residual of every voxel, and scores the map at the lung voxels against that residual."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from . import labels as L
from .errors import InputError
from .masks import automatic_lung_mask, torso_mask
from .preprocessing import hu_image
from .pyramid import AIR_HU
from .robustness_conditions import CONDITIONS, Condition
from .synthesis import parenchyma_density_ratio, thick_slices

NOISE_SEED = 0


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A float32 image from a zyx array with the reference's geometry."""
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(reference)
    return image


def condition_pair(ct: sitk.Image, body: np.ndarray, condition: Condition) -> tuple:
    """(fixed, moving) for one condition; `ct` float32 HU, `body` its torso as a zyx bool array."""
    fixed, moving = ct, ct
    if condition.change == "noise":
        rng = np.random.default_rng(NOISE_SEED)
        hu = sitk.GetArrayViewFromImage(ct)
        fixed, moving = (_like(hu + body * rng.normal(0.0, condition.amount, hu.shape), ct) for _ in range(2))
    elif condition.change == "smooth":
        moving = sitk.SmoothingRecursiveGaussian(ct, condition.amount)
    elif condition.change == "slices":
        voxels = max(1, int(round(condition.amount / ct.GetSpacing()[2])))
        moving = _like(thick_slices(torch.from_numpy(sitk.GetArrayFromImage(ct)), voxels).numpy(), ct)
    elif condition.change == "density":
        hu = torch.from_numpy(sitk.GetArrayFromImage(ct))
        moving = _like(parenchyma_density_ratio(hu, condition.amount).numpy(), ct)
    if condition.shift_mm:
        offset = [0.0, 0.0, 0.0]
        offset[condition.shift_axis] = condition.shift_mm
        shift = sitk.TranslationTransform(3, offset)
        moving = sitk.Resample(moving, ct, shift, sitk.sitkBSpline, AIR_HU, sitk.sitkFloat32)
    return fixed, moving


def score_condition(labels: sitk.Image, lungs: np.ndarray, condition: Condition) -> dict:
    """Share of lung voxels in each predicted class and in the true one (the class of the shift)."""
    predicted = sitk.GetArrayViewFromImage(labels)[lungs]
    counts = np.bincount(predicted, minlength=L.WRONG + 1)[L.CORRECT:].astype(np.float64)
    shares = counts / max(counts.sum(), 1.0)
    truth = int(L.label_value(np.float64(condition.shift_mm)))
    return {"name": condition.name, "description": condition.description, "residual_mm": condition.shift_mm,
            "true_class": L.CLASS_NAMES[truth], "accuracy": float(shares[truth - L.CORRECT]),
            "shares": {L.CLASS_NAMES[v]: float(s) for v, s in zip(L.CLASS_VALUES, shares)}}


def evaluate_robustness(predictor, ct: sitk.Image, conditions=CONDITIONS, progress=None) -> dict:
    """Score the map of `ct` against itself under every condition, at the automatic lung mask of the CT."""
    report = progress or (lambda fraction, message: None)
    ct = sitk.Cast(hu_image(ct), sitk.sitkFloat32)
    torso = torso_mask(ct)
    lungs = automatic_lung_mask(ct, torso)
    body, inside = (sitk.GetArrayFromImage(m) > 0 for m in (torso, lungs))
    if not inside.any():
        raise InputError("no lungs found automatically in the CT; the check needs a chest CT with air-filled lungs")
    results = []
    for i, condition in enumerate(conditions):
        report(i / len(conditions), condition.description)
        fixed, moving = condition_pair(ct, body, condition)
        results.append(score_condition(predictor.predict(fixed, moving, mask=lungs).labels, inside, condition))
    report(1.0, "done")
    unchanged = [r["accuracy"] for r in results if r["residual_mm"] == 0.0]
    shifted = [r["accuracy"] for r in results if r["residual_mm"] > 0.0]
    return {"lung_voxels": int(inside.sum()), "conditions": results,
            "mean_accuracy_without_misalignment": float(np.mean(unchanged)) if unchanged else None,
            "mean_accuracy_shifted": float(np.mean(shifted)) if shifted else None}
