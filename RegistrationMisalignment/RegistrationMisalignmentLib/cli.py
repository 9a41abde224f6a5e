"""Command line: `registration-misalignment demo | predict | train`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from .errors import InputError

_OPEN_BARS = []


def _add_device(parser: argparse.ArgumentParser) -> None:
    """Add the --device option."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"],
                        help="where the network runs (default: auto = GPU if available)")


def _add_train(sub) -> None:
    """Register the `train` command."""
    p = sub.add_parser("train", help="train a model on synthetic pairs made from CTs and phantoms",
                       description="Train on synthetic pairs (real CTs warped by artificial fields, plus "
                                   "procedural phantoms). Re-running the same command resumes.")
    p.add_argument("--out", required=True, help="run folder (checkpoints, history, exported weights)")
    p.add_argument("--ct", action="append", default=[], help="training CT (file or DICOM folder); repeatable")
    p.add_argument("--phantoms", type=int, default=2, help="number of procedural phantoms (seeds 0..N-1)")
    p.add_argument("--architecture", default="hierarchical_lstm",
                   choices=["hierarchical_lstm", "multires_cnn", "single_cnn"])
    p.add_argument("--features", type=int, default=12, help="channels per encoder layer")
    p.add_argument("--hidden", type=int, default=12, help="channels of the recurrent state")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out-size", type=int, default=32, help="S1 output tile edge per sample (multiple of 8)")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--validate-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    _add_device(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def run_train(args) -> dict:
    """Train a model from the parsed arguments."""
    from .model import ModelConfig
    from .sources import load_sources
    from .training import TrainConfig, train
    _set_threads(args.threads)
    model_config = ModelConfig(architecture=args.architecture, features=args.features, hidden=args.hidden)
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, out_size=args.out_size,
                               learning_rate=args.learning_rate, validate_every=args.validate_every,
                               seed=args.seed, ct_paths=[str(p) for p in args.ct],
                               phantom_seeds=list(range(args.phantoms)))
    sources = load_sources(train_config.ct_paths, train_config.phantom_seeds)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = train(sources, model_config, train_config, args.out, device=args.device, progress=True, log=log)
    return {k: v for k, v in result.items() if k != "history"}


def _set_threads(threads: int) -> None:
    """Use `threads` CPU threads for torch (0 = leave torch's default: all cores)."""
    if threads:
        import torch
        torch.set_num_threads(threads)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add --weights, --device, --max-memory and --threads."""
    parser.add_argument("--weights", help="weights file (.safetensors; default: the released model)")
    _add_device(parser)
    parser.add_argument("--max-memory", type=float, default=2.0, metavar="GIB",
                        help="memory budget that sets the tile size (default 2 GiB)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def _load_predictor(args):
    """The predictor from --weights / --device / --max-memory / --threads."""
    from .inference import MisalignmentPredictor
    _set_threads(args.threads)
    return MisalignmentPredictor.load(args.weights, device=args.device, max_memory_gb=args.max_memory)


def _progress_bar(enabled: bool):
    """A progress callback drawing a tqdm bar on stderr (or None when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm
    bar = tqdm(total=100, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}", file=sys.stderr,
               disable=None, leave=False)
    _OPEN_BARS.append(bar)

    def update(fraction: float, message: str) -> None:
        bar.set_description_str(message)
        bar.update(int(round(100 * fraction)) - bar.n)
        if fraction >= 1.0:
            bar.close()
    return update


def _progress_lines(fraction: float, message: str) -> None:
    """Machine-readable progress on stderr, one line per update."""
    print(f"progress {fraction:.3f} {message}", file=sys.stderr, flush=True)


def _close_bars() -> None:
    """Close progress bars left open by a failed command, so the error stands on its own line."""
    while _OPEN_BARS:
        _OPEN_BARS.pop().close()


def _add_predict(sub) -> None:
    """Register the `predict` command."""
    p = sub.add_parser("predict", help="predict the misalignment map of a registered pair",
                       description="Predict correct / poor / wrong regions of a moving CT registered to a fixed CT.")
    p.add_argument("--fixed", required=True, help="fixed CT (NRRD, NIfTI, MHA, ... or a DICOM folder)")
    p.add_argument("--moving", required=True, help="moving CT, already registered to the fixed CT")
    p.add_argument("--output", required=True, help="label map to write (e.g. labels.nrrd): 0 not evaluated, "
                                                   "1 correct, 2 poor, 3 wrong")
    p.add_argument("--mask", help="region to evaluate (non-zero voxels; default: automatic lung mask)")
    p.add_argument("--probabilities", help="also write the class probabilities (3-component vector image)")
    p.add_argument("--progress-lines", action="store_true",
                   help="report progress as 'progress FRACTION MESSAGE' lines on stderr (for programs)")
    _add_model_options(p)


