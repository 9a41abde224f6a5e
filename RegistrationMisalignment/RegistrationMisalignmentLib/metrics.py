"""Classification metrics: confusion matrix, precision, recall, F1, accuracy."""
from __future__ import annotations

import numpy as np

from .labels import CLASS_NAMES, CLASS_VALUES


def confusion_matrix(truth, predicted, n_classes: int = 3) -> np.ndarray:
    """Confusion matrix (rows = truth, columns = prediction) of 0-based class indices."""
    truth = np.asarray(truth, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    return np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(cm: np.ndarray) -> dict:
    """Per-class precision, recall and F1, average F1 and accuracy from a 3-class confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    names = [CLASS_NAMES[v] for v in CLASS_VALUES[:len(cm)]]
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 0.0,
        "average_f1": float(f1.mean()),
        "per_class": {n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for n, p, r, f, s in zip(names, precision, recall, f1, cm.sum(1))},
        "confusion_matrix": cm.astype(int).tolist(),
    }


def stratified_indices(truth, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to `per_class` randomly chosen entries of each class (reproducible)."""
    rng = np.random.default_rng(seed)
    truth = np.asarray(truth).ravel()
    chosen = [rng.choice(np.flatnonzero(truth == c), min(per_class, int((truth == c).sum())), replace=False)
              for c in np.unique(truth)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
