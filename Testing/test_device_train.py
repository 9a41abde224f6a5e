"""The GPU training script's choice between synthesis on the device and synthesis in CPU loader workers."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from device_train import choose_loader_workers  # noqa: E402


def test_workers_are_chosen_only_when_they_would_feed_the_device_faster(monkeypatch):
    monkeypatch.delenv("LOADER_WORKERS", raising=False)
    # in-process 0.5 s/step, of which 0.1 s the network; a batch costs 2 s in one CPU process
    assert choose_loader_workers(0.5, 0.1, 2.0, 12) == (12, pytest.approx(2.0 / 12))
    assert choose_loader_workers(0.5, 0.1, 20.0, 12) == (0, 0.5)  # workers too slow: synthesise on the device
    assert choose_loader_workers(0.5, 0.1, 2.0, 0) == (0, 0.5)  # no spare cores


def test_a_forced_worker_count_is_kept_with_its_expected_speed(monkeypatch):
    monkeypatch.setenv("LOADER_WORKERS", "4")
    assert choose_loader_workers(0.5, 0.1, 2.0, 12) == (4, pytest.approx(0.5))
    monkeypatch.setenv("LOADER_WORKERS", "0")
    assert choose_loader_workers(0.5, 0.1, 2.0, 12) == (0, 0.5)
