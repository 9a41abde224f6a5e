"""The paper's ablation at a GPU's budget, sized to a short lease: every architecture trained with the same data,
seeds, batch and number of steps (as many as fit in BUDGET_S for all of them, at most MAX_STEPS), one after the
other, synthesis in the training process (batched on the GPU).

Needs only PyTorch, numpy, safetensors and tqdm (no SimpleITK): the sources come from `cache-sources`, as for
`scripts/device_train.py`:
    OUT=$OUT BUDGET_S=420 python3 scripts/device_ablation.py   # there (device tool: carry=["carry/train_sources.npz"])
Writes $OUT/device_ablation.json (each probe, the steps, each run's time and validation) and $OUT/runs.tar (one run
folder per architecture, resumable with `registration-misalignment train`), both after every architecture. Back
here: `registration-misalignment evaluate-synthetic --ct ../shared/data/thorax_nsclc_r01-001.nii.gz --samples 48
--weights RUNS/<architecture>/weights.safetensors --uncalibrated`, as `ablation` evaluates.
Settings: ARCHS (comma-separated), BUDGET_S, RUNS (where the run folders are made), MAX_STEPS, FEATURES, HIDDEN,
BATCH, OUT_SIZE, LR, DENSITY_CHANGE, SEED, SOURCES, DEVICE.
"""
import json
import os
import tarfile
import time
from pathlib import Path

from device_env import setting
from device_train import probe_step_seconds, synthesis_rate

from RegistrationMisalignmentLib.devices import machine_description, resolve_device  # noqa: E402
from RegistrationMisalignmentLib.model import ModelConfig  # noqa: E402
from RegistrationMisalignmentLib.source_cache import load_cached_sources  # noqa: E402
from RegistrationMisalignmentLib.training import TrainConfig, train  # noqa: E402

IN_PROCESS = (0, "cpu")  # no loader workers: the training process synthesises, on its own device


def common_steps(step_seconds: list, left_s: float, max_steps: int, share: float = 0.85) -> int:
    """The one step count every architecture trains for: what fits `share` of the time left when they run one after
    the other, in whole hundreds, at most `max_steps` and at least 100."""
    fitting = int(share * left_s / sum(step_seconds)) // 100 * 100
    return max(100, min(max_steps, fitting))


def pack_runs(runs: Path, archive: Path) -> None:
    """Every architecture's run folder (weights, history, resumable state) in one tar written beside, then renamed."""
    partial = archive.with_suffix(".partial")
    with tarfile.open(partial, "w") as tar:
        tar.add(runs, arcname="runs")
    partial.replace(archive)


def main() -> None:
    """Probe each architecture's step, choose the common step count, train each, and record figures and runs."""
    out = Path(os.environ.get("OUT", "runs/device_ablation"))
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(setting("RUNS", "runs/device_ablation_runs"))  # beside $OUT: only the tar comes back
    budget_s = setting("BUDGET_S", 420.0)
    started = time.perf_counter()
    sources_file = setting("SOURCES", "carry/train_sources.npz")
    sources = load_cached_sources(sources_file)
    device = resolve_device(setting("DEVICE", "auto"))
    architectures = setting("ARCHS", "hierarchical_lstm,multires_cnn,single_cnn").split(",")
    configs = {name: ModelConfig(architecture=name, features=setting("FEATURES", 12), hidden=setting("HIDDEN", 12))
               for name in architectures}
    base = dict(batch_size=setting("BATCH", 16), out_size=setting("OUT_SIZE", 32), learning_rate=setting("LR", 2e-3),
                density_change=setting("DENSITY_CHANGE", 0.0), seed=setting("SEED", 0),
                source_files=[sources_file], phantom_seeds=[])
    figures = {"device": str(device), "machine": machine_description(), "train_config": base,
               "date": time.strftime("%Y-%m-%d"), "synthetic_pairs_per_second_on_device":
                   synthesis_rate(sources, configs[architectures[0]], base["out_size"], device, base["batch_size"])}
    step_s = {name: probe_step_seconds(sources, config, base, IN_PROCESS, device, out / "probe")
              for name, config in configs.items()}
    steps = common_steps(list(step_s.values()), budget_s - (time.perf_counter() - started), setting("MAX_STEPS", 2000))
    figures.update(probe_seconds_per_step=step_s, steps=steps, runs={})
    print(f"{device}: {figures['synthetic_pairs_per_second_on_device']:.1f} pairs/s; probe s/step {step_s}; "
          f"{steps} steps each", flush=True)
    for index, (name, config) in enumerate(configs.items()):
        left = budget_s - (time.perf_counter() - started)
        result = train(sources, config, TrainConfig(steps=steps, validate_every=max(100, steps // 10), **base),
                       runs / name, device, progress=False,
                       time_limit_s=0.95 * left / (len(configs) - index))  # a slow probe cannot overrun the lease
        seconds = result["history"][-1]["seconds"]
        figures["runs"][name] = {"steps_trained": result["steps"], "finished": result["finished"],
                                 "training_seconds": seconds,
                                 "training_samples_per_second": result["steps"] * base["batch_size"] / seconds,
                                 "final_validation": result["validation"]}
        pack_runs(runs, out / "runs.tar")
        (out / "device_ablation.json").write_text(json.dumps(figures, indent=1))
        print(f"{name}: {result['steps']} steps in {seconds:.0f} s, validation {result['validation']}", flush=True)


if __name__ == "__main__":
    main()
