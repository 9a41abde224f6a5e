"""Classification metrics: confusion matrix, precision, recall, F1, accuracy; calibration (ECE, reliability)."""
from __future__ import annotations

import numpy as np

from .labels import CLASS_NAMES, CLASS_VALUES, CORRECT_MAX_MM, POOR_MAX_MM, class_index

RESIDUAL_BAND_EDGES_MM = (2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 9.0, 12.0)  # upper bounds inclusive, like the classes
NEAR_BOUNDARY_MM = 1.0
REFERENCE_NOISE_MM = (0.25, 0.5, 0.75, 1.0, 1.5)  # residual precisions the model is compared with


def confusion_matrix(truth, predicted, n_classes: int = 3) -> np.ndarray:
    """Confusion matrix (rows = truth, columns = prediction) of 0-based class indices."""
    truth = np.asarray(truth, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    return np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(cm: np.ndarray) -> dict:
    """Per-class precision, recall and F1, average F1 and accuracy from a 3-class confusion matrix.

    The average F1 is over the classes that occur in the truth or the prediction (scikit-learn's macro average): a
    class that is neither true nor predicted anywhere has no F1 (0 in `per_class`, shown as '-')."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    occurring = (cm.sum(0) + cm.sum(1)) > 0
    names = [CLASS_NAMES[v] for v in CLASS_VALUES[:len(cm)]]
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 0.0,
        "average_f1": float(f1[occurring].mean()) if occurring.any() else 0.0,
        "per_class": {n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                          "predicted": int(q)}
                      for n, p, r, f, s, q in zip(names, precision, recall, f1, cm.sum(1), cm.sum(0))},
        "confusion_matrix": cm.astype(int).tolist(),
    }


def f1_text(entry: dict) -> str:
    """A class's F1 from `classification_report` as a percentage, or '-' for a class neither true nor predicted."""
    return "-" if entry["support"] == 0 and entry.get("predicted") == 0 else f"{100 * entry['f1']:.1f} %"


def stratified_indices(truth, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to `per_class` randomly chosen entries of each class (reproducible)."""
    rng = np.random.default_rng(seed)
    truth = np.asarray(truth).ravel()
    chosen = [rng.choice(np.flatnonzero(truth == c), min(per_class, int((truth == c).sum())), replace=False)
              for c in np.unique(truth)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """Index of the equal-width bin ((i/bins, (i+1)/bins], the first also holding 0) of values in [0, 1]."""
    return np.clip(np.ceil(values * bins).astype(np.int64) - 1, 0, bins - 1)


def _top_label(probabilities, truth) -> tuple:
    """Confidence (largest probability) and whether its class is the true one, per row of (N, C) probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64).ravel()
    return probabilities.max(1), (probabilities.argmax(1) == truth).astype(np.float64)


def expected_calibration_error(probabilities, truth, bins: int = 15) -> float:
    """Top-label ECE: bin-size-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    confidence, hit = _top_label(probabilities, truth)
    if len(hit) == 0:
        return 0.0
    gap = np.bincount(_bin_index(confidence, bins), confidence - hit, minlength=bins)
    return float(np.abs(gap).sum() / len(hit))


def reliability(confidence, hit, bins: int = 15) -> dict:
    """Per equal-width bin of `confidence`: count, mean confidence and observed frequency of `hit`."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    index = _bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins)
    safe = np.maximum(count, 1)
    return {"count": count.tolist(),
            "confidence": (np.bincount(index, confidence, bins) / safe).tolist(),
            "frequency": (np.bincount(index, np.asarray(hit, dtype=np.float64).ravel(), bins) / safe).tolist()}


def calibration_report(probabilities, truth, bins: int = 15) -> dict:
    """Top-label ECE and reliability data: top label, and each class's probability against its frequency."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.int64).ravel()
    names = [CLASS_NAMES[v] for v in CLASS_VALUES[:probabilities.shape[1]]]
    curves = {"top_label": reliability(*_top_label(probabilities, truth), bins)}
    curves.update({n: reliability(probabilities[:, k], truth == k, bins) for k, n in enumerate(names)})
    return {"expected_calibration_error": expected_calibration_error(probabilities, truth, bins), "bins": bins,
            "reliability": curves}


def accuracy_by_residual(truth, predicted, residual_mm) -> dict:
    """Accuracy and predicted-class shares per band of true residual, and the errors' share near a class boundary."""
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    residual_mm = np.asarray(residual_mm, dtype=np.float64).ravel()
    band = np.searchsorted(np.asarray(RESIDUAL_BAND_EDGES_MM), residual_mm, side="left")
    lows, highs = (0.0,) + RESIDUAL_BAND_EDGES_MM, RESIDUAL_BAND_EDGES_MM + (None,)  # None: no upper bound
    names = [CLASS_NAMES[v] for v in CLASS_VALUES]
    bands = []
    for b, (low, high) in enumerate(zip(lows, highs)):
        inside = band == b
        n = int(inside.sum())
        shares = np.bincount(predicted[inside], minlength=len(names)) / max(n, 1)
        bands.append({"from_mm": low, "to_mm": high, "n": n,
                      "accuracy": float((truth[inside] == predicted[inside]).mean()) if n else None,
                      "predicted": {name: float(f) for name, f in zip(names, shares)}})
    wrong = truth != predicted
    near = np.min(np.abs(residual_mm[:, None] - np.array([CORRECT_MAX_MM, POOR_MAX_MM])), axis=1) <= NEAR_BOUNDARY_MM
    return {"bands": bands, "near_boundary_mm": NEAR_BOUNDARY_MM, "errors": int(wrong.sum()),
            "errors_near_boundary": float(near[wrong].mean()) if wrong.any() else None,  # None: no errors to place
            "voxels_near_boundary": float(near.mean()) if len(near) else 0.0}


def errors_near_boundary_text(report: dict) -> str:
    """The errors' share near the 3 or 6 mm class boundary as a phrase, or that there are no errors."""
    if report["errors_near_boundary"] is None:
        return "no errors, so none near the 3 or 6 mm class boundary"
    count = f" {report['errors']}" if "errors" in report else ""  # not in reports made before 0.5.0
    return (f"{100 * report['errors_near_boundary']:.1f} % of the{count} errors lie within "
            f"{report['near_boundary_mm']:g} mm of the 3 or 6 mm class boundary")


def band_name(band: dict) -> str:
    """A residual band's range, e.g. '3-4 mm' or '> 12 mm'."""
    if band["to_mm"] is None:
        return f"> {band['from_mm']:g} mm"
    return f"{band['from_mm']:g}-{band['to_mm']:g} mm"


def residual_precision(residual_mm, accuracy: float, seed: int = 0) -> dict:
    """The model's accuracy expressed as a residual precision: the Gaussian noise (sigma, mm) on the true residual at
    which classifying it is as accurate, and the scores of that reference at `REFERENCE_NOISE_MM`."""
    residual_mm = np.asarray(residual_mm, dtype=np.float64).ravel()
    truth = class_index(residual_mm)
    noise = np.random.default_rng(seed).standard_normal(len(residual_mm))  # one pattern, scaled: monotone in sigma

    def noisy_classes(sigma_mm: float) -> np.ndarray:
        return class_index(residual_mm + sigma_mm * noise)

    low, high = 0.0, 10.0
    for _ in range(30):  # bisection: the reference loses accuracy as the noise grows
        middle = (low + high) / 2
        as_good = len(truth) and (noisy_classes(middle) == truth).mean() > accuracy
        low, high = (middle, high) if as_good else (low, middle)
    reference = []
    for sigma in REFERENCE_NOISE_MM:
        scores = classification_report(confusion_matrix(truth, noisy_classes(sigma)))
        reference.append({"sigma_mm": sigma, "accuracy": scores["accuracy"], "average_f1": scores["average_f1"]})
    return {"equivalent_noise_mm": (low + high) / 2, "reference": reference}