def run_predict(args) -> dict:
    """Predict a pair and write the label map (and probabilities) atomically."""
    from .imageio import check_output_path, read_image, write_image
    for path in (args.output, args.probabilities):
        if path:
            check_output_path(path)
    fixed, moving = read_image(args.fixed), read_image(args.moving)
    mask = read_image(args.mask) if args.mask else None
    predictor = _load_predictor(args)
    progress = _progress_lines if args.progress_lines else _progress_bar(not args.json)
    result = predictor.predict(fixed, moving, mask=mask, progress=progress)
    write_image(result.labels, args.output)
    if args.probabilities:
        write_image(result.probabilities, args.probabilities)
    summary = dict(result.summary, output=args.output, probabilities=args.probabilities)
    if not args.json:
        print(_class_table(summary))
    return summary


def _class_table(summary: dict) -> str:
    """Human-readable lines: mL and percentage of the mask per class."""
    lines = [f"evaluated {summary['mask_ml']:.1f} mL"]
    for name, c in summary["classes"].items():
        lines.append(f"  {name:8s} {c['ml']:9.1f} mL  {100 * c['fraction']:5.1f} %")
    return "\n".join(lines)


def _add_demo(sub) -> None:
    """Register the `demo` command."""
    p = sub.add_parser("demo", help="deform a CT with a known field, predict, and compare with the truth",
                       description="Deform the built-in chest phantom (or --ct) with a known synthetic field, "
                                   "predict the misalignment map, write NRRDs and a PNG, print the agreement.")
    p.add_argument("--ct", help="use this CT instead of the procedural phantom")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--seed", type=int, default=0, help="phantom and field seed")
    p.add_argument("--field", default="single_frequency",
                   choices=["single_frequency", "mixed_frequency", "respiratory", "zero"])
    p.add_argument("--max-mm", type=float, default=12.0, help="largest displacement of the field (mm)")
    _add_model_options(p)


def run_demo_command(args) -> dict:
    """Run the demo and print the agreement with the known truth."""
    from .demo import run_demo
    predictor = _load_predictor(args)
    result = run_demo(predictor, args.out, args.ct, args.seed, args.field, args.max_mm,
                      progress=_progress_bar(not args.json))
    if not args.json:
        report = result["agreement"]
        print(f"wrote {', '.join(result['files'].values())}")
        print(f"agreement with the known field inside the lungs ({report['n']} voxels): "
              f"accuracy {100 * report['accuracy']:.1f} %, average F1 {100 * report['average_f1']:.1f} %")
        for name, c in report["per_class"].items():
            print(f"  {name:8s} precision {100 * c['precision']:5.1f} %  recall {100 * c['recall']:5.1f} %  "
                  f"F1 {100 * c['f1']:5.1f} %  ({c['support']} voxels)")
    return result


def _add_evaluate_synthetic(sub) -> None:
    """Register the `evaluate-synthetic` command."""
    p = sub.add_parser("evaluate-synthetic", help="metrics on synthetic pairs from a CT the model did not train on",
                       description="Warp a held-out CT with reproducible synthetic fields (all families) and "
                                   "report accuracy, per-class precision/recall/F1 and confusion matrices at "
                                   "lung voxels (all, and class-stratified points).")
    p.add_argument("--ct", required=True, help="held-out CT (file or DICOM folder)")
    p.add_argument("--samples", type=int, default=48, help="number of synthetic pairs (tiles)")
    p.add_argument("--seed", type=int, default=0)
    _add_model_options(p)


def run_evaluate_synthetic(args) -> dict:
    """Evaluate the model on synthetic pairs from a held-out CT."""
    from .checkpoint import load_model, released_weights_path, sha256_of
    from .devices import resolve_device
    from .evaluation import evaluate_synthetic
    from .imageio import read_image
    from .sources import source_from_image
    _set_threads(args.threads)
    source = source_from_image(str(args.ct), read_image(args.ct))
    weights = args.weights or released_weights_path()
    result = evaluate_synthetic(load_model(weights), source, args.samples, seed=args.seed,
                                device=resolve_device(args.device), progress=not args.json)
    result["weights_sha256"] = sha256_of(weights)
    if not args.json:
        for key in ("all_lung_voxels", "class_stratified_points"):
            r = result[key]
            print(f"{key}: n={r['n']} accuracy {100 * r['accuracy']:.1f} %  average F1 {100 * r['average_f1']:.1f} %")
    return result


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
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")


