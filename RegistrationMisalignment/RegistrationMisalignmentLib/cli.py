"""Command line: `registration-misalignment demo | predict | batch | train | evaluate | evaluate-synthetic | ...`."""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .cli_common import (OneLineErrorParser, Terminated, add_device, add_model_options, check_threads, check_two_scans,
                         close_bars, load_predictor, output_folder, progress_bar, progress_lines, require_at_least,
                         require_below, require_positive, set_threads, sigterm_as_interrupt)
from .cli_batch import BATCH_COMMANDS
from .cli_training import check_training_options
from .cli_evaluation import EVALUATION_COMMANDS
from .cli_robustness import ROBUSTNESS_COMMANDS
from .cli_landmark_pair import LANDMARK_PAIR_COMMANDS
from . import __version__
from .errors import CapturedWarnings, InputError, out_of_memory_text, show_warnings


def _add_train(sub) -> None:
    """Register the `train` command."""
    p = sub.add_parser("train", help="train a model on synthetic pairs made from CTs and phantoms",
                       description="Train on synthetic pairs (real CTs warped by artificial fields, plus "
                                   "procedural phantoms). Re-running the same command resumes.")
    p.add_argument("--out", required=True, help="run folder (checkpoints, history, exported weights)")
    p.add_argument("--ct", action="append", default=[], help="training CT (file or DICOM folder); repeatable")
    p.add_argument("--phantoms", type=int, default=2, help="number of procedural phantoms (seeds 0..N-1; default 2)")
    p.add_argument("--sources", action="append", default=[],
                   help="sources file from `cache-sources` (repeatable); needs no SimpleITK")
    p.add_argument("--init-weights",
                   help="fine-tune: start from these weights ('released' = the bundled model) instead of random "
                        "ones; the architecture comes from them (a lower --learning-rate, e.g. 5e-4, suits this)")
    p.add_argument("--architecture", choices=["hierarchical_lstm", "multires_cnn", "single_cnn"],
                   help="network (default hierarchical_lstm, the paper's method; the released model is multires_cnn)")
    p.add_argument("--features", type=int, help="channels per encoder layer (default 12)")
    p.add_argument("--hidden", type=int, help="channels of the recurrent state (default 12)")
    p.add_argument("--steps", type=int, default=2000,
                   help="training steps (default 2000); a finished run's folder trains on when it grows (the cosine "
                        "learning-rate schedule is then spread over the new total)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per training step (default 4)")
    p.add_argument("--out-size", type=int, default=32,
                   help="S1 output tile edge per sample (multiple of 8; default 32)")
    p.add_argument("--learning-rate", type=float, default=2e-3,
                   help="peak learning rate, reached after 50 warm-up steps, then a cosine decay to 5 %% of it "
                        "(default 2e-3)")
    p.add_argument("--validate-every", type=int, default=100,
                   help="steps between validations and checkpoints (default 100)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after this many minutes, with the checkpoint saved (rerunning resumes); for a "
                        "scheduler's time slot or a GPU lease")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights, the training tiles and the validation pairs, 0-99 (default 0)")
    p.add_argument("--density-change", type=float, default=0.0,
                   help="share of training pairs (0-1) in which one image's lungs get the density of another "
                        "breathing state, independent of the residual (default 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of torch and SimpleITK (default 0: all physical cores available)")
    p.add_argument("--loader-workers", type=int, default=0,
                   help="synthesise training pairs in this many processes while the device trains (GPU)")
    p.add_argument("--loader-device", choices=["cpu", "cuda"], default="cpu",
                   help="where the loader workers synthesise (default cpu; cuda: each worker launches its own work "
                        "on the GPU, for GPUs that train faster than one process can synthesise)")
    p.add_argument("--synthesis-thread", choices=["auto", "on", "off"], default="auto",
                   help="without loader workers, synthesise in a thread a batch or two ahead of the training step "
                        "(default auto: on a CUDA GPU only)")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")


def run_train(args) -> dict:
    """Train a model from the parsed arguments."""
    from .training import check_before_loading_sources, is_finished, train, with_fingerprints
    check_training_options(args)
    set_threads(args.threads)
    model_config, init_weights = _training_model(args)
    train_config = with_fingerprints(_train_config(args, init_weights))
    stored = check_before_loading_sources(args.out, model_config, train_config)
    sources = []
    if not is_finished(stored, args.out, train_config):
        sources, fingerprints = _training_sources(train_config)
        train_config = replace(train_config, ct_fingerprints=fingerprints)  # compared with the run's by `train`
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    result = train(sources, model_config, train_config, args.out, device=args.device, progress=True, log=log,
                   time_limit_s=None if args.time_limit is None else 60.0 * args.time_limit)
    return {k: v for k, v in result.items() if k != "history"}


