"""Release a trained run: weights (optionally calibrated), held-out evaluation, model card."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .calibration import calibrate_weights
from .checkpoint import (WEIGHTS_FORMAT_HINT, WEIGHTS_SUFFIXES, card_path, existing_card_path, load_model,
                         markdown_card_path, sha256_of, training_settings_of, weights_stem)
from .devices import machine_description
from .errors import InputError
from .evaluation import evaluate_synthetic
from .imageio import (check_image_input, check_new_files, check_output_files, check_output_path, read_image,
                      same_file, write_bytes)
from .landmark_evaluation import landmark_summary
from .metrics import band_name, errors_near_boundary_text
from .source_cache import cached_source_cts
from .sources import ct_fingerprint, source_from_image

log = logging.getLogger("RegistrationMisalignment")


def release(run_dir, weights_out, heldout_ct, samples: int = 48, command: str = "", calibration_ct=None,
            calibration_samples: int = 48, temperature_only: bool = False) -> dict:
    """Publish `run_dir`'s weights (calibrated on `calibration_ct` if given), evaluate, write the card; the weights,
    card and Markdown appear together or not at all."""
    run_dir, weights_out = Path(run_dir), Path(weights_out)
    state = _training_state(run_dir)
    train = json.loads(state["train_config"])
    check_release_paths(run_dir, weights_out, heldout_ct, calibration_ct)
    own_cts, starting_cts = training_cts(train), starting_weights_cts(train)
    heldout_image, calibration_image = read_unseen_cts(heldout_ct, calibration_ct, own_cts + starting_cts)
    if state["step"] < train["steps"]:
        log.warning(f"{run_dir} stopped at step {state['step']} of the {train['steps']} asked (a time limit or an "
                    "interruption); releasing its weights as they are (rerun its `train` command to finish it)")
    history = json.loads(state["history"])
    started, resumed = recorded_commands(train)
    run_weights = run_dir / "weights.safetensors"
    model = load_model(run_weights)
    source = source_from_image(Path(heldout_ct).name, heldout_image)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights_out.stem}.release-", dir=weights_out.parent))
    try:
        staged = staging / weights_out.name
        calibration = None
        if calibration_ct:
            calibration = calibrate_release(model, run_weights, staged, calibration_ct, calibration_image,
                                            calibration_samples, source, samples, heldout_ct, weights_out,
                                            temperature_only)
        else:
            shutil.copyfile(run_weights, staged)
        heldout = evaluate_synthetic(model, source, samples, progress=True)
        card = {
            "name": weights_stem(weights_out),
            "weights": weights_out.name,
            "sha256": sha256_of(staged),
            "architecture": model.config.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "training": train,
            **_card_cts("training_cts", "training_ct_fingerprints", own_cts),
            # what the weights a fine-tune started from were trained on
            **_card_cts("starting_weights_cts", "starting_weights_ct_fingerprints", starting_cts),
            "training_steps": state["step"],
            "training_steps_asked": train["steps"],
            "training_seconds": history[-1]["seconds"] if history else None,
            "training_machine": state.get("machine") or machine_description(),
            "validation_history": history,
            "heldout_synthetic": heldout,
            "heldout_command": f"registration-misalignment evaluate-synthetic --ct {heldout_ct} --samples {samples} "
                               f"--weights {weights_out}",
            # the command given, else the one the run recorded, with those that resumed it with other options
            "training_command": command or started,
            "training_resumed_with": [] if command else resumed,
            "calibration": calibration,
        }
        write_card(staged, card)
        for path in release_files(weights_out):
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return card


def recorded_commands(train: dict) -> tuple:
    """The `train` command line that started a run ("" when not recorded: runs of 0.6.0 and earlier, or started from
    Python) and those that resumed it with other options."""
    commands = train.get("commands") or [""]
    return commands[0], commands[1:]


def release_files(weights_out) -> list:
    """What a release writes: the weights, their JSON model card and their Markdown card."""
    return [Path(weights_out), card_path(weights_out), markdown_card_path(weights_out)]


def _training_state(run_dir: Path) -> dict:
    """The checkpoint of a training run folder, or an InputError saying what to give instead."""
    path = run_dir / "training_state.pt"
    if not path.is_file() or not (run_dir / "weights.safetensors").is_file():
        raise InputError(f"{run_dir}: not a training run (no training_state.pt and weights.safetensors); give the "
                         "--out folder of `train`")
    return torch.load(path, map_location="cpu", weights_only=True)


def training_cts(train: dict) -> list:
    """(file name, fingerprint or None) of each CT a run trained on: its --ct files and those in its sources files."""
    cts = [(Path(path).name, _fingerprint_if_there(path)) for path in train.get("ct_paths", [])]
    for sources_file in train.get("source_files", []):
        if not Path(sources_file).is_file():
            raise InputError(f"{sources_file}: the run's sources file is not there (a relative path is read from the "
                             "folder `train` ran in: release from there, or put the file back)")
        cts += [(Path(name).name, fingerprint) for name, fingerprint in cached_source_cts(sources_file)]
    return cts


def _fingerprint_if_there(path):
    """The content fingerprint of a CT file or DICOM folder, or None when it cannot be read (any more)."""
    try:
        return ct_fingerprint(read_image(path))
    except InputError:
        return None


def starting_weights_cts(train: dict) -> list:
    """(name, fingerprint or None) of the CTs that the weights a fine-tuned run started from were trained on: from
    their model card, or from the run folder they are the weights of, followed back through its own start (empty for
    random weights; a warning when they cannot be told)."""
    init = train.get("init_weights")
    if not init:
        return []
    path = existing_card_path(init)
    card = json.loads(path.read_text()) if path.is_file() else {}
    if "training_cts" in card:
        return card_training_cts(card)
    earlier = None if card else training_settings_of(init)
    if earlier is not None:
        return training_cts(earlier) + starting_weights_cts(earlier)
    log.warning(f"{init}: which CTs these starting weights were trained on is not known (no model card naming them, "
                "no training run beside them); the held-out check covers this run's own CTs only")
    return []


def _card_cts(names_key: str, fingerprints_key: str, cts: list) -> dict:
    """Card entries for (name, fingerprint) pairs: the names, and the fingerprints in the same order."""
    return {names_key: [name for name, _ in cts], fingerprints_key: [fingerprint for _, fingerprint in cts]}


def card_training_cts(card: dict) -> list:
    """(name, fingerprint or None) of every CT a model card says its weights were trained on, their start's too."""
    return (_recorded_cts(card, "training_cts", "training_ct_fingerprints")
            + _recorded_cts(card, "starting_weights_cts", "starting_weights_ct_fingerprints"))


