"""GPU benchmark for a short device lease: the reference case in float32 and with --amp, one tile's forward pass in
each memory layout and arithmetic, and training throughput on the demo phantom with 32^3 and 64^3 tiles (and
synthesis of 32^3 pairs 1, 4 and 16 at a time), written to $OUT.

The device has no SimpleITK; its wheel, packed with xz (28 MB), and the reference CT (30 MB) fit one call's carry:
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 SimpleITK==2.5.7 -d /tmp/wheel                              # here
    mkdir -p carry/gpu /tmp/sitk && unzip -q /tmp/wheel/*.whl -d /tmp/sitk
    XZ_OPT=-9 tar -C /tmp/sitk -cJf carry/gpu/simpleitk.tar.xz .             # about 2 minutes, 28 MB
    cp ../shared/data/thorax_nsclc_r01-001.nii.gz carry/gpu/
    mkdir -p /tmp/site && tar -C /tmp/site -xJf carry/gpu/simpleitk.tar.xz &&
        PYTHONPATH=/tmp/site OUT=$OUT python3 scripts/device_benchmark.py            # there, carry=["carry/gpu"]
Then `predict` in FRESH_RUNS (default 3) fresh processes, the time one command sees; with the part
"beside_or_after", also FRESH_RUNS rounds of fresh processes that take turns with the network beside the lung mask and
after it.
Settings: CT (default carry/gpu/thorax_nsclc_r01-001.nii.gz; "phantom" for the demo phantom), DEVICE, BLOCKS,
FRESH_RUNS, PARTS (default "inference,fresh,layouts,training"; "beside_or_after" is extra: which parts run).
"""
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from device_env import setting

import torch  # noqa: E402

from RegistrationMisalignmentLib.benchmark import predict_peak_rss, run_benchmark, run_training_benchmark  # noqa: E402
from RegistrationMisalignmentLib.demo import synthetic_pair  # noqa: E402
from RegistrationMisalignmentLib.imageio import read_image, write_image  # noqa: E402
from RegistrationMisalignmentLib.devices import synchronize  # noqa: E402
from RegistrationMisalignmentLib.inference import MisalignmentPredictor, warm_up  # noqa: E402
from RegistrationMisalignmentLib.model import input_size  # noqa: E402
from RegistrationMisalignmentLib.phantom import make_chest_phantom  # noqa: E402
from RegistrationMisalignmentLib.sources import source_from_image  # noqa: E402
from RegistrationMisalignmentLib.synthesis import make_batch, synthetic_pairs_per_second  # noqa: E402

CHILD_FLAG = "--predict-in-child"


def layout_variants(predictor: MisalignmentPredictor, tile: int = 96, repeats: int = 5) -> list:
    """Milliseconds per forward pass of one tile in each memory layout and arithmetic (cuDNN's choice by heuristic)."""
    config, model = predictor.model.config, predictor.model
    rows = []
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        model.to(memory_format=layout)
        batch = {lv: torch.randn((1, 3) + (input_size(config, lv, tile),) * 3, device=predictor.device)
                 .contiguous(memory_format=layout) for lv in config.levels}
        for arithmetic in ("float32", "tf32", "float16"):
            torch.backends.cudnn.allow_tf32 = arithmetic == "tf32"
            with torch.no_grad(), torch.autocast(predictor.device.type, torch.float16, enabled=arithmetic == "float16"):
                for _ in range(3):
                    model(batch)
                synchronize(predictor.device)
                start = time.perf_counter()
                for _ in range(repeats):
                    model(batch)
                synchronize(predictor.device)
            rows.append({"layout": str(layout).replace("torch.", ""), "arithmetic": arithmetic, "tile": tile,
                         "ms": 1000 * (time.perf_counter() - start) / repeats})
    torch.backends.cudnn.allow_tf32 = True
    return rows


def synthesis_by_batch(predictor: MisalignmentPredictor, batches=(1, 4, 16), count: int = 32) -> dict:
    """Synthetic 32^3 pairs per second on the device, the demo phantom moved there, made `batch` at a time (does
    making a batch together keep a GPU fed?); each size timed after one untimed batch."""
    ct, lungs = make_chest_phantom(0)
    sources = [source_from_image("phantom", ct, lungs).to(predictor.device)]
    config = predictor.model.config
    rates = {}
    for batch in batches:
        make_batch([(sources[0], seed) for seed in range(batch)], config, 32, predictor.device)
        rates[f"batch_{batch}"] = synthetic_pairs_per_second(sources, config, 32, predictor.device,
                                                             max(count, batch), batch=batch)
    return rates


@contextlib.contextmanager
def pair_files(ct):
    """The benchmark's synthetic pair of a CT (None: the demo phantom) written to a temporary folder: (fixed, moving,
    folder)."""
    image, lungs = (read_image(ct), None) if ct else make_chest_phantom(0)
    pair = synthetic_pair(image, lungs, "single_frequency", 12.0, 0)
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(folder) / name for name in ("fixed.mha", "moving.mha")]
        for image, path in zip((pair.fixed, pair.moving), paths):
            write_image(image, path, compress=False)
        yield (*paths, folder)