def _training_sources(train_config) -> tuple:
    """The sources to train on (the CTs, the phantoms, then the cached sources files; each refused, as soon as it is
    read, when too small for the training tiles) and the CTs' content fingerprints."""
    from .source_cache import load_cached_sources
    from .synthesis import check_source_extent
    sources, fingerprints = [], []
    for path in train_config.source_files:
        cached = load_cached_sources(path)
        for source in cached:
            check_source_extent(source, train_config.out_size, f" (in --sources {path})")
        sources += cached
    if train_config.ct_paths or train_config.phantom_seeds:
        from .sources import training_sources  # SimpleITK is needed only here
        made, fingerprints = training_sources(train_config.ct_paths, train_config.phantom_seeds, train_config.out_size)
        sources = made + sources
    return sources, fingerprints


def _train_config(args, init_weights):
    """The training settings from the parsed arguments and the weights to start from (None: random)."""
    from .checkpoint import sha256_of
    from .training import TrainConfig
    return TrainConfig(steps=args.steps, batch_size=args.batch_size, out_size=args.out_size,
                       learning_rate=args.learning_rate, validate_every=args.validate_every,
                       seed=args.seed, ct_paths=[str(Path(p).resolve()) for p in args.ct],
                       phantom_seeds=list(range(args.phantoms)),
                       source_files=[str(Path(p).resolve()) for p in args.sources],
                       loader_workers=args.loader_workers, loader_device=args.loader_device,
                       density_change=args.density_change,
                       synthesis_thread={"auto": None, "on": True, "off": False}[args.synthesis_thread],
                       init_weights=str(init_weights or ""),
                       init_weights_sha256=sha256_of(init_weights) if init_weights else "",
                       commands=[args.command_line])


def _training_model(args) -> tuple:
    """The architecture to train and the weights to start from (None: random), from the parsed arguments."""
    from .checkpoint import released_weights_path
    from .model import ModelConfig
    from .training import fine_tuning_config
    requested = {"architecture": args.architecture, "features": args.features, "hidden": args.hidden}
    if not args.init_weights:
        defaults = {"architecture": "hierarchical_lstm", "features": 12, "hidden": 12}
        return ModelConfig(**{k: defaults[k] if v is None else v for k, v in requested.items()}), None
    weights = released_weights_path() if args.init_weights == "released" else Path(args.init_weights).resolve()
    return fine_tuning_config(weights, **requested), weights


