"""The GPU training script's ways of feeding the device: which it tries, and the expected speed of CPU workers."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import device_train  # noqa: E402
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


def test_the_probe_times_steps_only_after_the_batches_the_workers_queued_at_start(monkeypatch, tmp_path):
    runs = []

    def fake_train(sources, model_config, config, folder, device, progress):
        runs.append(config)
        seconds = {config.validate_every: 100.0, config.steps: 110.0}  # history at both validations
        return {"history": [{"step": s, "seconds": t} for s, t in sorted(seconds.items())]}

    monkeypatch.setattr(device_train, "train", fake_train)
    monkeypatch.setattr(device_train.shutil, "rmtree", lambda folder: None)
    base = dict(batch_size=16, out_size=32, learning_rate=2e-3, density_change=0.0)
    for workers, untimed in ((0, 20), (8, 20 + 8 * device_train.LOADER_PREFETCH)):
        seconds = device_train.probe_step_seconds([], None, base, (workers, "cuda"), "cuda", tmp_path)
        assert runs[-1].validate_every == untimed and runs[-1].steps == untimed + 20
        assert seconds == pytest.approx(10.0 / 20)


def test_a_missing_sources_file_is_one_line_naming_where_it_is_looked_for(monkeypatch, tmp_path):
    monkeypatch.setenv("SOURCES", str(tmp_path / "nowhere.npz"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    with pytest.raises(SystemExit, match=r"nowhere.npz: no such sources file; run from the repository root .* "
                                         r"or set SOURCES=PATH"):
        device_train.main()
    assert not (tmp_path / "out").exists()