def _recorded_cts(card: dict, names_key: str, fingerprints_key: str) -> list:
    """The (name, fingerprint) pairs that `_card_cts` put into a card (cards of 0.5.1 and earlier: names only)."""
    names = card.get(names_key) or []
    return list(zip(names, card.get(fingerprints_key) or [None] * len(names)))


def check_release_paths(run_dir: Path, weights_out: Path, heldout_ct, calibration_ct) -> None:
    """Raise InputError, before any work, for a release that would replace a file (the run's weights, an earlier
    release) or read a CT that is not there."""
    check_output_files({"--weights-out": weights_out}, {"the run's own weights": run_dir / "weights.safetensors"},
                       WEIGHTS_SUFFIXES, WEIGHTS_FORMAT_HINT)
    for path in release_files(weights_out)[1:]:  # published with the weights
        check_output_path(path)
    check_new_files("--weights-out", weights_out, release_files(weights_out))
    for option, path in (("--heldout-ct", heldout_ct), ("--calibration-ct", calibration_ct)):
        if path:
            check_image_input(option, path)


def read_unseen_cts(heldout_ct, calibration_ct, seen: list) -> tuple:
    """The held-out and calibration (or None) images, read once; InputError if one was trained on, or they are one."""
    heldout = read_image(heldout_ct)
    fingerprint = ct_fingerprint(heldout)
    check_unseen("--heldout-ct", heldout_ct, fingerprint, seen)
    if not calibration_ct:
        return heldout, None
    calibration = read_image(calibration_ct)
    if same_file(calibration_ct, heldout_ct) or ct_fingerprint(calibration) == fingerprint:
        raise InputError(f"--calibration-ct {calibration_ct} is the held-out CT; calibrate on a training CT so that "
                         "the held-out figures stay unseen")
    return heldout, calibration