def fresh_predictions(ct, device: str, runs: int) -> list:
    """`registration-misalignment predict` on the benchmark's synthetic pair, each run in a fresh process, as one
    command or Slicer's background run sees it: its own timings, peak memory and the child's wall time."""
    rows = []
    with pair_files(ct) as (fixed, moving, folder):
        for _ in range(runs):
            start = time.perf_counter()
            run = predict_peak_rss(fixed, moving, folder, ["--device", device])
            rows.append({**run, "process_wall_seconds": time.perf_counter() - start})
    return rows


def beside_or_after_masks(ct, device: str, rounds: int) -> dict:
    """`predict`'s timings in fresh processes with the network started beside the lung mask (CUDA's default) and
    after it, the two taking turns so that both meet the same state of the machine."""
    rows = {"beside": [], "after": []}
    with pair_files(ct) as (fixed, moving, _):
        for _ in range(rounds):
            for way, timings in rows.items():
                child = subprocess.run([sys.executable, __file__, CHILD_FLAG, str(fixed), str(moving), way, device],
                                       capture_output=True, text=True, check=True)
                timings.append(json.loads(child.stdout.strip().splitlines()[-1]))
    return rows


def predict_in_child(fixed, moving, way: str, device: str) -> None:
    """In a child of `beside_or_after_masks`: one `predict` with the network beside the masks or after them; prints
    its timings."""
    predictor = MisalignmentPredictor.load(device=device)
    predictor.network_beside_masks = way == "beside"
    predictor.start_warming_up()  # as `predict` does, while the images are read
    print(json.dumps(predictor.predict(read_image(fixed), read_image(moving)).summary["timings_s"]))


def main() -> None:
    """Benchmark the released model in float32 and in mixed precision, then training throughput; write
    device_benchmark.json under $OUT after each part."""
    out = Path(os.environ.get("OUT", "runs/device"))
    out.mkdir(parents=True, exist_ok=True)
    ct = setting("CT", "carry/gpu/thorax_nsclc_r01-001.nii.gz")
    ct = None if ct == "phantom" else ct
    device = setting("DEVICE", "auto")
    results = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}

    def save():
        (out / "device_benchmark.json").write_text(json.dumps(results, indent=1))

    parts = setting("PARTS", "inference,fresh,layouts,training").split(",")
    for name, amp in (("float32", False), ("amp", True)) if "inference" in parts else ():
        predictor = MisalignmentPredictor.load(device=device, amp=amp)
        for precision in (False, True):  # CUDA context, cuDNN handles and kernels loaded before timing
            warm_up(predictor.model, predictor.device, precision)
        results[name] = run_benchmark(predictor, ct, blocks=setting("BLOCKS", 64))
        seconds = results[name]["seconds"]
        print(f"{name}: tile {results[name]['tile_size']} x {results[name]['tiles']}, network "
              f"{seconds['dense_network']:.3f} s, end to end {seconds['end_to_end_without_read']:.2f} s "
              f"(preprocessing {seconds['preprocessing_checks_masks_resample']:.2f} s, back onto the fixed grid "
              f"{seconds['resample_to_fixed_grid']:.2f} s), {results[name]['speedup_dense_over_per_patch']:.1f}x "
              f"over per-patch; against the CPU over one tile: "
              f"{results[name].get('max_probability_difference_vs_cpu_one_tile', 'not compared')}; predict "
              f"{json.dumps(results[name]['predict_timings_s'])}", flush=True)
        save()
    if "fresh" in parts:
        results["fresh_predict"] = fresh_predictions(ct, device, setting("FRESH_RUNS", 3))
        print(json.dumps([{k: v for k, v in run.items() if k != "mask_voxels"} for run in results["fresh_predict"]]),
              flush=True)
        save()
    if "beside_or_after" in parts:
        results["fresh_beside_or_after_masks"] = beside_or_after_masks(ct, device, setting("FRESH_RUNS", 3))
        print(json.dumps({way: [round(run["total"], 3) for run in runs]
                          for way, runs in results["fresh_beside_or_after_masks"].items()}), flush=True)
        save()
    predictor = MisalignmentPredictor.load(device=device)
    if predictor.device.type == "cuda" and "layouts" in parts:
        results["layouts"] = layout_variants(predictor)
        print(json.dumps(results["layouts"]), flush=True)
        save()
        predictor = MisalignmentPredictor.load(device=device)
    if "training" not in parts:
        return
    results["training"] = {f"out_size_{n}": run_training_benchmark(predictor, None, pairs=16, steps=10, out_size=n)
                           for n in (32, 64)}  # does a GPU synthesise 64^3 tiles at about the cost of 32^3?
    results["training"]["synthetic_pairs_per_second_by_batch"] = synthesis_by_batch(predictor)
    print(json.dumps(results["training"], indent=1), flush=True)
    save()


if __name__ == "__main__":
    if sys.argv[1:2] == [CHILD_FLAG]:
        predict_in_child(*sys.argv[2:])
    else:
        main()
