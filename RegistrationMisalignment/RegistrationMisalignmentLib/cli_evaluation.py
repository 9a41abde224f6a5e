"""Evaluation commands: evaluate (landmarks), evaluate-synthetic, calibrate, ablation, release, benchmark."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .cli_common import (add_device, add_model_options, check_threads, check_two_scans, load_predictor, output_folder,
                         progress_bar, require_at_least, require_at_least_one, require_below, set_threads)
from .cli_training import check_training_options
from .errors import InputError


def _add_evaluate_synthetic(sub) -> None:
    """Register the `evaluate-synthetic` command."""
    p = sub.add_parser("evaluate-synthetic", help="metrics on synthetic pairs from a CT the model did not train on",
                       description="Warp a held-out CT with reproducible synthetic fields (all families) and "
                                   "report accuracy, per-class precision/recall/F1 and confusion matrices at "
                                   "lung voxels (all, and class-stratified points).")
    p.add_argument("--ct", required=True, help="held-out CT (file or DICOM folder)")
    p.add_argument("--samples", type=int, default=48, help="number of synthetic pairs (tiles)")
    p.add_argument("--seed", type=int, action="append",
                   help="evaluation seed (default 0); repeat it for other pairs from the same CT and their mean")
    p.add_argument("--temperature", type=float, help="use this logit temperature instead of the weights' own")
    p.add_argument("--uncalibrated", action="store_true",
                   help="ignore the weights' calibration (temperature 1, no class bias): the network as trained")
    add_model_options(p)


def run_evaluate_synthetic(args) -> dict:
    """Evaluate the model on synthetic pairs from a held-out CT."""
    from .checkpoint import load_model, released_weights_path, sha256_of
    from .devices import resolve_device
    from .evaluation import evaluate_synthetic, mean_over_seeds
    from .imageio import read_image
    from .sources import source_from_image
    require_at_least_one(samples=args.samples)
    seeds = sorted(set(args.seed or [0]), key=(args.seed or [0]).index)  # each seed once, in the order given
    require_at_least(0, seed=min(seeds))
    require_below(1000, "larger seeds draw the pairs of the calibration fit", seed=max(seeds))
    set_threads(args.threads)
    source = source_from_image(str(args.ct), read_image(args.ct))
    weights = args.weights or released_weights_path()
    model = load_model(weights)
    if args.uncalibrated:
        model.config = model.config.uncalibrated()
    if args.temperature is not None:
        if not 0 < args.temperature < float("inf"):
            raise InputError(f"--temperature must be positive, got {args.temperature}")
        model.config.temperature = args.temperature
    results = [evaluate_synthetic(model, source, args.samples, seed=seed, device=resolve_device(args.device),
                                  progress=not args.json) for seed in seeds]
    for result in results:
        _print_synthetic_scores(f"seed {result['seed']} ", result, args.json)
    mean = mean_over_seeds(results)
    if len(results) > 1:
        _print_synthetic_scores(f"mean of {len(seeds)} seeds ", mean, args.json)
    summary = {"source": source.name, "samples": args.samples, "seeds": seeds, "temperature": model.config.temperature,
               "class_bias": list(model.config.class_bias), "mean": mean, "per_seed": results,
               "weights_sha256": sha256_of(weights)}
    return {**results[0], **summary} if len(results) == 1 else summary  # one seed: its figures at the top too


def _print_synthetic_scores(prefix: str, result: dict, quiet: bool) -> None:
    """One line per point set (accuracy, average F1, ECE), then the accuracy by true residual."""
    if quiet:
        return
    from .metrics import band_name, errors_near_boundary_text
    for key in ("all_lung_voxels", "class_stratified_points"):
        r = result[key]
        print(f"{prefix}{key}: accuracy {100 * r['accuracy']:.1f} %  average F1 {100 * r['average_f1']:.1f} %  "
              f"ECE {100 * r['expected_calibration_error']:.1f} %")
    report = result["by_residual"]
    bands = "  ".join(f"{band_name(b)} {100 * b['accuracy']:.0f} %" for b in report["bands"] if b["n"])
    bands = bands or "no labelled lung voxels"
    print(f"{prefix}accuracy by true residual: {bands}")
    print(f"{prefix}{errors_near_boundary_text(report)} (lung voxels within {report['near_boundary_mm']:g} mm of it: "
          f"{100 * report['voxels_near_boundary']:.1f} %)")
    families = "  ".join(f"{name} {100 * r['accuracy']:.1f} %" for name, r in result["by_family"].items() if r["n"])
    print(f"{prefix}accuracy by field family: {families}")
    precision = result["residual_precision"]
    reference = "  ".join(f"{r['sigma_mm']:g} mm {100 * r['accuracy']:.1f} / {100 * r['average_f1']:.1f} %"
                          for r in precision["reference"])
    print(f"{prefix}as accurate as the true residual known to Gaussian noise of sigma "
          f"{precision['equivalent_noise_mm']:.2f} mm (that reference at sigma: {reference})")


def _add_calibrate(sub) -> None:
    """Register the `calibrate` command."""
    p = sub.add_parser("calibrate", help="fit temperature and class biases on synthetic pairs from a training CT",
                       description="Bias-corrected temperature scaling: fit T and class biases b minimising the "
                                   "negative log-likelihood of softmax(logits / T + b) at lung voxels of reproducible "
                                   "synthetic pairs from a CT the model trained on, and write the weights (tensors "
                                   "unchanged) with T and b in their metadata. The biases undo the class weighting of "
                                   "training, so predicted classes can change (--temperature-only keeps them). Never "
                                   "fit on the held-out CT.")
    p.add_argument("--weights", help="weights to calibrate (default: the released model)")
    p.add_argument("--ct", required=True, help="a training CT of the model (file or DICOM folder)")
    p.add_argument("--samples", type=int, default=48, help="number of synthetic pairs (tiles)")
    p.add_argument("--out", required=True, help="calibrated .safetensors to write")
    _add_temperature_only(p)
    add_device(p)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def run_calibrate(args) -> dict:
    """Fit the temperature and write the calibrated weights."""
    from pathlib import Path
    from .calibration import calibrate_weights
    from .checkpoint import WEIGHTS_FORMAT_HINT, WEIGHTS_SUFFIXES, card_path, released_weights_path
    from .devices import resolve_device
    from .imageio import check_output_files, read_image
    from .sources import source_from_image
    require_at_least_one(samples=args.samples)
    check_output_files({"--out": args.out}, {"the weights being calibrated": args.weights or released_weights_path()},
                       WEIGHTS_SUFFIXES, WEIGHTS_FORMAT_HINT)
    if card_path(args.out).exists():
        raise InputError(f"{args.out}: a model card sits next to it and would no longer match; write elsewhere "
                         "or publish with `release --calibration-ct`")
    set_threads(args.threads)
    source = source_from_image(Path(args.ct).name, read_image(args.ct))
    fit = calibrate_weights(args.weights or released_weights_path(), source, args.out, args.samples,
                            device=resolve_device(args.device), progress=not args.json,
                            temperature_only=args.temperature_only)
    if not args.json:
        bias = ", ".join(f"{b:+.3f}" for b in fit["class_bias"])
        print(f"temperature {fit['temperature']:.4f} (was {fit['temperature_before']:.4g}), class bias ({bias}) on "
              f"{fit['voxels']} lung voxels: NLL {fit['nll_before']:.4f} -> {fit['nll_after']:.4f}, ECE "
              f"{100 * fit['ece_before']:.2f} % -> {100 * fit['ece_after']:.2f} %, accuracy "
              f"{100 * fit['accuracy_before']:.1f} % -> {100 * fit['accuracy']:.1f} %; wrote {args.out}")
    return fit


def _add_temperature_only(p) -> None:
    """The option that restricts calibration to the temperature."""
    p.add_argument("--temperature-only", action="store_true",
                   help="fit only the temperature (no class biases): the predicted classes stay as trained")


def _add_release(sub) -> None:
    """Register the `release` command."""
    p = sub.add_parser("release", help="publish a trained run: weights, held-out evaluation and model card",
                       description="Copy a run's weights, evaluate them on synthetic pairs from a held-out CT and "
                                   "write the model card (JSON with sha256, and Markdown) next to the weights.")
    p.add_argument("--run", required=True, help="training run folder (from `train --out`)")
    p.add_argument("--weights-out", required=True, help="where to write the released .safetensors")
    p.add_argument("--heldout-ct", required=True, help="CT the run did not train on")
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--training-command", default="", help="the command that trained the run (for the card)")
    p.add_argument("--calibration-ct", help="training CT to fit temperature and class biases on (see `calibrate`)")
    p.add_argument("--calibration-samples", type=int, default=48, help="synthetic pairs for the calibration fit")
    _add_temperature_only(p)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_release(args) -> dict:
    """Release a run."""
    from .release import release
    require_at_least_one(samples=args.samples, calibration_samples=args.calibration_samples)
    set_threads(args.threads)
    card = release(args.run, args.weights_out, args.heldout_ct, args.samples, args.training_command,
                   args.calibration_ct, args.calibration_samples, args.temperature_only)
    heldout = card["heldout_synthetic"]["all_lung_voxels"]
    if not args.json:
        print(f"wrote {args.weights_out} (sha256 {card['sha256'][:12]}..., "
              f"{'calibrated' if card['calibration'] else 'uncalibrated: give --calibration-ct to calibrate'}) and "
              f"its model card; held-out synthetic accuracy {100 * heldout['accuracy']:.1f} %, average F1 "
              f"{100 * heldout['average_f1']:.1f} %")
    return {"sha256": card["sha256"], "temperature": card["architecture"]["temperature"],
            "class_bias": card["architecture"]["class_bias"], "heldout_synthetic": heldout}


def _add_card_landmarks(sub) -> None:
    """Register the `card-landmarks` command."""
    p = sub.add_parser("card-landmarks", help="add landmark-protocol results to a released model's card",
                       description="Put the pooled results of `evaluate --out DIR` runs of these weights (and the "
                                   "pair description a `make-landmark-pair` folder holds) into the model card.")
    p.add_argument("--weights", required=True, help="released weights whose card is updated")
    p.add_argument("--evaluation", action="append", required=True, metavar="DIR",
                   help="folder written by `evaluate --out` with these weights as the main model; repeatable")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_card_landmarks(args) -> dict:
    """Update the card and report what it now holds."""
    from .release import add_landmark_results
    card = add_landmark_results(args.weights, args.evaluation)
    return {"card": card["name"], "landmark_protocol": [{k: e[k] for k in ("evaluation", "accuracy", "average_f1")}
                                                        for e in card["landmark_protocol"]]}


def _add_benchmark(sub) -> None:
    """Register the `benchmark` command."""
    p = sub.add_parser("benchmark", help="time dense inference against per-patch evaluation, memory and FLOPs",
                       description="On a CT (default: the demo phantom) warped by a synthetic field: preprocessing "
                                   "times, dense tiled inference (time, voxels/s, peak memory, FLOP/s), the paper's "
                                   "per-patch evaluation on sampled blocks scaled to the volume, and their agreement.")
    p.add_argument("--ct", help="CT to benchmark on (e.g. ../shared/data/thorax_nsclc_r01-001.nii.gz)")
    p.add_argument("--blocks", type=int, default=64, help="8^3 blocks evaluated the per-patch way")
    p.add_argument("--memory-size", metavar="X,Y,Z",
                   help="instead: peak memory of `predict` (each run in a fresh process, labels alone and with "
                        "--probabilities) on the pair resampled to X,Y,Z voxels over the same extent, e.g. 512,512,600")
    p.add_argument("--training", action="store_true",
                   help="instead: synthetic pairs and training samples per second (release recipe: 4 tiles of 32^3)")
    p.add_argument("--out-size", type=int,
                   help="with --training: the training tile's output edge (a multiple of 8; default 32)")
    add_model_options(p)


def run_benchmark_command(args) -> dict:
    """Run the benchmark (or its memory or training variant) and print its main figures."""
    from .benchmark import run_benchmark
    if args.memory_size and args.training:
        raise InputError("choose --memory-size or --training, not both")
    if args.out_size is not None and not args.training:
        raise InputError("--out-size is the training tile's edge: it goes with --training; add that or leave it out")
    if args.memory_size:
        return run_memory_benchmark_command(args)
    if args.training:
        return run_training_benchmark_command(args)
    require_at_least_one(blocks=args.blocks)
    from .inference import PER_PATCH_BATCH
    if args.blocks < PER_PATCH_BATCH:
        logging.getLogger("RegistrationMisalignment").warning(
            f"--blocks {args.blocks}: fewer blocks than one per-patch batch ({PER_PATCH_BATCH}), so each block carries "
            "a batch's fixed costs and the speed-up over per-patch is overstated; use 64 (the default)")
    result = run_benchmark(load_predictor(args), args.ct, args.blocks)
    if not args.json:
        s = result["seconds"]
        print(f"{result['case']} on {result['device']} ({result['machine']}, {result['torch_threads']} threads)")
        print(f"  preprocessing {s['preprocessing_checks_masks_resample'] + s['pyramid']:.1f} s (checks and masks "
              f"{s['checks_and_masks_within_preprocessing']:.1f} s, resampling to 1 mm "
              f"{s['resampling_to_1mm_within_preprocessing']:.1f} s, pyramid {s['pyramid']:.1f} s), dense network "
              f"{s['dense_network']:.1f} s, back to fixed grid {s['resample_to_fixed_grid']:.1f} s, "
              f"end to end {s['end_to_end_without_read']:.1f} s (+ read {s['read']:.1f} s)")
        for way, timings in result["predict_timings_s"].items():
            print(f"  predict ({way.replace('_', ' ')}): {timings['total']:.2f} s end to end")
        print(f"  per-patch (estimated, {result['per_patch_blocks_for_the_map']} blocks of 8^3) "
              f"{s['per_patch_estimated_for_the_map']:.1f} s: dense ({result['tiles']} boxes in tiles of "
              f"{result['tile_size']}^3) is "
              f"{result['speedup_dense_over_per_patch']:.1f}x faster, max probability difference "
              f"{result['max_probability_difference_dense_vs_per_patch']:.2e}")
        print(f"  {result['flops_per_output_voxel'] / 1e3:.0f} kFLOP per voxel, "
              f"{result['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s "
              f"({100 * result['fraction_of_matmul_reference']:.0f} % of a float32 matmul), "
              f"peak RSS {result['peak_rss_bytes'] / 2 ** 30:.2f} GiB")
        if "amp_vs_float32" in result:
            amp = result["amp_vs_float32"]
            print(f"  {result['precision']} vs float32: dense network {amp['float32_dense_network_s']:.1f} s "
                  f"in float32, max probability difference {amp['max_probability_difference']:.2e}, "
                  f"same class at {100 * amp['label_agreement']:.3f} % of computed voxels")
    return result


def parse_size(text: str) -> list:
    """Three voxel counts from 'X,Y,Z', at least 2 each, whose pair fits in the memory available."""
    from .imageio import BYTES_PER_VOXEL, available_memory_bytes
    try:
        size = [int(n) for n in text.split(",")]
    except ValueError:
        size = []
    if len(size) != 3 or min(size) < 2:
        raise InputError(f"--memory-size must be three voxel counts of at least 2, like 512,512,600, got {text!r}")
    needed, available = 2 * BYTES_PER_VOXEL * math.prod(size), available_memory_bytes()  # the pair and the map
    if needed > available:
        raise InputError(f"--memory-size {text}: needs about {needed / 2 ** 30:.0f} GiB of memory but "
                         f"{available / 2 ** 30:.0f} GiB is available; choose a smaller size")
    return size


def run_memory_benchmark_command(args) -> dict:
    """Peak memory of `predict` in fresh processes on the pair resampled to --memory-size."""
    from .benchmark import run_memory_benchmark
    size = parse_size(args.memory_size)
    check_threads(args.threads)  # the runs of `predict` would each refuse it
    options = ["--device", args.device, "--max-memory", str(args.max_memory), "--threads", str(args.threads)]
    options += ["--amp"] if args.amp else []
    if args.weights:
        options += ["--weights", str(args.weights)]
    result = run_memory_benchmark(args.ct, size, options)
    if not args.json:
        print(f"{result['case']} resampled to {'x'.join(map(str, size))} voxels ({result['voxels'] / 1e6:.0f} million) "
              f"on {result['machine']} ({result['default_threads']} physical cores available)")
        for name, run in result["runs"].items():
            print(f"  predict, {name.replace('_', ' ')}: peak RSS {run['peak_rss_bytes'] / 2 ** 30:.2f} GiB, "
                  f"{run['seconds']['total']:.1f} s (tile {run['tile_size']})")
    return result


def run_training_benchmark_command(args) -> dict:
    """Synthetic pairs and training samples per second with the predictor's architecture."""
    from .benchmark import run_training_benchmark
    from .model import check_output_size
    if args.out_size is not None:
        check_output_size(args.out_size)  # before the model is loaded
    result = run_training_benchmark(load_predictor(args), args.ct, out_size=args.out_size)
    if not args.json:
        print(f"{result['case']} on {result['device']} ({result['machine']}, {result['torch_threads']} threads)")
        print(f"  synthetic pairs: {result['synthetic_pairs_per_second']:.2f} per second; training "
              f"(batch {result['batch_size']}, {result['out_size']}^3 tiles, forward + backward + step): "
              f"{result['training_samples_per_second']:.2f} samples per second")
        feeding = result["training_samples_per_second_synthesising_in_process"]
        print(f"  training with each batch synthesised in the training process: "
              f"{feeding['without_synthesis_thread']:.2f} samples per second, "
              f"{feeding['with_synthesis_thread']:.2f} with a synthesis thread")
    return result


