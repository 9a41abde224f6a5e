"""One training run sized to a short GPU lease: probe the speed, train as many steps as fit, save run and figures.

Needs only PyTorch, numpy, safetensors and tqdm (no SimpleITK): the sources come from `cache-sources`.
    registration-misalignment cache-sources --ct ../shared/data/thorax_philips_00.nii.gz --phantoms 2 \\
        --out carry/train_sources.npz                       # here, once (about 48 MB)
    OUT=/tmp/out BUDGET_S=420 python3 scripts/device_train.py   # there (device tool: carry=["carry"])
Then, back here: registration-misalignment release --run OUT/run ... (see README, "Training your own model").
"""
import json
import os
import shutil
import time
from pathlib import Path

from device_env import setting

import torch  # noqa: E402

from RegistrationMisalignmentLib.devices import machine_description, resolve_device  # noqa: E402
from RegistrationMisalignmentLib.model import ModelConfig  # noqa: E402
from RegistrationMisalignmentLib.source_cache import load_cached_sources  # noqa: E402
from RegistrationMisalignmentLib.synthesis import make_sample  # noqa: E402
from RegistrationMisalignmentLib.training import TrainConfig, train  # noqa: E402

PROBE_STEPS = 20


def synthesis_rate(sources, config: ModelConfig, out_size: int, device, count: int = 16) -> float:
    """Synthetic training pairs generated per second on `device` (the sources moved there first, as training does)."""
    sources = [source.to(device) for source in sources]
    make_sample(sources[0], config, out_size, seed=0, device=device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(count):
        make_sample(sources[i % len(sources)], config, out_size, seed=i + 1, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def choose_loader_workers(in_process_step_s: float, compute_step_s: float, batch_cpu_s: float,
                          available: int) -> tuple:
    """(workers, expected s/step): synthesise on the device in-process, or in CPU workers if that is faster."""
    forced = os.environ.get("LOADER_WORKERS")
    candidates = [int(forced)] if forced is not None else [0, available] if available else [0]
    expected = {w: in_process_step_s if w == 0 else max(compute_step_s, batch_cpu_s / w) for w in candidates}
    workers = min(expected, key=expected.get)
    return workers, expected[workers]


def main() -> None:
    """Probe, train, and write run folder plus device_training.json under $OUT."""
    out = Path(os.environ.get("OUT", "runs/device"))
    budget_s = setting("BUDGET_S", 420.0)
    sources = load_cached_sources(os.environ.get("SOURCES", "carry/train_sources.npz"))
    device = resolve_device(os.environ.get("DEVICE", "auto"))
    model_config = ModelConfig(architecture=setting("ARCH", "multires_cnn"), features=setting("FEATURES", 24),
                               hidden=setting("HIDDEN", 24))
    base = dict(batch_size=setting("BATCH", 16), out_size=setting("OUT_SIZE", 32), loader_workers=0,
                learning_rate=setting("LR", 2e-3), density_change=setting("DENSITY_CHANGE", 0.0),
                source_files=["carry/train_sources.npz"], phantom_seeds=[])
    started = time.perf_counter()
    pairs_per_s = synthesis_rate(sources, model_config, base["out_size"], device)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pairs_per_s_cpu_process = synthesis_rate(sources, model_config, base["out_size"], torch.device("cpu"), 4)
    torch.set_num_threads(threads)
    probe_dir = out / "probe"
    probe = train(sources, model_config, TrainConfig(steps=PROBE_STEPS, validate_every=PROBE_STEPS,
                                                     validation_samples=4, **base), probe_dir, device, progress=False)
    in_process_step_s = probe["history"][-1]["seconds"] / PROBE_STEPS
    shutil.rmtree(probe_dir)
    compute_step_s = max(in_process_step_s - base["batch_size"] / pairs_per_s, 0.1 * in_process_step_s)
    available = max(0, (os.cpu_count() or 2) - 4) if device.type == "cuda" else 0
    workers, step_s = choose_loader_workers(in_process_step_s, compute_step_s, base["batch_size"] /
                                            pairs_per_s_cpu_process, available)
    base["loader_workers"] = workers
    left = budget_s - (time.perf_counter() - started)
    steps = max(PROBE_STEPS, int(0.8 * left / step_s) // 100 * 100)
    print(f"{device}: {pairs_per_s:.1f} synthetic pairs/s there, {pairs_per_s_cpu_process:.2f} per CPU process; "
          f"{in_process_step_s:.3f} s/step synthesising there (probe), of which about {compute_step_s:.3f} s "
          f"the network; {workers} loader workers, expected {step_s:.3f} s/step; training {steps} steps",
          flush=True)
    figures = {"device": str(device), "machine": machine_description(), "model": model_config.to_dict(),
               "train_config": base, "steps": steps, "synthetic_pairs_per_second_on_device": pairs_per_s,
               "synthetic_pairs_per_second_per_cpu_process": pairs_per_s_cpu_process, "loader_workers": workers,
               "probe_seconds_per_step_synthesising_on_device": in_process_step_s,
               "expected_seconds_per_step": step_s, "date": time.strftime("%Y-%m-%d")}
    (out / "device_training.json").write_text(json.dumps(figures, indent=1))  # kept should training be cut off
    result = train(sources, model_config, TrainConfig(steps=steps, validate_every=max(100, steps // 20), **base),
                   out / "run", device, progress=False)
    seconds = result["history"][-1]["seconds"]
    figures.update(training_seconds=seconds, training_samples_per_second=steps * base["batch_size"] / seconds,
                   final_validation=result["validation"])
    (out / "device_training.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "final_validation"}, indent=1))

if __name__ == "__main__":
    main()
