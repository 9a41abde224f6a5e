"""The map comparison script: labels that differ and the largest probability difference of two output folders."""
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from compare_maps import compare_maps  # noqa: E402


def _write_map(folder: Path, labels: np.ndarray, probabilities: np.ndarray) -> Path:
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(folder / "labels.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(probabilities, isVector=True), str(folder / "probabilities.nrrd"))
    return folder


def test_two_maps_are_compared_label_by_label_and_probability_by_probability(tmp_path):
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 1:4, 1:5] = 2
    probabilities = np.zeros((4, 5, 6, 3), dtype=np.float32)
    probabilities[labels > 0] = (0.2, 0.7, 0.1)
    other_labels, other_probabilities = labels.copy(), probabilities.copy()
    other_labels[2, 3, 4] = 3
    other_probabilities[2, 3, 4] = (0.2, 0.35, 0.45)
    first = _write_map(tmp_path / "a", labels, probabilities)
    second = _write_map(tmp_path / "b", other_labels, other_probabilities)
    assert compare_maps(first, second) == pytest.approx(
        {"evaluated_voxels": 24, "labels_differing": 1, "max_probability_difference": 0.35})
    third = _write_map(tmp_path / "c", labels[:3], probabilities[:3])
    with pytest.raises(SystemExit, match="different grids"):
        compare_maps(first, third)


def test_maps_stored_in_other_orders_of_axes_are_compared_in_lps_order(tmp_path):
    """The same map written as PIR compares equal to its LPS original; a shifted grid is refused."""
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 1:4, 1:5] = 1
    labels[2, 2, 2] = 3
    probabilities = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    first = _write_map(tmp_path / "a", labels, probabilities)
    second = tmp_path / "b"
    second.mkdir()
    for name in ("labels.nrrd", "probabilities.nrrd"):
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(first / name)), "PIR"), str(second / name))
    assert compare_maps(first, second) == {"evaluated_voxels": 24, "labels_differing": 0,
                                           "max_probability_difference": 0.0}
    shifted = tmp_path / "c"
    shifted.mkdir()
    for name in ("labels.nrrd", "probabilities.nrrd"):
        image = sitk.ReadImage(str(first / name))
        image.SetOrigin((5.0, 0.0, 0.0))
        sitk.WriteImage(image, str(shifted / name))
    with pytest.raises(SystemExit, match="different grids"):
        compare_maps(first, shifted)
