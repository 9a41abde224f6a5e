"""One training run sized to a short GPU lease: probe the speed, train as many steps as fit (stopping at the
budget should the probe be off), save run and figures.

Needs only PyTorch, numpy, safetensors and tqdm (no SimpleITK): the sources come from `cache-sources`.
    registration-misalignment cache-sources --ct ../shared/data/thorax_philips_00.nii.gz --phantoms 2 \\
        --out carry/train_sources.npz                       # here, once (about 48 MB)
    OUT=$OUT BUDGET_S=420 python3 scripts/device_train.py   # there (device tool: carry=["carry/train_sources.npz"])
Then, back here: registration-misalignment release --run OUT/run ... (see README, "Training your own model").
Settings (defaults: the release's recipe, multires_cnn with 12 features and hidden channels, batches of 16 tiles of
32^3): ARCH, FEATURES, HIDDEN, BATCH, OUT_SIZE, LR, DENSITY_CHANGE, SOURCES, DEVICE, INIT_WEIGHTS (fine-tune
these weights; the architecture comes from them); LOADER_WORKERS and
LOADER_DEVICE force one way of feeding the GPU instead of probing synthesis in the training process, loader workers
synthesising on the GPU, and (estimated) loader workers on the CPU.
"""
import json
import os
import shutil
import time
from pathlib import Path

from device_env import setting

import torch  # noqa: E402

from RegistrationMisalignmentLib.checkpoint import sha256_of  # noqa: E402
from RegistrationMisalignmentLib.devices import machine_description, resolve_device  # noqa: E402
from RegistrationMisalignmentLib.model import ModelConfig  # noqa: E402
from RegistrationMisalignmentLib.source_cache import load_cached_sources  # noqa: E402
from RegistrationMisalignmentLib.synthesis import synthetic_pairs_per_second  # noqa: E402
from RegistrationMisalignmentLib.training import (LOADER_PREFETCH, TrainConfig, fine_tuning_config,  # noqa: E402
                                                  train)

PROBE_STEPS = 40  # timed over the second half, after start-up (CUDA, loader processes) and the workers' queue


def synthesis_rate(sources, config: ModelConfig, out_size: int, device, batch: int, count: int = 16) -> float:
    """Synthetic training pairs generated per second on `device`, `batch` at a time (the sources moved there first,
    as training does)."""
    return synthetic_pairs_per_second([source.to(device) for source in sources], config, out_size, device, count,
                                      batch=batch)


