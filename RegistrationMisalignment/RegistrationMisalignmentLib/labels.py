"""Misalignment classes: thresholds, label values, names and colours (the single source of truth)."""
from __future__ import annotations

import numpy as np

NOT_EVALUATED = 0
CORRECT = 1
POOR = 2
WRONG = 3

CORRECT_MAX_MM = 3.0
POOR_MAX_MM = 6.0

CLASS_VALUES = (CORRECT, POOR, WRONG)
CLASS_NAMES = {NOT_EVALUATED: "not evaluated", CORRECT: "correct", POOR: "poor", WRONG: "wrong"}
CLASS_RANGES = {CORRECT: "<= 3 mm", POOR: "3-6 mm", WRONG: "> 6 mm"}
CLASS_COLORS = {CORRECT: (0.0, 0.75, 0.0), POOR: (1.0, 0.85, 0.0), WRONG: (0.9, 0.0, 0.0)}

# Coarse (grouped) classes predicted at the coarse steps of the hierarchy: thresholds in mm, our choice.
COARSE_THRESHOLDS_MM = {4: (POOR_MAX_MM,), 2: (CORRECT_MAX_MM,), 1: (CORRECT_MAX_MM, POOR_MAX_MM)}


def class_index(magnitude_mm, thresholds=(CORRECT_MAX_MM, POOR_MAX_MM)):
    """Return the 0-based class index of a misalignment magnitude in mm (upper bounds inclusive)."""
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.asarray(magnitude_mm), side="left")


def label_value(magnitude_mm):
    """Return the label value (1 correct, 2 poor, 3 wrong) of a misalignment magnitude in mm."""
    return (class_index(magnitude_mm) + CORRECT).astype(np.uint8)


def display_name(value: int) -> str:
    """Return a class's name with its mm range, e.g. 'wrong (> 6 mm)'."""
    name = CLASS_NAMES[value]
    return f"{name} ({CLASS_RANGES[value]})" if value in CLASS_RANGES else name
