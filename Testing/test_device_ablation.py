"""The GPU ablation script: one step count for every architecture, sized to the lease, and the runs packed."""
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from device_ablation import common_steps, pack_runs  # noqa: E402


def test_every_architecture_gets_the_steps_that_fit_them_all_one_after_the_other():
    assert common_steps([0.1, 0.2], 400.0, 5000) == 1100  # 0.85 * 400 / 0.3 = 1133, in whole hundreds
    assert common_steps([0.1, 0.2], 400.0, 800) == 800  # at most the cap
    assert common_steps([1.0, 2.0], 60.0, 800) == 100  # at least 100 (the time limit then stops a slow run)


def test_the_runs_are_packed_in_one_tar_with_no_partial_file_left(tmp_path):
    runs = tmp_path / "runs"
    for name in ("hierarchical_lstm", "multires_cnn"):
        (runs / name).mkdir(parents=True)
        (runs / name / "history.json").write_text("[]")
    (tmp_path / "out").mkdir()
    pack_runs(runs, tmp_path / "out" / "runs.tar")
    with tarfile.open(tmp_path / "out" / "runs.tar") as tar:
        assert sorted(tar.getnames()) == ["runs", "runs/hierarchical_lstm", "runs/hierarchical_lstm/history.json",
                                          "runs/multires_cnn", "runs/multires_cnn/history.json"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["runs.tar"]