def check_heldout_unseen(heldout_ct, training_cts) -> None:
    """Raise InputError when the held-out CT is one of these training CT files (paths), or has one's file name."""
    for path in training_cts:
        if same_file(heldout_ct, path):
            _refuse_seen("--heldout-ct", heldout_ct, path)
    check_unseen("--heldout-ct", heldout_ct, None, [(path, None) for path in training_cts])


def check_unseen(option: str, ct, fingerprint, seen: list) -> None:
    """Raise InputError when a CT has the voxels (lacking a fingerprint: the name) of a `seen` (name, fingerprint)."""
    for name, known in seen:
        if fingerprint is not None and known is not None:
            if fingerprint == known:
                _refuse_seen(option, ct, name)
        elif Path(ct).name == Path(name).name:
            raise InputError(f"{option} {ct} has the name of a training CT of this run or of the weights it started "
                             f"from ({Path(name).name}); that CT is recorded without a fingerprint of its voxels, so "
                             "this matched on the name only: if it is another scan (e.g. DICOM folders all called "
                             "`series`), rename its file or folder")


def _refuse_seen(option: str, ct, name) -> None:
    """Raise the InputError for a CT that is the training CT `name`."""
    raise InputError(f"{option} {ct} is a training CT of this run or of the weights it started from "
                     f"({Path(name).name}); evaluate on a CT they never saw")


def _stopped_early(card: dict) -> str:
    """The card's note for a run released before its last step (empty otherwise)."""
    asked = card.get("training_steps_asked")
    if asked is None or card["training_steps"] >= asked:
        return ""
    return f" Stopped early: {card['training_steps']} of the {asked} steps asked."


def write_card(weights, card: dict) -> None:
    """Write the model card of `weights`: JSON (with the sha256 checked on load) and Markdown, atomically."""
    write_bytes(json.dumps(card, indent=1).encode(), card_path(weights))
    write_bytes(markdown_card(card).encode(), markdown_card_path(weights))


def calibrate_release(model, run_weights, staged_weights, calibration_ct, calibration_image, calibration_samples: int,
                      heldout_source, samples: int, heldout_ct, weights_out, temperature_only: bool = False) -> dict:
    """Held-out scores uncalibrated, then calibrate on `calibration_ct` (read as `calibration_image`), write the weights
    to `staged_weights` (to be published as `weights_out`) and calibrate `model`."""
    model.config = model.config.uncalibrated()
    uncalibrated = evaluate_synthetic(model, heldout_source, samples, progress=True)
    fit = calibrate_weights(run_weights, source_from_image(Path(calibration_ct).name, calibration_image),
                            staged_weights, calibration_samples, progress=True, temperature_only=temperature_only)
    model.config.temperature, model.config.class_bias = fit["temperature"], tuple(fit["class_bias"])
    keys = ("n", "accuracy", "average_f1", "expected_calibration_error")
    only = " --temperature-only" if temperature_only else ""
    return {**fit,
            "command": f"registration-misalignment calibrate --weights {run_weights} --ct {calibration_ct} "
                       f"--samples {calibration_samples}{only} --out calibrated.safetensors",
            "heldout_uncalibrated": {k: {m: uncalibrated[k][m] for m in keys}
                                     for k in ("all_lung_voxels", "class_stratified_points")},
            "heldout_uncalibrated_command": f"registration-misalignment evaluate-synthetic --ct {heldout_ct} "
                                            f"--samples {samples} --weights {weights_out} --uncalibrated"}


