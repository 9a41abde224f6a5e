"""The GPU training script's ways of feeding the device: which it tries, and the expected speed of CPU workers."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from device_train import cpu_workers_step_seconds, feeding_options  # noqa: E402


def test_cpu_workers_are_as_fast_as_the_slower_of_the_network_and_their_synthesis():
    # in-process 0.5 s/step, of which 0.4 s synthesis; a batch costs 2 s in one CPU process
    assert cpu_workers_step_seconds(0.5, 0.4, 2.0, 4) == pytest.approx(0.5)  # the workers are the bottleneck
    assert cpu_workers_step_seconds(0.5, 0.4, 2.0, 40) == pytest.approx(0.1)  # the network is
    assert cpu_workers_step_seconds(0.5, 0.6, 2.0, 40) == pytest.approx(0.05)  # never below a tenth of the step


def test_a_gpu_tries_in_process_gpu_and_cpu_workers_and_a_cpu_only_in_process(monkeypatch):
    monkeypatch.delenv("LOADER_WORKERS", raising=False)
    assert feeding_options(torch.device("cuda"), 16) == [(0, "cpu"), (8, "cuda"), (12, "cpu")]
    assert feeding_options(torch.device("cuda"), 4) == [(0, "cpu")]
    assert feeding_options(torch.device("cpu"), 16) == [(0, "cpu")]


def test_the_environment_forces_one_way(monkeypatch):
    monkeypatch.setenv("LOADER_WORKERS", "6")
    monkeypatch.setenv("LOADER_DEVICE", "cuda")
    assert feeding_options(torch.device("cuda"), 16) == [(6, "cuda")]
    monkeypatch.delenv("LOADER_DEVICE")
    assert feeding_options(torch.device("cuda"), 16) == [(6, "cpu")]