def _add_cache_sources(sub) -> None:
    """Register the `cache-sources` command."""
    p = sub.add_parser("cache-sources", help="preprocess training CTs and phantoms once into one file for `train`",
                       description="Resample CTs to 1 mm, find torso and lungs, build phantoms, and save everything "
                                   "as one compressed .npz for `train --sources` (e.g. on a GPU machine without "
                                   "SimpleITK).")
    p.add_argument("--ct", action="append", default=[], help="training CT (file or DICOM folder); repeatable")
    p.add_argument("--phantoms", type=int, default=2, help="number of procedural phantoms (seeds 0..N-1)")
    p.add_argument("--out", required=True, help="sources file to write: a new name ending in .npz (an existing file "
                                                "is never replaced)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of SimpleITK (default 0: all physical cores "
                                                           "available)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_cache_sources(args) -> dict:
    """Preprocess and save the sources."""
    from .imageio import check_image_input, check_new_files, check_output_files
    from .source_cache import SOURCES_FORMAT_HINT, SOURCES_SUFFIXES, save_sources
    from .sources import fingerprinted_sources, phantom_sources
    from .training import TrainConfig
    check_output_files({"--out": args.out}, {f"the same file as --ct {ct}": ct for ct in args.ct}, SOURCES_SUFFIXES,
                       SOURCES_FORMAT_HINT)
    check_new_files("--out", args.out)
    require_at_least(0, phantoms=args.phantoms)
    if not (args.ct or args.phantoms):
        raise InputError("nothing to cache: give --ct (repeatable) or --phantoms N")
    for ct in args.ct:
        check_image_input("--ct", ct)
    set_threads(args.threads)
    cts = fingerprinted_sources(args.ct, TrainConfig.out_size)  # refused when too small for train's default tiles
    sources = [source for source, _ in cts] + phantom_sources(range(args.phantoms))
    save_sources(sources, args.out, [fingerprint for _, fingerprint in cts])
    summary = {"out": args.out, "sources": {s.name: list(s.hu.shape) for s in sources},
               "fingerprints": {source.name: fingerprint for source, fingerprint in cts}}
    if not args.json:
        print(f"wrote {args.out}: " + ", ".join(f"{name} {shape}" for name, shape in summary["sources"].items()))
    return summary


def _add_predict(sub) -> None:
    """Register the `predict` command."""
    p = sub.add_parser("predict", help="predict the misalignment map of a registered pair",
                       description="Predict correct / poor / wrong regions of a moving CT registered to a fixed CT.")
    p.add_argument("--fixed", required=True, help="fixed CT (NRRD, NIfTI, MHA, ... or a DICOM folder)")
    p.add_argument("--moving", required=True, help="moving CT, already registered to the fixed CT")
    p.add_argument("--output", required=True, help="label map to write (e.g. labels.nrrd): 0 not evaluated, "
                                                   "1 correct, 2 poor, 3 wrong")
    p.add_argument("--mask", help="region to evaluate (non-zero voxels; default: automatic lung mask)")
    p.add_argument("--transform",
                   help="registration transform to apply to --moving first: ITK/Slicer transform file (.tfm, .txt, "
                        ".h5) or displacement field image, fixed-to-moving")
    p.add_argument("--probabilities", help="also write the class probabilities (3-component vector image)")
    p.add_argument("--progress-lines", action="store_true",
                   help="report progress as 'progress FRACTION MESSAGE' lines on stderr (for programs)")
    add_model_options(p)


def run_predict(args) -> dict:
    """Predict a pair and write the label map (and probabilities) atomically, all or none."""
    from .imageio import IMAGE_FORMAT_HINT, IMAGE_OUTPUT_SUFFIXES, check_output_files, read_image, write_images
    from .transforms import read_transform
    check_two_scans("--fixed and --moving", args.fixed, args.moving)
    check_output_files({"--output": args.output, "--probabilities": args.probabilities},
                       {f"the same file as {option}": path for option, path in (
                           ("--fixed", args.fixed), ("--moving", args.moving), ("--mask", args.mask),
                           ("--transform", args.transform), ("--weights", args.weights))},
                       IMAGE_OUTPUT_SUFFIXES, IMAGE_FORMAT_HINT)
    with CapturedWarnings() as warnings:
        predictor = load_predictor(args)
        predictor.start_warming_up()  # a GPU warms up while the images are read
        fixed, moving = read_image(args.fixed), read_image(args.moving)
        mask = read_image(args.mask) if args.mask else None
        transform = read_transform(args.transform) if args.transform else None
        progress = progress_lines if args.progress_lines else progress_bar(not args.json)
        result = predictor.predict(fixed, moving, mask=mask, progress=progress, transform=transform)
    outputs = [(result.labels, args.output)] + ([(result.probabilities, args.probabilities)]
                                                if args.probabilities else [])
    write_images(outputs)
    summary = dict(result.summary, output=args.output, probabilities=args.probabilities, warnings=list(warnings))
    if not args.json:
        print(_class_table(summary))
    return summary


def _class_table(summary: dict) -> str:
    """Human-readable lines: mL and percentage of the mask per class, confidence, the regions called wrong."""
    lines = [f"evaluated {summary['mask_ml']:.1f} mL"]
    for name, c in summary["classes"].items():
        lines.append(f"  {name:8s} {c['ml']:9.1f} mL  {100 * c['fraction']:5.1f} %")
    if summary.get("mean_confidence") is not None:
        meaning = ("calibrated: the share of voxels whose class is right over many pairs, not this pair's accuracy"
                   if summary.get("calibrated") else
                   "uncalibrated weights: not the share of voxels whose class is right; calibrate with `release "
                   "--calibration-ct` or `calibrate`")
        lines.append(f"mean confidence {100 * summary['mean_confidence']:.1f} % ({meaning})")
    from .regions import regions_text  # SimpleITK: `train --sources` runs without it
    lines.append(regions_text(summary))
    return "\n".join(lines)


def _add_demo(sub) -> None:
    """Register the `demo` command."""
    p = sub.add_parser("demo", help="deform a CT with a known field, predict, and compare with the truth",
                       description="Deform the built-in chest phantom (or --ct) with a known synthetic field, "
                                   "predict the misalignment map, write NRRDs and a PNG, print the agreement.")
    p.add_argument("--ct", help="use this CT instead of the procedural phantom")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--seed", type=int, default=0, help="phantom and field seed, 0 to 2^32 - 1 (default 0)")
    p.add_argument("--field", default="single_frequency",
                   choices=["single_frequency", "mixed_frequency", "respiratory", "zero"],
                   help="family of the synthetic deformation (default single_frequency)")
    p.add_argument("--max-mm", type=float, default=12.0, help="largest displacement of the field in mm (default 12)")
    add_model_options(p)


def run_demo_command(args) -> dict:
    """Run the demo and print the agreement with the known truth."""
    from .demo import DEMO_FILES, DEMO_SEED_LIMIT, run_demo
    from .metrics import f1_text
    require_at_least(0, seed=args.seed)
    require_below(DEMO_SEED_LIMIT, "a 32-bit seed", seed=args.seed)
    require_positive(max_mm=args.max_mm)
    check_threads(args.threads)  # before the folder is made
    output_folder(args.out, *DEMO_FILES.values())
    predictor = load_predictor(args)
    result = run_demo(predictor, args.out, args.ct, args.seed, args.field, args.max_mm,
                      progress=progress_bar(not args.json))
    if not args.json:
        report = result["agreement"]
        print(f"wrote {', '.join(result['files'].values())}")
        print(f"agreement with the known field inside the lungs ({report['n']} voxels): "
              f"accuracy {100 * report['accuracy']:.1f} %, average F1 {100 * report['average_f1']:.1f} %")
        for name, c in report["per_class"].items():
            scores = "-" if f1_text(c) == "-" else (f"precision {100 * c['precision']:5.1f} %  recall "
                                                    f"{100 * c['recall']:5.1f} %  F1 {100 * c['f1']:5.1f} %")
            print(f"  {name:8s} {scores}  ({c['support']} voxels)")
    return result


COMMANDS = dict({"demo": (_add_demo, run_demo_command), "predict": (_add_predict, run_predict),
                 "train": (_add_train, run_train),
                 "cache-sources": (_add_cache_sources, run_cache_sources)}, **BATCH_COMMANDS, **EVALUATION_COMMANDS,
                **LANDMARK_PAIR_COMMANDS, **ROBUSTNESS_COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = OneLineErrorParser(prog="registration-misalignment",
                                     description="Show where a chest-CT registration is wrong: a dense map of "
                                                 "correct (<= 3 mm), poor (3-6 mm] and wrong (> 6 mm) regions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def _memory_advice(args) -> str:
    """What to change when a command ran out of memory, by the options it has."""
    given = vars(args)
    if "batch_size" in given:
        return "lower --batch-size or --out-size"
    if "max_memory" in given:
        return "lower --max-memory" + (", give a --mask of a smaller region" if "mask" in given else "") + \
            ", or crop or downsample the image"
    return "free memory, or crop or downsample the image"


def main(argv=None) -> int:
    """Entry point: run one command; bad input gives a one-line error and exit status 2 (system errors: 1); Ctrl-C
    and SIGTERM clean up and exit with 130 and 143."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["registration-misalignment", *argv])  # what `train` records in its run
    show_warnings()
    try:
        with sigterm_as_interrupt():
            result = COMMANDS[args.command][1](args)
    except InputError as exc:
        close_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory_text(exc):
            raise
        close_bars()
        print(f"error: {out_of_memory_text(exc)}; {_memory_advice(args)}", file=sys.stderr)
        return 1
    except OSError as exc:
        close_bars()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no reason given"
        print(f"error: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        close_bars()
        resume = ("; the same command resumes from the last checkpoint (one is saved every --validate-every steps; "
                  "before the first, it starts again)") if args.command in ("train", "ablation") else ""
        how = " by SIGTERM" if isinstance(exc, Terminated) else ""
        print(f"error: interrupted{how}; nothing half-written was left behind{resume}", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    status = result.pop("exit_status", 0) if isinstance(result, dict) else 0
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