def markdown_card(card: dict) -> str:
    """Human-readable model card."""
    arch, train = card["architecture"], card["training"]
    held = card["heldout_synthetic"]
    rows = []
    for key in ("all_lung_voxels", "class_stratified_points"):
        r = held[key]
        pc = r["per_class"]
        rows.append(f"| {key.replace('_', ' ')} | {r['n']} | {100 * r['accuracy']:.1f} % | "
                    f"{100 * r['average_f1']:.1f} % | " + " | ".join(f"{100 * pc[c]['f1']:.1f} %" for c in pc) +
                    f" | {100 * r['expected_calibration_error']:.1f} % |")
    last = card["validation_history"][-1] if card["validation_history"] else {}
    cell = "ConvLSTM" if arch["architecture"] == "hierarchical_lstm" else "plain convolution"
    sources = _training_sources(train, card.get("training_cts", []))
    return f"""# Model card: {card['name']}

- Weights: `{card['weights']}` (sha256 `{card['sha256']}`), {card['parameters']} parameters, loaded with
  safetensors (no code is executed); the sha256 is checked against `{card['name']}.card.json` on every load.
- Architecture: `{arch['architecture']}`; {arch['features']} features per encoder layer, {arch['hidden']} channels
  in the step cell ({cell}), encoder depths {_depths(arch['encoder_depths'])} (S4/S2/S1),
  batch norm {arch['batch_norm']}, difference channel {arch['difference_channel']}. Per-patch (paper's way) input
  20^3 voxels at every level for an 8^3 output block.
- Training data: synthetic pairs from {sources}; all deformation families\
{_density(train)}.{_start(train)}
- Budget: {card['training_steps']} steps x {train['batch_size']} tiles of {train['out_size']}^3 output voxels,
  {card['training_seconds'] or 0:.0f} s on {card['training_machine']}.{_stopped_early(card)}
- Training command: {_training_command(card)}
- Last validation (synthetic, training sources, other seeds): accuracy {100 * last.get('accuracy', 0):.1f} %,
  average F1 {100 * last.get('average_f1', 0):.1f} %.

## Held-out synthetic evaluation ({held['source']}, never used in training)

{held['samples']} reproducible synthetic pairs (all field families), metrics at lung voxels.
Reproduce: `{card['heldout_command']}`

| points | n | accuracy | average F1 | F1 correct | F1 poor | F1 wrong | ECE |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Confusion matrix (all lung voxels; rows truth, columns prediction; correct / poor / wrong):
`{held['all_lung_voxels']['confusion_matrix']}`

ECE: top-label expected calibration error, {held['all_lung_voxels']['bins']} equal-width confidence bins, of the
calibrated probabilities (temperature {arch['temperature']:.4g}, class bias {_bias(arch.get('class_bias'))});
reliability data per bin are in the JSON card.
""" + (residual_markdown(held["by_residual"]) if "by_residual" in held else "") + \
        (family_markdown(held["by_family"]) if "by_family" in held else "") + \
        (precision_markdown(held["residual_precision"]) if "residual_precision" in held else "") + \
        (calibration_markdown(card["calibration"], held) if card.get("calibration") else "") + \
        (landmarks_markdown(card["landmark_protocol"], card["weights"]) if card.get("landmark_protocol") else "") + \
        (robustness_markdown(card["robustness"]) if card.get("robustness") else "")


def _training_command(card: dict) -> str:
    """The card's training command, then those that resumed the run with other options; or how to record it."""
    started = (f"`{card['training_command']}`" if card["training_command"]
               else "not recorded (release --training-command)")
    return started + "".join(f"; resumed with `{command}`" for command in card.get("training_resumed_with") or [])