def probe_step_seconds(sources, model_config: ModelConfig, base: dict, feeding: tuple, device, folder: Path) -> float:
    """Steady seconds per training step when batches come from `feeding` (loader workers, loader device): timed
    after the batches the workers queued during start-up are used up, else they would flatter the workers."""
    workers, loader_device = feeding
    untimed = PROBE_STEPS // 2 + workers * LOADER_PREFETCH
    config = TrainConfig(steps=untimed + PROBE_STEPS // 2, validate_every=untimed, validation_samples=4,
                         **{**base, "loader_workers": workers, "loader_device": loader_device})
    history = train(sources, model_config, config, folder, device, progress=False)["history"]
    shutil.rmtree(folder)
    return (history[-1]["seconds"] - history[-2]["seconds"]) / (PROBE_STEPS // 2)


def cpu_workers_step_seconds(in_process_step_s: float, batch_on_device_s: float, batch_per_cpu_process_s: float,
                             workers: int) -> float:
    """Expected seconds per step with `workers` CPU processes synthesising: the slower of the network (the
    in-process step less its synthesis) and the workers."""
    network_s = max(in_process_step_s - batch_on_device_s, 0.1 * in_process_step_s)
    return max(network_s, batch_per_cpu_process_s / workers)


def feeding_options(device, cores: int) -> list:
    """The ways to feed batches worth trying, as (loader workers, loader device); LOADER_WORKERS and LOADER_DEVICE
    force one."""
    if "LOADER_WORKERS" in os.environ:
        return [(int(os.environ["LOADER_WORKERS"]), os.environ.get("LOADER_DEVICE", "cpu"))]
    if device.type != "cuda" or cores <= 4:
        return [(0, "cpu")]
    return [(0, "cpu"), (min(8, cores - 4), "cuda"), (cores - 4, "cpu")]


def described(feeding: tuple) -> str:
    """A way of feeding batches in words."""
    workers, loader_device = feeding
    return f"{workers} loader workers on {loader_device}" if workers else "synthesis in the training process"


def main() -> None:
    """Measure synthesis, probe the ways of feeding the GPU, train with the fastest, and write the run folder plus
    device_training.json under $OUT."""
    out = Path(os.environ.get("OUT", "runs/device"))
    budget_s = setting("BUDGET_S", 420.0)
    sources_file = os.environ.get("SOURCES", "carry/train_sources.npz")
    if not Path(sources_file).is_file():
        raise SystemExit(f"error: {sources_file}: no such sources file; run from the repository root (where the "
                         "docstring's cache-sources command puts it) or set SOURCES=PATH")
    sources = load_cached_sources(sources_file)
    device = resolve_device(os.environ.get("DEVICE", "auto"))
    init_weights = os.environ.get("INIT_WEIGHTS", "")  # fine-tuning: the architecture comes from the weights
    model_config = (fine_tuning_config(init_weights) if init_weights else
                    ModelConfig(architecture=setting("ARCH", "multires_cnn"), features=setting("FEATURES", 12),
                                hidden=setting("HIDDEN", 12)))
    base = dict(batch_size=setting("BATCH", 16), out_size=setting("OUT_SIZE", 32),
                learning_rate=setting("LR", 2e-3), density_change=setting("DENSITY_CHANGE", 0.0),
                source_files=[sources_file], phantom_seeds=[], init_weights=init_weights,
                init_weights_sha256=sha256_of(init_weights) if init_weights else "")
    started = time.perf_counter()
    pairs_per_s = synthesis_rate(sources, model_config, base["out_size"], device, base["batch_size"])
    options = feeding_options(device, os.cpu_count() or 2)
    pairs_per_s_cpu_process = None
    if any(workers and loader_device == "cpu" for workers, loader_device in options):  # for their estimate
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        pairs_per_s_cpu_process = synthesis_rate(sources, model_config, base["out_size"], torch.device("cpu"),
                                                 base["batch_size"], 4)
        torch.set_num_threads(threads)
    step_s = {}
    for workers, loader_device in options:
        if workers and loader_device == "cpu" and (0, "cpu") in step_s:  # estimated: a probe would take minutes
            step_s[(workers, loader_device)] = cpu_workers_step_seconds(
                step_s[(0, "cpu")], base["batch_size"] / pairs_per_s, base["batch_size"] / pairs_per_s_cpu_process,
                workers)
        else:
            step_s[(workers, loader_device)] = probe_step_seconds(sources, model_config, base,
                                                                  (workers, loader_device), device, out / "probe")
        print(f"{described((workers, loader_device))}: {step_s[(workers, loader_device)]:.3f} s/step", flush=True)
    (workers, loader_device), expected_s = min(step_s.items(), key=lambda item: item[1])
    base.update(loader_workers=workers, loader_device=loader_device)
    left = budget_s - (time.perf_counter() - started)
    steps = max(PROBE_STEPS, int(0.8 * left / expected_s) // 100 * 100)
    print(f"{device}: {pairs_per_s:.1f} synthetic pairs/s there, {pairs_per_s_cpu_process or 0:.2f} per CPU "
          f"process; training {steps} steps, {described((workers, loader_device))}", flush=True)
    figures = {"device": str(device), "machine": machine_description(), "model": model_config.to_dict(),
               "train_config": base, "steps": steps, "synthetic_pairs_per_second_on_device": pairs_per_s,
               "synthetic_pairs_per_second_per_cpu_process": pairs_per_s_cpu_process,
               "seconds_per_step_by_feeding": {described(feeding): v for feeding, v in step_s.items()},
               "expected_seconds_per_step": expected_s, "date": time.strftime("%Y-%m-%d")}
    (out / "device_training.json").write_text(json.dumps(figures, indent=1))  # kept should training be cut off
    left = budget_s - (time.perf_counter() - started)
    result = train(sources, model_config, TrainConfig(steps=steps, validate_every=max(100, steps // 20), **base),
                   out / "run", device, progress=False, time_limit_s=0.9 * left)  # should the estimate be off
    seconds = result["history"][-1]["seconds"]
    figures.update(steps_trained=result["steps"], training_seconds=seconds,
                   training_samples_per_second=result["steps"] * base["batch_size"] / seconds,
                   final_validation=result["validation"])
    (out / "device_training.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps({k: v for k, v in figures.items() if k != "final_validation"}, indent=1))


if __name__ == "__main__":
    main()