EVALUATION_FILES = ("evaluation.json", "evaluation.md")  # what `evaluate --out` writes


def _add_evaluate(sub) -> None:
    """Register the `evaluate` command (the paper's landmark protocol)."""
    p = sub.add_parser("evaluate", help="landmark protocol: register with elastix, compare predicted and true classes",
                       description="Register moving to fixed with elastix in each setup (affine, poorly tuned "
                                   "B-spline, well-tuned B-spline), bin the residual distance at every fixed landmark "
                                   "(<= 3 / (3, 6] / > 6 mm), query the predicted class there and report per setup and "
                                   "pooled. Or give an already registered moving image and its residuals.")
    p.add_argument("--fixed", required=True)
    p.add_argument("--moving", help="moving image to register (not needed with --registered-moving)")
    p.add_argument("--fixed-landmarks", required=True,
                   help="elastix/ITK point file, CSV (x,y,z in mm, LPS as ITK and DICOM use), .mrk.json, .fcsv")
    p.add_argument("--moving-landmarks", help="corresponding moving landmarks (same formats)")
    p.add_argument("--setups",
                   help="comma-separated elastix setups, any of affine, bspline_poor, bspline_tuned (default: all)")
    p.add_argument("--registered-moving", help="moving image already registered to the fixed image")
    p.add_argument("--residuals", help="with --registered-moving: CSV with the residual (mm) of each fixed landmark")
    p.add_argument("--mask", help="mask for the prediction (default: automatic lung mask)")
    p.add_argument("--out", help="folder for evaluation.json and evaluation.md")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=WEIGHTS",
                   help="also score these weights on the same registrations (repeatable; for ablations)")
    add_model_options(p)