def landmark_entry(evaluation_dir, card: dict) -> dict:
    """Card entry for an `evaluate --out DIR` result of the card's weights: pooled and per-setup figures of the main
    model, how the pair was registered and, for a `make-landmark-pair` pair, its description."""
    evaluation_dir = Path(evaluation_dir)
    try:
        result = json.loads((evaluation_dir / "evaluation.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{evaluation_dir}: no readable evaluation.json ({exc}); pass a folder written by "
                         "`evaluate --out`") from None
    provenance = result.get("provenance")
    if provenance is None:
        raise InputError(f"{evaluation_dir}: written by an `evaluate` older than 0.5.0, which did not record the "
                         "weights it scored; run `evaluate` again")
    if provenance["weights_sha256"] != card["sha256"]:
        raise InputError(f"{evaluation_dir}: scores other weights (sha256 {provenance['weights_sha256'][:12]}...) "
                         f"than {card['weights']} ({card['sha256'][:12]}...); run `evaluate --weights` with them")
    pair = provenance["pair"]
    total = result["total"]
    landmarks = [m for r in result["setups"].values() for m in r["landmarks"]]
    return {"pair": pair or {"note": "landmark pair of " + evaluation_dir.resolve().parent.name},
            "synthetic": pair is not None, "evaluation": str(evaluation_dir),
            "registered_by": provenance["registered_by"], "setups": provenance["setups"],
            "landmarks": total["n"], "accuracy": total["accuracy"], "average_f1": total["average_f1"],
            "expected_calibration_error": landmark_summary(landmarks)["expected_calibration_error"],
            "per_setup": {name: {"accuracy": r["accuracy"], "average_f1": r["average_f1"]}
                          for name, r in result["setups"].items()},
            "confusion_matrix": total["confusion_matrix"]}


def add_landmark_results(weights, evaluation_dirs: list) -> dict:
    """Put the landmark-protocol results of `weights` into its model card (JSON and Markdown): an entry for a pair the
    card already holds replaces it, other pairs' entries stay; returns the card."""
    card = read_card(weights)
    entries = {_pair_key(e): e for e in card.get("landmark_protocol") or []}
    entries.update((_pair_key(e), e) for e in (landmark_entry(d, card) for d in evaluation_dirs))
    card["landmark_protocol"] = list(entries.values())
    write_card(weights, card)
    return card


def _pair_key(entry: dict) -> str:
    """What identifies a landmark pair in the card: its description."""
    return json.dumps(entry["pair"], sort_keys=True)


def read_card(weights) -> dict:
    """The model card of `weights`, or a one-line error when they have none."""
    path = existing_card_path(weights)
    if not path.exists():
        raise InputError(f"{weights} has no model card ({path.name}); results go only into released weights' cards")
    return json.loads(path.read_text())


def add_robustness_results(weights, result: dict, command: str) -> dict:
    """Put an `evaluate-robustness` result of `weights` into its model card (JSON and Markdown); returns the card."""
    card = read_card(weights)  # its sha256 was checked when the weights were loaded
    card["robustness"] = {"ct": result["ct"], "lung_voxels": result["lung_voxels"], "command": command,
                          "conditions": result["conditions"]}
    write_card(weights, card)
    return card


def robustness_markdown(entry: dict) -> str:
    """Model-card section on the robustness check: the share of lung voxels in the true class per condition."""
    rows = [f"| {c['description']} | {c['true_class']} | {100 * c['accuracy']:.1f} % | "
            + " / ".join(f"{100 * v:.1f}" for v in c["shares"].values()) + " % |" for c in entry["conditions"]]
    return f"""
## Robustness to how real pairs differ

{Path(entry['ct']).name} against itself, changed without misalignment or shifted by a known residual; the share
of its {entry['lung_voxels']} lung voxels (automatic mask) in the true class and in each class.
Reproduce: `{entry['command']}`

| condition | true class | accuracy | correct / poor / wrong |
|---|---|---|---|
{chr(10).join(rows)}
"""


def _pair_description(pair: dict) -> str:
    """One line naming a landmark pair."""
    if "field" not in pair:
        return pair["note"]
    return (f"{Path(pair['ct']).name.split('.')[0]} warped by a known {pair['field'].replace('_', '-')} field "
            f"<= {pair['max_mm']:g} mm, seed {pair['seed']} (synthetic landmarks)")


def _reproduce_command(entry: dict, weights_name: str) -> str:
    """The commands that build a synthetic landmark pair and evaluate the weights on it with elastix."""
    pair, setups = entry["pair"], entry.get("setups")
    return (f"registration-misalignment make-landmark-pair --ct {pair['ct']} --out PAIR --points {pair['points']} "
            f"--field {pair['field']} --max-mm {pair['max_mm']:g} --seed {pair['seed']} && registration-misalignment "
            "evaluate --fixed PAIR/fixed.nrrd --moving PAIR/moving.nrrd --fixed-landmarks PAIR/fixed_landmarks.csv "
            f"--moving-landmarks PAIR/moving_landmarks.csv --weights model_weights/{weights_name} "
            + (f"--setups {','.join(setups)} " if setups else "") + "--out PAIR/evaluation")


def landmarks_markdown(entries: list, weights_name: str) -> str:
    """Model-card section on the landmark protocol, pooled over the registration setups."""
    rows = [f"| {_pair_description(e['pair'])} | {e['landmarks']} | {100 * e['accuracy']:.1f} % | "
            f"{100 * e['average_f1']:.1f} % | {_percent(e.get('expected_calibration_error'))} | "
            f"`{e['confusion_matrix']}` |" for e in entries]
    by_elastix = [e for e in entries if e.get("registered_by", "elastix") == "elastix"]
    commands = [f"- `{_reproduce_command(e, weights_name)}`" for e in by_elastix if e["synthetic"]]
    setups = sorted({name for e in by_elastix for name in e["per_setup"]})
    reproduce = ("Reproduce (elastix registrations are deterministic):\n" + "\n".join(commands) + "\n"
                 if commands else "")
    registered = " and ".join(([f"elastix in the setups {', '.join(setups)}"] if by_elastix else []) +
                              (["registered pairs with given residuals"] if len(by_elastix) < len(entries) else []))
    return f"""
## Landmark protocol

{registered}; the residual at each fixed landmark binned <= 3 / (3, 6] / > 6 mm
against the predicted class there (`predict_points`), pooled over the setups; per setup in each `evaluation.md`.
Synthetic pairs (`make-landmark-pair`) warp a CT by a known field, so every landmark's truth is exact; they are
no substitute for manually landmarked real pairs (the paper reports 87.1 % accuracy, 66.4 % average F1 on its own).

| pair | landmarks | accuracy | average F1 | ECE | confusion matrix (rows truth; correct / poor / wrong) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{reproduce}"""


def _percent(value) -> str:
    """A fraction as a percentage, or a dash for cards written before the value existed."""
    return "-" if value is None else f"{100 * value:.1f} %"


def _training_sources(train: dict, training_cts: list) -> str:
    """What a run's synthetic pairs were made from: real CTs, cached sources files (with the CTs in them) and
    phantoms."""
    parts = list(train.get("ct_paths", []))
    cached = sorted(set(training_cts) - {Path(path).name for path in parts})
    inside = f": {', '.join(cached)} and any phantoms cached with them" if cached else ""
    parts += [f"the sources file {name} (cache-sources{inside})" for name in train.get("source_files", [])]
    if train.get("phantom_seeds"):
        parts.append(f"procedural phantoms (seeds {train['phantom_seeds']}, drawn with probability "
                     f"{train['phantom_fraction']})")
    return " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else "".join(parts)


def _density(train: dict) -> str:
    """The breathing-density augmentation of a training run, as a clause of the card (empty when off)."""
    share = train.get("density_change", 0.0)
    if not share:
        return ""
    return f"; in {100 * share:.0f} % of the pairs one image's lungs have another breathing state's density"


def _start(train: dict) -> str:
    """Where a fine-tuned run started, as a sentence of the card (empty when trained from random weights)."""
    if not train.get("init_weights"):
        return ""
    return f"\n  Fine-tuned from `{train['init_weights']}` (sha256 `{train.get('init_weights_sha256', '')}`)."


def _depths(depths: dict) -> str:
    """Encoder depths per level, S4 first (JSON turns the level keys into strings)."""
    return "{" + ", ".join(f"{int(k)}: {v}" for k, v in sorted(depths.items(), key=lambda kv: -int(kv[0]))) + "}"


def family_markdown(report: dict) -> str:
    """Model-card table of accuracy and per-class F1 for each deformation-field family."""
    def f1(r, name):
        c = r["per_class"][name]
        return f"{100 * c['f1']:.1f} %" if c["support"] else "-"
    rows = "\n".join(f"| {family.replace('_', ' ')} | {r['n']} | {100 * r['accuracy']:.1f} % | "
                     + " | ".join(f1(r, name) for name in r["per_class"]) + " |"
                     for family, r in report.items() if r["n"])
    return f"""
By deformation-field family (all lung voxels; F1 only for the classes a family has):

| field family | voxels | accuracy | F1 correct | F1 poor | F1 wrong |
|---|---|---|---|---|---|
{rows}
"""


def precision_markdown(report: dict) -> str:
    """Model-card paragraph: the accuracy as a residual precision, with the reference's scores."""
    rows = "\n".join(f"| {r['sigma_mm']:g} mm | {100 * r['accuracy']:.1f} % | {100 * r['average_f1']:.1f} % |"
                     for r in report["reference"])
    return f"""
As a residual precision: over all lung voxels the map is as accurate as the true residual known up to Gaussian noise
of sigma {report['equivalent_noise_mm']:.2f} mm, then split at 3 and 6 mm. That reference at other precisions:

| sigma | accuracy | average F1 |
|---|---|---|
{rows}
"""


def residual_markdown(report: dict) -> str:
    """Model-card table of accuracy by band of true residual, and the errors' share near a class boundary."""
    bands = [b for b in report["bands"] if b["n"]]
    return f"""
Accuracy by true residual (all lung voxels; each band's voxels, then the share the model gets right):

| residual | {' | '.join(band_name(b) for b in bands)} |
|---|{'---|' * len(bands)}
| voxels | {' | '.join(str(b['n']) for b in bands)} |
| accuracy | {' | '.join(f"{100 * b['accuracy']:.1f} %" for b in bands)} |

{errors_near_boundary_text(report).capitalize()}; {100 * report['voxels_near_boundary']:.1f} % of the lung voxels lie
within {report['near_boundary_mm']:g} mm of it.
"""


def _bias(bias) -> str:
    """Class biases (correct, poor, wrong) as text; cards from before class biases have none."""
    return "(" + ", ".join(f"{b:+.3f}" for b in (bias or (0.0, 0.0, 0.0))) + ")"


def calibration_markdown(cal: dict, held: dict) -> str:
    """Model-card section on the calibration fit: ECE, and accuracy and F1 where the class biases moved them."""
    before = cal["heldout_uncalibrated"]
    rows = [f"| fitting data ({cal['source']}, {cal['voxels']} lung voxels) | "
            f"{100 * cal.get('accuracy_before', cal['accuracy']):.1f} % | {100 * cal['accuracy']:.1f} % | | | "
            f"{100 * cal['ece_before']:.2f} % | {100 * cal['ece_after']:.2f} % |"]
    for key in ("all_lung_voxels", "class_stratified_points"):
        b, a = before[key], held[key]
        rows.append(f"| held out, {key.replace('_', ' ')} | {100 * b['accuracy']:.1f} % | "
                    f"{100 * a['accuracy']:.1f} % | {100 * b['average_f1']:.1f} % | {100 * a['average_f1']:.1f} % | "
                    f"{100 * b['expected_calibration_error']:.2f} % | {100 * a['expected_calibration_error']:.2f} % |")
    biased = any(cal.get("class_bias") or ())
    what = (f"T = {cal['temperature']:.4f} and class biases b (correct, poor, wrong) = {_bias(cal.get('class_bias'))}, "
            "fitted jointly" if biased else f"T = {cal['temperature']:.4f} (b = 0), fitted")
    effect = ("The biases undo the class weighting of the training loss (which favours the rarer classes), so the "
              "predicted classes change: accuracy and F1 are given before and after." if biased else
              "T does not change the predicted classes: accuracy and F1 are those at T = 1.")
    return f"""
## Calibration

Probabilities are softmax(logits / T + b) with {what} by minimum negative
log-likelihood (NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f}) at lung voxels of {cal['samples']} synthetic
pairs from the training CT {cal['source']} (seeds from {cal['first_seed']}, apart from training, validation and
evaluation seeds); the held-out CT is never used for fitting. {effect}
Reproduce the fit: `{cal['command']}`

| | accuracy before | after | average F1 before | after | ECE before | after |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Held-out uncalibrated: `{cal['heldout_uncalibrated_command']}`
"""
