"""Benchmark: dense tiled inference against the paper's per-patch evaluation, memory, FLOPs, preprocessing;
peak memory of `predict` in a fresh process; training throughput."""
from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from .demo import synthetic_pair
from .devices import CONVOLUTION_LAYOUT, default_threads, machine_description, synchronize
from .errors import InputError
from .imageio import grid_over_same_extent, image_on_grid, read_image, write_image
from .inference import MisalignmentPredictor, occupied_tiles
from .model import INPUT_CHANNELS, MisalignmentNet, check_output_size, input_size
from .phantom import make_chest_phantom
from .preprocessing import BLOCK, to_fixed_grid
from .pyramid import AIR_HU, build_pyramid
from .sources import source_from_image
from .synthesis import make_batch, synthetic_pairs_per_second
from .training import TrainConfig, training_batches, training_step


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter for this process, where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def convolution_shapes(model: MisalignmentNet, boxes_edges) -> list:
    """(input shape, weight shape, output elements) of every convolution in one forward pass over an output box of
    each of the given edges (zyx), found on the meta device: shapes only, nothing computed."""
    shapes = []
    meta = copy.deepcopy(model).to("meta")
    for conv in (m for m in meta.modules() if isinstance(m, nn.Conv3d)):
        conv.register_forward_hook(lambda module, inputs, output: shapes.append(
            (tuple(inputs[0].shape), tuple(module.weight.shape), output.numel())))
    with torch.no_grad():
        for edges in boxes_edges:
            meta({lv: torch.empty((1, INPUT_CHANNELS) + tuple(input_size(model.config, lv, n) for n in edges),
                                  device="meta") for lv in model.config.levels})
    return shapes


def conv_flops(model: MisalignmentNet, boxes_edges) -> float:
    """FLOPs (2 x multiply-adds) of all convolutions of one forward pass over each of the output boxes."""
    return sum(2.0 * outputs * float(np.prod(weight[1:])) for _, weight, outputs in convolution_shapes(model,
                                                                                                      boxes_edges))