def _compared_predictors(args) -> dict:
    """Predictors for --compare NAME=WEIGHTS options."""
    from .inference import MisalignmentPredictor
    compared = {}
    for item in args.compare:
        name, _, path = item.partition("=")
        if not (name and path):
            raise InputError(f"--compare {item!r}: write NAME=WEIGHTS, e.g. single_cnn=runs/single/weights.safetensors")
        compared[name] = MisalignmentPredictor.load(path, device=args.device, max_memory_gb=args.max_memory,
                                                    amp=args.amp)
    return compared


def run_evaluate(args) -> dict:
    """Run the landmark protocol."""
    import numpy as np
    from .imageio import read_image, write_bytes
    from .landmark_evaluation import (SETUPS, elastix_module, evaluate_landmarks, markdown_table, score,
                                      warn_if_outside_mask, with_comparisons)
    from .landmarks import check_inside, read_landmarks
    _check_evaluation_mode(args)
    if not args.registered_moving:
        elastix_module()  # missing: said before --out is made, with nothing to write there
    out = output_folder(args.out, *EVALUATION_FILES) if args.out else None
    pair = landmark_pair_beside(args.fixed)  # read before any work
    fixed = read_image(args.fixed)
    mask = read_image(args.mask) if args.mask else None
    fixed_points = read_landmarks(args.fixed_landmarks, fixed)
    check_inside(fixed_points, fixed, args.fixed_landmarks)
    predictor = load_predictor(args)
    compared = _compared_predictors(args)
    if args.registered_moving:
        residual = np.asarray(read_residuals(args.residuals))
        if len(residual) != len(fixed_points):
            raise InputError(f"{args.residuals}: {len(residual)} residuals for {len(fixed_points)} landmarks")
        registered = read_image(args.registered_moving)
        result = with_comparisons({name: {"given": score(model, fixed, registered, fixed_points, residual, mask)}
                                   for name, model in dict({None: predictor}, **compared).items()})
        setups = None
    else:
        moving = read_image(args.moving)
        moving_points = read_landmarks(args.moving_landmarks, moving)
        if len(moving_points) != len(fixed_points):
            raise InputError(f"{len(fixed_points)} fixed landmarks but {len(moving_points)} moving landmarks; "
                             "they must correspond one to one")
        check_inside(moving_points, moving, args.moving_landmarks)
        setups = [s.strip() for s in (args.setups or ",".join(SETUPS)).split(",") if s.strip()]
        unknown = [s for s in setups if s not in SETUPS]
        if not setups:
            raise InputError(f"--setups {args.setups!r} names no setup; choose from {', '.join(SETUPS)}")
        if unknown:
            raise InputError(f"unknown setup(s) {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
        result = evaluate_landmarks(predictor, fixed, moving, fixed_points, moving_points, setups, mask,
                                    progress=progress_bar(not args.json), compared=compared)
    warn_if_outside_mask(result, given_mask=mask is not None)
    result["provenance"] = {"weights_sha256": predictor.weights_sha256, "setups": setups,
                            "registered_by": "given residuals" if setups is None else "elastix",
                            "pair": pair}
    table = markdown_table(result)
    if out is not None:
        write_bytes(json.dumps(result, indent=1).encode(), out / "evaluation.json")
        write_bytes(table.encode(), out / "evaluation.md")
    if not args.json:
        print(table)
    return result


# The two protocols of `evaluate`, by the option naming the moving image: the options each needs, those it would
# ignore, and why.
EVALUATION_MODES = {
    "--registered-moving": (("--residuals",), ("--moving", "--moving-landmarks", "--setups"),
                            "its residuals are given"),
    "--moving": (("--moving", "--moving-landmarks"), ("--residuals",),
                 "elastix registers it and the moving landmarks give the residuals"),
}


def _check_evaluation_mode(args) -> None:
    """Raise InputError, before any work, when the chosen protocol (given residuals with --registered-moving, or
    elastix with --moving) lacks an option, is given one that it would ignore, or gets the fixed scan as moving."""
    mode = "--registered-moving" if args.registered_moving else "--moving"
    needed, ignored, why = EVALUATION_MODES[mode]
    missing = [option for option in needed if not _option_value(args, option)]
    if missing:
        raise InputError("--registered-moving needs --residuals (one residual in mm per fixed landmark)"
                         if args.registered_moving else
                         f"give {' and '.join(missing)} (or --registered-moving with --residuals)")
    contradicting = [option for option in ignored if _option_value(args, option) is not None]
    if contradicting:
        raise InputError(f"{' and '.join(contradicting)} cannot go with {mode} ({why}); leave "
                         f"{'it' if len(contradicting) == 1 else 'them'} out")
    check_two_scans(f"--fixed and {mode}", args.fixed, _option_value(args, mode))


def _option_value(args, option: str):
    """The parsed value of a command-line option (None when not given)."""
    return getattr(args, option[2:].replace("-", "_"))


def landmark_pair_beside(fixed_path):
    """The description `make-landmark-pair` wrote beside a fixed image, or None when it is not from such a pair."""
    description = Path(fixed_path).resolve().parent / "landmark_pair.json"
    if not description.is_file():
        return None
    try:
        return json.loads(description.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{description}: not a readable landmark pair description ({exc}); write it again with "
                         "`make-landmark-pair`, or remove it") from None


def read_residuals(path) -> list:
    """One residual distance (mm) per fixed landmark from a CSV: its only column, or, under a header row, the one
    column whose name holds "residual" (e.g. landmark,residual_mm)."""
    import csv
    from .landmarks import text_of
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a CSV with one residual (mm) per fixed landmark")
    rows = [(i + 1, row) for i, row in enumerate(csv.reader(text_of(path).splitlines())) if "".join(row).strip()]
    column = 0
    if rows and not all(_is_number(field) for field in rows[0][1]):
        header = [name.strip() for name in rows.pop(0)[1]]
        named = [j for j, name in enumerate(header) if "residual" in name.lower()]
        if len(header) > 1 and len(named) != 1:
            raise InputError(f"{path}: columns {', '.join(header)}: name exactly one of them residual_mm (the "
                             "residual in mm of each fixed landmark), or give that column alone")
        column = named[0] if named else 0
    elif rows and len(rows[0][1]) > 1:
        raise InputError(f"{path}: {len(rows[0][1])} columns and no header row; give one residual (mm) per row, or a "
                         "header row naming the residual column residual_mm")
    values = []
    for line, row in rows:
        field = row[column].strip() if column < len(row) else ""
        if not _is_number(field):
            raise InputError(f"{path}:{line}: cannot parse {field!r} as a residual in mm")
        value = float(field)
        if not value >= 0.0 or value == float("inf"):
            raise InputError(f"{path}:{line}: a residual is a distance in mm (zero or more), got {field!r}")
        values.append(value)
    return values


def _is_number(text: str) -> bool:
    """Whether a CSV field holds a number (nan and inf included: they are refused as residuals with their line)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _add_ablation(sub) -> None:
    """Register the `ablation` command."""
    p = sub.add_parser("ablation", help="train the three architectures the same way and compare them on a held-out CT",
                       description="Single-resolution CNN, multi-resolution CNN without LSTM and the hierarchical "
                                   "ConvLSTM, same data, steps and seeds; writes ablation.json and ablation.md. "
                                   "Re-running resumes.")
    p.add_argument("--out", required=True,
                   help="folder: a run folder per architecture (as `train --out`), ablation.json and ablation.md")
    p.add_argument("--ct", action="append", default=[], help="training CT (file or DICOM folder); repeatable")
    p.add_argument("--heldout-ct", required=True, help="CT the comparison is made on; never trained on")
    p.add_argument("--phantoms", type=int, default=2, help="number of procedural phantoms (seeds 0..N-1; default 2)")
    p.add_argument("--steps", type=int, default=400, help="training steps of each architecture (default 400)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per training step (default 4)")
    p.add_argument("--samples", type=int, default=48,
                   help="synthetic pairs from the held-out CT each model is scored on (default 48)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of torch and SimpleITK (default 0: all physical cores available)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_ablation_command(args) -> dict:
    """Run the ablation."""
    from .ablation import run_ablation
    from .model import ModelConfig
    from .release import check_heldout_unseen
    from .training import TrainConfig
    check_training_options(args)
    check_heldout_unseen(args.heldout_ct, args.ct)
    set_threads(args.threads)
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size,
                               ct_paths=[str(Path(p).resolve()) for p in args.ct],
                               phantom_seeds=list(range(args.phantoms)))
    summary = run_ablation(train_config, args.heldout_ct, args.out, args.samples,
                           ModelConfig(features=12, hidden=12), args.device)
    if not args.json:
        from .ablation import ablation_markdown
        print(ablation_markdown(summary))
    return summary


EVALUATION_COMMANDS = {"evaluate-synthetic": (_add_evaluate_synthetic, run_evaluate_synthetic),
                       "calibrate": (_add_calibrate, run_calibrate),
                       "release": (_add_release, run_release),
                       "card-landmarks": (_add_card_landmarks, run_card_landmarks),
                       "benchmark": (_add_benchmark, run_benchmark_command),
                       "evaluate": (_add_evaluate, run_evaluate), "ablation": (_add_ablation, run_ablation_command)}
