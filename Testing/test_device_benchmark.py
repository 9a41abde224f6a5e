"""The GPU benchmark script's fresh-process parts: `predict` run as one command would run it, or with the network
beside the lung mask and after it in turn; timings read back."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import device_benchmark  # noqa: E402


def test_fresh_predictions_run_predict_in_a_child_process_each_and_report_its_timings():
    rows = device_benchmark.fresh_predictions(None, "cpu", 2)  # the demo phantom
    assert len(rows) == 2
    for row in rows:
        seconds = row["seconds"]
        assert 0 < seconds["network"] < seconds["total"] < row["process_wall_seconds"]
        assert row["peak_rss_bytes"] > 0 and row["mask_voxels"] > 0


def test_synthesis_is_timed_for_each_batch_size(tiny_model):
    from RegistrationMisalignmentLib.inference import MisalignmentPredictor
    rates = device_benchmark.synthesis_by_batch(MisalignmentPredictor(tiny_model, "cpu"), batches=(1, 2), count=2)
    assert set(rates) == {"batch_1", "batch_2"} and all(rate > 0 for rate in rates.values())


def test_fresh_processes_take_turns_with_the_network_beside_the_lung_mask_and_after_it():
    rows = device_benchmark.beside_or_after_masks(None, "cpu", 1)  # the demo phantom
    [beside], [after] = rows["beside"], rows["after"]
    assert beside["network_beside_masks"] > 0 and beside["total"] > 0
    assert after["network_beside_masks"] is None and after["network"] > 0
