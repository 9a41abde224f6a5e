"""The registration baseline script: elastix's displacement against the known field of a synthetic pair."""
import sys
from pathlib import Path

import numpy as np
import pytest

from RegistrationMisalignmentLib.inference import MisalignmentPredictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from registration_baseline import score_pair, summary  # noqa: E402


def test_summary_pools_both_maps_and_the_length_error():
    parts = [{"truth": np.array([0, 1, 2]), "network": np.array([0, 2, 2]), "elastix": np.array([0, 1, 2]),
              "error_mm": np.array([0.1, -0.1, 0.3])},
             {"truth": np.array([1]), "network": np.array([1]), "elastix": np.array([0]), "error_mm": np.array([-0.3])}]
    result = summary(parts)
    assert result["lung_voxels"] == 4
    assert result["network"]["accuracy"] == pytest.approx(0.75) and result["elastix"]["accuracy"] == pytest.approx(0.75)
    assert result["network"]["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert result["elastix_length_error_mm"]["mean"] == pytest.approx(0.0)
    assert result["elastix_length_error_mm"]["median_abs"] == pytest.approx(0.2)


def test_elastix_recovers_a_smooth_known_field_on_the_phantom(small_phantom):
    part = score_pair(MisalignmentPredictor.load(device="cpu"), small_phantom[0], "single_frequency", 8.0, 0)
    assert len(part["truth"]) > 10000 and set(np.unique(part["truth"])) >= {0, 1}
    assert abs(float(part["error_mm"].mean())) < 0.2 and float(part["error_mm"].std()) < 0.5
    assert (part["elastix"] == part["truth"]).mean() > 0.9
    assert part["seconds"]["elastix"] > 0 and part["network"].min() >= 0