def run_release(args) -> dict:
    """Release a run."""
    from .release import release
    _set_threads(args.threads)
    card = release(args.run, args.weights_out, args.heldout_ct, args.samples, args.training_command)
    return {"sha256": card["sha256"], "heldout_synthetic": card["heldout_synthetic"]["all_lung_voxels"]}


def _add_benchmark(sub) -> None:
    """Register the `benchmark` command."""
    p = sub.add_parser("benchmark", help="time dense inference against per-patch evaluation, memory and FLOPs",
                       description="On a CT (default: the demo phantom) warped by a synthetic field: preprocessing "
                                   "times, dense tiled inference (time, voxels/s, peak memory, FLOP/s), the paper's "
                                   "per-patch evaluation on sampled blocks scaled to the volume, and their agreement.")
    p.add_argument("--ct", help="CT to benchmark on (e.g. ../shared/data/thorax_nsclc_r01-001.nii.gz)")
    p.add_argument("--blocks", type=int, default=64, help="8^3 blocks evaluated the per-patch way")
    _add_model_options(p)


def run_benchmark_command(args) -> dict:
    """Run the benchmark and print its main figures."""
    from .benchmark import run_benchmark
    result = run_benchmark(_load_predictor(args), args.ct, args.blocks)
    if not args.json:
        s = result["seconds"]
        print(f"{result['case']} on {result['device']} ({result['machine']}, {result['torch_threads']} threads)")
        print(f"  preprocessing {s['preprocessing_checks_masks_resample'] + s['pyramid']:.1f} s, dense network "
              f"{s['dense_network']:.1f} s, back to fixed grid {s['resample_to_fixed_grid']:.1f} s, "
              f"end to end {s['end_to_end_without_read']:.1f} s (+ read {s['read']:.1f} s)")
        print(f"  per-patch (estimated) {s['per_patch_estimated_whole_volume']:.1f} s: dense is "
              f"{result['speedup_dense_over_per_patch']:.1f}x faster, max probability difference "
              f"{result['max_probability_difference_dense_vs_per_patch']:.2e}")
        print(f"  {result['flops_per_output_voxel'] / 1e3:.0f} kFLOP per voxel, "
              f"{result['achieved_flops_per_second'] / 1e9:.1f} GFLOP/s "
              f"({100 * result['fraction_of_matmul_reference']:.0f} % of a float32 matmul), "
              f"peak RSS {result['peak_rss_bytes'] / 2 ** 30:.2f} GiB")
    return result


def _add_evaluate(sub) -> None:
    """Register the `evaluate` command (the paper's landmark protocol)."""
    p = sub.add_parser("evaluate", help="landmark protocol: register with elastix, compare predicted and true classes",
                       description="Register moving to fixed with elastix in each setup (affine, poorly tuned "
                                   "B-spline, well-tuned B-spline), bin the residual distance at every fixed landmark "
                                   "(<= 3 / (3, 6] / > 6 mm), query the predicted class there and report per setup and "
                                   "pooled. Or give an already registered moving image and its residuals.")
    p.add_argument("--fixed", required=True)
    p.add_argument("--moving", help="moving image to register (not needed with --registered-moving)")
    p.add_argument("--fixed-landmarks", required=True, help="elastix/ITK point file, CSV (x,y,z mm), .mrk.json, .fcsv")
    p.add_argument("--moving-landmarks", help="corresponding moving landmarks (same formats)")
    p.add_argument("--setups", default="affine,bspline_poor,bspline_tuned", help="comma-separated elastix setups")
    p.add_argument("--registered-moving", help="moving image already registered to the fixed image")
    p.add_argument("--residuals", help="with --registered-moving: CSV with the residual (mm) of each fixed landmark")
    p.add_argument("--mask", help="mask for the prediction (default: automatic lung mask)")
    p.add_argument("--out", help="folder for evaluation.json and evaluation.md")
    _add_model_options(p)


