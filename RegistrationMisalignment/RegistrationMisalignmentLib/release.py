"""Release a trained run: copy its weights, evaluate on a held-out CT, write the model card (JSON + Markdown)."""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import torch

from .checkpoint import card_path, load_model, sha256_of
from .evaluation import evaluate_synthetic
from .imageio import read_image, write_bytes
from .sources import source_from_image


def machine_description() -> str:
    """CPU model and core count (and GPU name when present) of this machine."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def release(run_dir, weights_out, heldout_ct, samples: int = 48, command: str = "") -> dict:
    """Copy `run_dir`'s weights to `weights_out`, evaluate on `heldout_ct`, and write the model card."""
    run_dir, weights_out = Path(run_dir), Path(weights_out)
    state = torch.load(run_dir / "training_state.pt", map_location="cpu", weights_only=True)
    history = json.loads(state["history"])
    shutil.copyfile(run_dir / "weights.safetensors", weights_out)
    model = load_model(weights_out)
    source = source_from_image(Path(heldout_ct).name, read_image(heldout_ct))
    heldout = evaluate_synthetic(model, source, samples, progress=True)
    card = {
        "name": weights_out.stem,
        "weights": weights_out.name,
        "sha256": sha256_of(weights_out),
        "architecture": json.loads(state["model_config"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": json.loads(state["train_config"]),
        "training_steps": state["step"],
        "training_seconds": history[-1]["seconds"] if history else None,
        "training_machine": machine_description(),
        "validation_history": history,
        "heldout_synthetic": heldout,
        "heldout_command": f"registration-misalignment evaluate-synthetic --ct {heldout_ct} --samples {samples} "
                           f"--weights {weights_out}",
        "training_command": command,
    }
    write_bytes(json.dumps(card, indent=1).encode(), card_path(weights_out))
    write_bytes(markdown_card(card).encode(), weights_out.with_name(weights_out.stem + ".md"))
    return card


def markdown_card(card: dict) -> str:
    """Human-readable model card."""
    arch, train = card["architecture"], card["training"]
    held = card["heldout_synthetic"]
    rows = []
    for key in ("all_lung_voxels", "class_stratified_points"):
        r = held[key]
        pc = r["per_class"]
        rows.append(f"| {key.replace('_', ' ')} | {r['n']} | {100 * r['accuracy']:.1f} % | "
                    f"{100 * r['average_f1']:.1f} % | " + " | ".join(f"{100 * pc[c]['f1']:.1f} %" for c in pc) + " |")
    last = card["validation_history"][-1] if card["validation_history"] else {}
    return f"""# Model card: {card['name']}

- Weights: `{card['weights']}` (sha256 `{card['sha256']}`), {card['parameters']} parameters, loaded with
  safetensors (no code is executed); the sha256 is checked against `{card['name']}.card.json` on every load.
- Architecture: `{arch['architecture']}`; {arch['features']} features per encoder layer, {arch['hidden']} recurrent
  channels, encoder depths {arch['encoder_depths']} (S4/S2/S1), batch norm {arch['batch_norm']}, difference channel
  {arch['difference_channel']}. Per-patch (paper's way) input 20^3 voxels at every level for an 8^3 output block.
- Training data: synthetic pairs from {', '.join(train['ct_paths']) or 'no real CT'} and procedural phantoms (seeds
  {train['phantom_seeds']}, drawn with probability {train['phantom_fraction']}); all deformation families.
- Budget: {card['training_steps']} steps x {train['batch_size']} tiles of {train['out_size']}^3 output voxels,
  {card['training_seconds'] or 0:.0f} s on {card['training_machine']}.
- Training command: `{card['training_command']}`
- Last validation (synthetic, training sources, other seeds): accuracy {100 * last.get('accuracy', 0):.1f} %,
  average F1 {100 * last.get('average_f1', 0):.1f} %.

## Held-out synthetic evaluation ({held['source']}, never used in training)

{held['samples']} reproducible synthetic pairs (all field families), metrics at lung voxels.
Reproduce: `{card['heldout_command']}`

| points | n | accuracy | average F1 | F1 correct | F1 poor | F1 wrong |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Confusion matrix (all lung voxels; rows truth, columns prediction; correct / poor / wrong):
`{held['all_lung_voxels']['confusion_matrix']}`
"""
