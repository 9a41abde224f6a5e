"""The conditions of the robustness check (plain data: the command line lists them without loading torch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Condition:
    """One way to build the moving image from the fixed CT: a change that is not misalignment, or a shift."""

    name: str
    description: str
    change: str = ""  # "noise" (both, HU), "smooth" (sigma mm), "slices" (mm), "density" (ratio) or "" (none)
    amount: float = 0.0
    shift_mm: float = 0.0  # shift of the moving image: the true residual of every voxel
    shift_axis: int = 2  # physical axis of the shift: 0 left-right, 1 anterior-posterior, 2 cranio-caudal


CONDITIONS = (
    Condition("identical", "moving = fixed"),
    Condition("noise_40hu", "independent noise, sigma 40 HU, in both images", "noise", 40.0),
    Condition("smoothed_1mm", "moving smoothed, sigma 1 mm (a softer reconstruction kernel)", "smooth", 1.0),
    Condition("slices_3mm", "moving averaged into slices of about 3 mm (a thick-slice scan)", "slices", 3.0),
    Condition("lungs_density_0.7", "moving lung density x 0.7 (a deeper breath)", "density", 0.7),
    Condition("lungs_density_1.3", "moving lung density x 1.3", "density", 1.3),
    Condition("lungs_density_1.6", "moving lung density x 1.6 (exhale against inhale)", "density", 1.6),
    Condition("lungs_density_2.0", "moving lung density x 2.0 (deep exhale, dependent lung)", "density", 2.0),
    Condition("shift_1.5mm", "moving shifted 1.5 mm cranio-caudally", shift_mm=1.5),
    Condition("shift_4.5mm", "moving shifted 4.5 mm cranio-caudally", shift_mm=4.5),
    Condition("shift_9mm", "moving shifted 9 mm cranio-caudally", shift_mm=9.0),
    Condition("shift_4.5mm_lr", "moving shifted 4.5 mm left-right", shift_mm=4.5, shift_axis=0),
    Condition("shift_4.5mm_ap", "moving shifted 4.5 mm anterior-posterior", shift_mm=4.5, shift_axis=1),
    Condition("shift_4.5mm_density_1.6", "moving shifted 4.5 mm and its lung density x 1.6", "density", 1.6, 4.5),
)