def run_evaluate(args) -> dict:
    """Run the landmark protocol."""
    import numpy as np
    from .imageio import read_image, write_bytes
    from .landmark_evaluation import SETUPS, evaluate_landmarks, markdown_table, pooled, score
    from .landmarks import check_inside, read_landmarks
    fixed = read_image(args.fixed)
    mask = read_image(args.mask) if args.mask else None
    fixed_points = read_landmarks(args.fixed_landmarks, fixed)
    check_inside(fixed_points, fixed, args.fixed_landmarks)
    predictor = _load_predictor(args)
    if args.registered_moving:
        if not args.residuals:
            raise InputError("--registered-moving needs --residuals (one residual in mm per fixed landmark)")
        residual = np.asarray(read_residuals(args.residuals))
        if len(residual) != len(fixed_points):
            raise InputError(f"{args.residuals}: {len(residual)} residuals for {len(fixed_points)} landmarks")
        setups = {"given": score(predictor, fixed, read_image(args.registered_moving), fixed_points, residual, mask)}
        result = {"setups": setups, "total": pooled(setups)}
    else:
        if not (args.moving and args.moving_landmarks):
            raise InputError("give --moving and --moving-landmarks (or --registered-moving with --residuals)")
        moving = read_image(args.moving)
        moving_points = read_landmarks(args.moving_landmarks, moving)
        if len(moving_points) != len(fixed_points):
            raise InputError(f"{len(fixed_points)} fixed landmarks but {len(moving_points)} moving landmarks; "
                             "they must correspond one to one")
        check_inside(moving_points, moving, args.moving_landmarks)
        setups = [s.strip() for s in args.setups.split(",") if s.strip()]
        unknown = [s for s in setups if s not in SETUPS]
        if unknown:
            raise InputError(f"unknown setup(s) {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
        result = evaluate_landmarks(predictor, fixed, moving, fixed_points, moving_points, setups, mask,
                                    progress=_progress_bar(not args.json))
    table = markdown_table(result)
    if args.out:
        from pathlib import Path
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_bytes(json.dumps(result, indent=1).encode(), Path(args.out) / "evaluation.json")
        write_bytes(table.encode(), Path(args.out) / "evaluation.md")
    if not args.json:
        print(table)
    return result


def read_residuals(path) -> list:
    """One residual distance (mm) per row of a CSV (a header row is allowed)."""
    values = []
    from pathlib import Path
    for i, line in enumerate(Path(path).read_text().splitlines()):
        field = line.split(",")[0].strip()
        if not field:
            continue
        try:
            values.append(float(field))
        except ValueError:
            if i == 0:
                continue
            raise InputError(f"{path}:{i + 1}: cannot parse {field!r} as a residual in mm") from None
    return values


def _add_ablation(sub) -> None:
    """Register the `ablation` command."""
    p = sub.add_parser("ablation", help="train the three architectures the same way and compare them on a held-out CT",
                       description="Single-resolution CNN, multi-resolution CNN without LSTM and the hierarchical "
                                   "ConvLSTM, same data, steps and seeds; writes ablation.json and ablation.md. "
                                   "Re-running resumes.")
    p.add_argument("--out", required=True)
    p.add_argument("--ct", action="append", default=[], help="training CT; repeatable")
    p.add_argument("--heldout-ct", required=True)
    p.add_argument("--phantoms", type=int, default=2)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--threads", type=int, default=0)
    _add_device(p)
    p.add_argument("--json", action="store_true")


def run_ablation_command(args) -> dict:
    """Run the ablation."""
    from .ablation import run_ablation
    from .model import ModelConfig
    from .training import TrainConfig
    _set_threads(args.threads)
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size, ct_paths=[str(p) for p in args.ct],
                               phantom_seeds=list(range(args.phantoms)))
    summary = run_ablation(train_config, args.heldout_ct, args.out, args.samples,
                           ModelConfig(features=12, hidden=12), args.device)
    if not args.json:
        from .ablation import ablation_markdown
        print(ablation_markdown(summary))
    return summary


COMMANDS = {"demo": (_add_demo, run_demo_command), "predict": (_add_predict, run_predict),
            "train": (_add_train, run_train),
            "evaluate-synthetic": (_add_evaluate_synthetic, run_evaluate_synthetic),
            "release": (_add_release, run_release), "benchmark": (_add_benchmark, run_benchmark_command),
            "evaluate": (_add_evaluate, run_evaluate), "ablation": (_add_ablation, run_ablation_command)}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="registration-misalignment",
                                     description="Show where a chest-CT registration is wrong: a dense map of "
                                                 "correct (<= 3 mm), poor (3-6 mm] and wrong (> 6 mm) regions.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    """Entry point: run one command; bad input gives a one-line error and exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    try:
        result = COMMANDS[args.command][1](args)
    except InputError as exc:
        _close_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_bars()
        print("error: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