def matmul_flops_per_second(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Practical peak: FLOP/s of a float32 matrix product on the device."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2.0 * size ** 3 * repeats / (time.perf_counter() - t0)


def run_benchmark(predictor: MisalignmentPredictor, ct_path=None, blocks: int = 64, seed: int = 0) -> dict:
    """Time preprocessing, dense tiled inference and per-patch evaluation on a synthetic pair of one CT."""
    t0 = time.perf_counter()
    ct, lungs = (read_image(ct_path), None) if ct_path else make_chest_phantom(seed)
    read_s = time.perf_counter() - t0
    pair = synthetic_pair(ct, lungs, "single_frequency", 12.0, seed)
    reset_peak_rss()
    if predictor.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    on_fixed_grid = to_fixed_grid(pair.fixed, pair.moving)  # checks, torso and lung masks (CPU)
    masks_s = time.perf_counter() - t0
    prepared, tile = predictor.prepare_on_s1(on_fixed_grid)  # on CUDA the 1 mm volume is made on the GPU
    synchronize(predictor.device)
    t1 = time.perf_counter()
    pyramid = build_pyramid(prepared.volume)
    synchronize(predictor.device)
    t2 = time.perf_counter()
    probs = predictor.dense_probabilities_where_computed(prepared, tile, pyramid=pyramid)
    synchronize(predictor.device)
    t3 = time.perf_counter()
    result = predictor.result_on_fixed_grid(prepared, probs)  # as `predict` does it: where the network left them
    t4 = time.perf_counter()
    needed = predictor.needed_voxels(prepared)
    boxes = predictor.boxes_over_needed(needed, tile)  # as the dense network chose them
    tile_selection_s = time.perf_counter() - t4
    probs = probs.cpu().numpy()
    computed_voxels = sum(int(np.prod(box.size)) for box in boxes)
    needed_blocks = int(occupied_tiles(needed, BLOCK).sum())
    per_patch = _per_patch_sample(predictor, prepared, pyramid, probs, boxes, blocks, seed)
    flops = conv_flops(predictor.model, [box.size for box in boxes])
    dense_s = t3 - t2
    per_patch_total_s = per_patch["seconds_per_block"] * needed_blocks
    achieved = flops / dense_s
    reference = matmul_flops_per_second(predictor.device)
    amp = {"amp_vs_float32": _amp_against_float32(predictor, prepared, pyramid, tile, probs)} if predictor.amp else {}
    if predictor.device.type != "cpu" and not predictor.amp:
        amp["max_probability_difference_vs_cpu_one_tile"] = difference_to_cpu(predictor, prepared, pyramid,
                                                                              boxes[0], probs)
    return {**amp, "precision": predictor.precision,
        "case": str(ct_path) if ct_path else f"phantom seed {seed}",
        "image_size": list(pair.fixed.GetSize()), "image_spacing": list(pair.fixed.GetSpacing()),
        "mask_voxels": result.summary["mask_voxels"], "tile_size": tile, "tiles": len(boxes),
        "computed_output_voxels": computed_voxels, "tile_output_voxels": len(boxes) * tile ** 3,
        "per_patch_blocks_for_the_map": needed_blocks,
        "device": str(predictor.device), "machine": machine_description(), "torch_threads": torch.get_num_threads(),
        "seconds": {"read": read_s, "preprocessing_checks_masks_resample": t1 - t0,
                    "checks_and_masks_within_preprocessing": masks_s,
                    "resampling_to_1mm_within_preprocessing": t1 - t0 - masks_s, "pyramid": t2 - t1,
                    "dense_network": dense_s, "choosing_tiles_within_dense_network": tile_selection_s,
                    "resample_to_fixed_grid": t4 - t3,
                    "end_to_end_without_read": (t4 - t0), "per_patch_estimated_for_the_map": per_patch_total_s},
        "dense_voxels_per_second": computed_voxels / dense_s,
        "per_patch_voxels_per_second": BLOCK ** 3 / per_patch["seconds_per_block"],
        "speedup_dense_over_per_patch": per_patch_total_s / dense_s,
        "max_probability_difference_dense_vs_per_patch": per_patch["max_difference"],
        "per_patch_blocks_sampled": per_patch["blocks"],
        "flops_per_output_voxel": flops / computed_voxels, "achieved_flops_per_second": achieved,
        "matmul_reference_flops_per_second": reference, "fraction_of_matmul_reference": achieved / reference,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if predictor.device.type == "cuda" else None,
        "predict_timings_s": predict_timings(predictor, pair),
    }


def predict_timings(predictor: MisalignmentPredictor, pair) -> dict:
    """`predict`'s own timings on the pair, end to end as its callers see them; on CUDA both with the network started
    beside the lung mask (the default there) and after it."""
    default = predictor.network_beside_masks
    choices = (True, False) if predictor.device.type == "cuda" else (default,)
    runs = {}
    try:
        for beside in choices:
            predictor.network_beside_masks = beside
            timings = predictor.predict(pair.fixed, pair.moving).summary["timings_s"]
            runs["network_beside_masks" if beside else "network_after_masks"] = timings
    finally:
        predictor.network_beside_masks = default
    return runs


def _amp_against_float32(predictor: MisalignmentPredictor, prepared, pyramid, tile: int, probs) -> dict:
    """Recompute the dense map in float32 and compare it with the mixed-precision one."""
    exact = MisalignmentPredictor(predictor.model, predictor.device, predictor.max_memory_gb)
    t0 = time.perf_counter()
    reference = exact.dense_probabilities(prepared, tile, pyramid=pyramid)
    synchronize(predictor.device)
    seconds = time.perf_counter() - t0
    computed = reference.sum(0) > 0
    return {"float32_dense_network_s": seconds,
            "max_probability_difference": float(np.abs(reference - probs).max()),
            "label_agreement": float((reference.argmax(0) == probs.argmax(0))[computed].mean())}


def difference_to_cpu(predictor: MisalignmentPredictor, prepared, pyramid: dict, box, probs) -> float:
    """Largest difference between the device's dense probabilities and the CPU's (float32) over one output box."""
    cpu = MisalignmentPredictor(copy.deepcopy(predictor.model), "cpu")
    start = prepared.region_start[::-1] + box.corner
    on_cpu = cpu.tile_probabilities(pyramid, start, box.size).numpy()
    return float(np.abs(on_cpu - probs[(slice(None),) + box.slices()]).max())


def _per_patch_sample(predictor, prepared, pyramid, probs, boxes, blocks: int, seed: int) -> dict:
    """Time per-patch evaluation of random 8^3 blocks inside computed boxes; compare with the dense result."""
    rng = np.random.default_rng(seed)
    available = sum(int(np.prod(box.size)) // BLOCK ** 3 for box in boxes)
    chosen = set()
    while len(chosen) < min(blocks, available):
        box = boxes[rng.integers(len(boxes))]
        corner = box.corner // BLOCK + rng.integers(0, np.asarray(box.size) // BLOCK)
        chosen.add(tuple(int(c) for c in corner[::-1]))  # xyz block index
    chosen = sorted(chosen)
    t0 = time.perf_counter()
    values = predictor.block_probabilities(prepared, chosen, pyramid=pyramid)
    synchronize(predictor.device)
    seconds = (time.perf_counter() - t0) / len(chosen)
    difference = 0.0
    for bx, by, bz in chosen:
        dense = probs[:, bz * BLOCK:(bz + 1) * BLOCK, by * BLOCK:(by + 1) * BLOCK, bx * BLOCK:(bx + 1) * BLOCK]
        difference = max(difference, float(np.abs(dense - values[(bx, by, bz)]).max()))
    return {"seconds_per_block": seconds, "max_difference": difference, "blocks": len(chosen)}


def on_grid_of_size(image: sitk.Image, size) -> sitk.Image:
    """The image resampled linearly (Int16 HU) onto `size` voxels spanning the same physical extent."""
    spacing = np.asarray(image.GetSpacing()) * np.asarray(image.GetSize()) / np.asarray(size)
    reference = image_on_grid(grid_over_same_extent(image, spacing, size), sitk.sitkUInt8)
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkInt16)


# The command line in a fresh interpreter that writes its own VmHWM to a file on exit. (The kernel's ru_maxrss of a
# child also counts the parent's memory at fork and exec, so it cannot be used.)
_CLI_REPORTING_PEAK = """
import atexit, runpy, sys
from pathlib import Path
report = Path(sys.argv.pop(1))
status = Path("/proc/self/status")
atexit.register(lambda: report.write_text(next(line.split()[1] for line in status.read_text().splitlines()
                                               if line.startswith("VmHWM:"))))
runpy.run_module("RegistrationMisalignmentLib", run_name="__main__", alter_sys=True)
"""


def cli_peak_rss(arguments: list) -> tuple:
    """Run `registration-misalignment ARGUMENTS` in a fresh process; return (exit status, its peak resident memory
    (VmHWM, bytes), stdout, stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "vmhwm_kib"
        done = subprocess.run([sys.executable, "-c", _CLI_REPORTING_PEAK, str(report), *arguments],
                              capture_output=True, encoding="utf-8", errors="replace")
        peak = int(report.read_text()) * 1024 if report.exists() else 0
    return done.returncode, peak, done.stdout, done.stderr


def predict_peak_rss(fixed_path, moving_path, output_folder, options=(), probabilities: bool = False) -> dict:
    """Peak resident memory (VmHWM) and summary of `registration-misalignment predict` run in a fresh process."""
    arguments = ["predict", "--fixed", str(fixed_path), "--moving", str(moving_path),
                 "--output", str(Path(output_folder) / "labels.nrrd"), "--json", *options]
    if probabilities:
        arguments += ["--probabilities", str(Path(output_folder) / "probabilities.nrrd")]
    status, peak, out, err = cli_peak_rss(arguments)
    if status:
        reason = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
        raise InputError(f"predict failed in the child process: {reason}")
    summary = json.loads(out)
    return {"peak_rss_bytes": peak, "seconds": summary["timings_s"], "tile_size": summary["tile_size"],
            "mask_voxels": summary["mask_voxels"]}


def run_memory_benchmark(ct_path=None, size=(512, 512, 600), options=(), seed: int = 0) -> dict:
    """Peak memory of `predict` (labels only, and with --probabilities) on a synthetic pair resampled to `size`.

    The pair is built and written here; each prediction runs in a fresh process, so only its own memory counts."""
    ct, lungs = (read_image(ct_path), None) if ct_path else make_chest_phantom(seed)
    pair = synthetic_pair(ct, lungs, "single_frequency", 12.0, seed)
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for name, image in (("fixed", pair.fixed), ("moving", pair.moving)):
            resized = on_grid_of_size(image, size)
            paths[name] = Path(folder) / f"{name}.mha"
            write_image(resized, paths[name], compress=False)
        spacing = list(resized.GetSpacing())
        runs = {key: predict_peak_rss(paths["fixed"], paths["moving"], folder, options, probabilities)
                for key, probabilities in (("labels", False), ("labels_and_probabilities", True))}
    return {"case": str(ct_path) if ct_path else f"phantom seed {seed}", "image_size": [int(n) for n in size],
            "image_spacing": spacing, "voxels": int(np.prod(size)),
            "machine": machine_description(), "default_threads": default_threads(),
            "predict_options": list(options), "runs": runs}


def run_training_benchmark(predictor: MisalignmentPredictor, ct_path=None, pairs: int = 8, steps: int = 3,
                           seed: int = 0, out_size: int = None) -> dict:
    """Synthetic pairs made per second and training samples per second (forward, backward, optimiser step).

    The network has the predictor's architecture; batch and tile follow the release recipe (4 tiles of 32^3)
    unless `out_size` gives another tile edge."""
    train = TrainConfig() if out_size is None else TrainConfig(out_size=out_size)
    check_output_size(train.out_size)
    config = predictor.model.config
    device = predictor.device
    ct, lungs = (read_image(ct_path), None) if ct_path else make_chest_phantom(seed)
    source = source_from_image(str(ct_path) if ct_path else "phantom", ct, lungs).to(device)
    pair_s = 1.0 / synthetic_pairs_per_second([source], config, train.out_size, device, pairs, seed, train.batch_size)
    batch = make_batch([(source, seed + i) for i in range(train.batch_size)], config, train.out_size, device)
    step_s = seconds_per_step(config, train, device, itertools.repeat(batch, steps + 1), seed)
    synthesising = {}
    for thread in (False, True):  # each step synthesises its own batch in the training process, as `train` does
        feeding = replace(train, steps=steps + 1, seed=seed, synthesis_thread=thread)
        batches = training_batches([source], config, feeding, 0, device)
        synthesising[f"{'with' if thread else 'without'}_synthesis_thread"] = (
            train.batch_size / seconds_per_step(config, train, device, batches, seed))
    return {"case": str(ct_path) if ct_path else f"phantom seed {seed}", "device": str(device),
            "machine": machine_description(), "torch_threads": torch.get_num_threads(),
            "architecture": config.to_dict(), "batch_size": train.batch_size, "out_size": train.out_size,
            "synthetic_pairs_per_second": 1.0 / pair_s, "seconds_per_synthetic_pair": pair_s,
            "training_samples_per_second": train.batch_size / step_s, "seconds_per_training_step": step_s,
            "training_samples_per_second_synthesising_in_process": synthesising,
            "pairs_timed": pairs, "steps_timed": steps}


def seconds_per_step(config, train: TrainConfig, device, batches, seed: int) -> float:
    """Seconds per training step (forward, backward, optimiser) of a fresh network over `batches`, the first of
    which warms up and is not timed."""
    torch.manual_seed(seed)
    model = MisalignmentNet(config).to(device, memory_format=CONVOLUTION_LAYOUT).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
    steps = -1
    for inputs, targets in batches:
        if steps == 0:
            synchronize(device)
            start = time.perf_counter()
        training_step(model, optimizer, inputs, targets)
        steps += 1
    synchronize(device)
    return (time.perf_counter() - start) / steps
