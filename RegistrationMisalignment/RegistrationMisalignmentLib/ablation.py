"""Ablation: the three architectures trained with the same data and budget, compared on a held-out CT."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from . import __version__
from .evaluation import evaluate_synthetic
from .imageio import read_image, write_bytes
from .checkpoint import load_model, sha256_of
from .model import ARCHITECTURES, ModelConfig
from .sources import source_from_image, training_sources
from .training import TrainConfig, check_before_loading_sources, check_not_a_file, is_finished, train


def run_ablation(train_config: TrainConfig, heldout_ct, out_dir, samples: int = 48, base: ModelConfig = None,
                 device="auto", log=print) -> dict:
    """Train every architecture in `out_dir/<architecture>` (resumable) and evaluate each on `heldout_ct`; the run
    folders are checked as `train` checks its own, and the CTs read (the training ones only for a run to train),
    before any folder is made."""
    out_dir = Path(out_dir)
    check_not_a_file(out_dir)
    configs = {name: replace(base or ModelConfig(), architecture=name) for name in ARCHITECTURES}
    states = {name: check_before_loading_sources(out_dir / name, config, train_config)
              for name, config in configs.items()}
    heldout = source_from_image(Path(heldout_ct).name, read_image(heldout_ct))
    finished = all(is_finished(state, out_dir / name, train_config) for name, state in states.items())
    sources, fingerprints = [], []
    if not finished:
        sources, fingerprints = training_sources(train_config.ct_paths, train_config.phantom_seeds,
                                                 train_config.out_size)
    train_config = replace(train_config, ct_fingerprints=fingerprints)  # compared with each run's by `train`
    results = {}
    for architecture, config in configs.items():
        run = out_dir / architecture
        trained = train(sources, config, train_config, run, device=device, progress=False,
                        log=lambda line, name=architecture: log(f"{name}: {line}"))
        model = load_model(run / "weights.safetensors")
        results[architecture] = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "training_seconds": trained["history"][-1]["seconds"] if trained["history"] else None,
            "heldout": heldout_evaluation(model, run, heldout, samples, log),
        }
        log(f"{architecture}: held-out average F1 (class-stratified points) "
            f"{results[architecture]['heldout']['class_stratified_points']['average_f1']:.3f}")
    summary = {"train_config": train_config.__dict__, "heldout_ct": str(heldout_ct), "samples": samples,
               "results": results}
    write_bytes(json.dumps(summary, indent=1).encode(), out_dir / "ablation.json")
    write_bytes(ablation_markdown(summary).encode(), out_dir / "ablation.md")
    return summary


def heldout_evaluation(model, run: Path, heldout, samples: int, log) -> dict:
    """`evaluate_synthetic` of the run's weights on the held-out source, reused from `run/heldout.json` when it was
    made for the same weights, held-out CT, sample count and package version (a finished ablation reruns in
    seconds)."""
    key = {"weights_sha256": sha256_of(run / "weights.safetensors"), "heldout": heldout.name, "samples": samples,
           "version": __version__}
    stored = run / "heldout.json"
    if stored.exists():
        previous = json.loads(stored.read_text())
        if previous.get("key") == key:
            log(f"{run.name}: reusing its held-out evaluation ({stored})")
            return previous["result"]
    result = evaluate_synthetic(model, heldout, samples)
    write_bytes(json.dumps({"key": key, "result": result}, indent=1).encode(), stored)
    return result


def ablation_markdown(summary: dict) -> str:
    """One table: each architecture's held-out accuracy and F1 (all lung voxels and stratified points)."""
    lines = ["| architecture | parameters | training s | accuracy (all) | avg F1 (all) | accuracy (stratified) "
             "| avg F1 (stratified) |", "|---|---|---|---|---|---|---|"]
    for name, r in summary["results"].items():
        a, s = r["heldout"]["all_lung_voxels"], r["heldout"]["class_stratified_points"]
        lines.append(f"| {name} | {r['parameters']} | {r['training_seconds'] or 0:.0f} | {100 * a['accuracy']:.1f} % "
                     f"| {100 * a['average_f1']:.1f} % | {100 * s['accuracy']:.1f} % | {100 * s['average_f1']:.1f} % |")
    return "\n".join(lines) + "\n"
