"""Saving and loading weights safely: safetensors with the configuration inside, sha256 checked against the card."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from .errors import InputError
from .model import MisalignmentNet, ModelConfig

RELEASED_NAME = "misalignment_multires.safetensors"
WEIGHTS_ENV = "REGISTRATION_MISALIGNMENT_WEIGHTS"

WEIGHTS_SUFFIXES = (".safetensors",)
WEIGHTS_FORMAT_HINT = "name the file .safetensors"


def released_weights_path() -> Path:
    """The released weights: $REGISTRATION_MISALIGNMENT_WEIGHTS, the source tree, where the installed distribution
    put them (any prefix: a virtual environment, --user, --prefix), or the environment's data folder."""
    if os.environ.get(WEIGHTS_ENV):
        return Path(os.environ[WEIGHTS_ENV])
    candidates = [Path(__file__).resolve().parents[2] / "model_weights" / RELEASED_NAME, *_installed_weights(),
                  Path(sys.prefix) / "share" / "registration-misalignment" / "model_weights" / RELEASED_NAME]
    return next((c for c in candidates if c.exists()), candidates[0])


def _installed_weights() -> list:
    """The released weights file(s) that pip recorded for the installed distribution (none when not installed)."""
    from importlib.metadata import PackageNotFoundError, distribution
    try:
        files = distribution("registration-misalignment").files or []
    except PackageNotFoundError:
        return []
    return [Path(file.locate()).resolve() for file in files if file.name == RELEASED_NAME]


def sha256_of(path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_stem(weights_path) -> str:
    """The weights file's name without `.safetensors` (or its last suffix): what its cards are named after."""
    name = Path(weights_path).name
    return name[:-len(".safetensors")] if name.endswith(".safetensors") else Path(name).stem


def card_path(weights_path) -> Path:
    """The model card JSON that sits next to a weights file (`mine.v1.safetensors`: `mine.v1.card.json`)."""
    return Path(weights_path).with_name(weights_stem(weights_path) + ".card.json")


def markdown_card_path(weights_path) -> Path:
    """The Markdown model card that sits next to a weights file (`mine.v1.safetensors`: `mine.v1.md`)."""
    return Path(weights_path).with_name(weights_stem(weights_path) + ".md")


def existing_card_path(weights_path) -> Path:
    """The card of a weights file: `card_path`, else a card of 0.5.1 or earlier (named to the first dot) naming it."""
    weights_path = Path(weights_path)
    card, legacy = card_path(weights_path), weights_path.with_name(weights_path.name.split(".")[0] + ".card.json")
    return legacy if not card.exists() and _names_weights(legacy, weights_path.name) else card


def _names_weights(card: Path, name: str) -> bool:
    """Whether a model card file exists and gives `name` as its weights file."""
    try:
        return json.loads(card.read_text()).get("weights") == name
    except (OSError, ValueError, AttributeError):
        return False


def export_weights(model: MisalignmentNet, path, extra: dict = None) -> str:
    """Write the model's weights and configuration as safetensors (atomically) and return the sha256."""
    path = Path(path)
    metadata = {"config": json.dumps(model.config.to_dict()), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    data = canonical_safetensors(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                                      metadata=metadata))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sha256_of(path)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its header's keys sorted: the library writes the metadata in arbitrary order, so
    without this the same weights could get another sha256 each time they are written."""
    length = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # keep the tensor data 8-byte aligned, as the library does
    return len(header).to_bytes(8, "little") + header + data[8 + length:]


def weights_metadata(path) -> dict:
    """The JSON entries stored with the tensors of a weights file: "config" (temperature included), "steps", ..."""
    with safe_open(str(path), framework="pt") as handle:
        return {k: json.loads(v) for k, v in (handle.metadata() or {}).items()}


def expected_sha256(weights_path):
    """The sha256 recorded in the model card next to the weights, or None if there is no card."""
    card = existing_card_path(weights_path)
    if not card.exists():
        return None
    try:
        return json.loads(card.read_text())["sha256"]
    except (ValueError, KeyError):
        raise InputError(f"{card}: model card is not valid JSON with a 'sha256' entry; restore it") from None


def load_model(path=None, map_location="cpu") -> MisalignmentNet:
    """Load weights (default: the released model), verifying the sha256 in the model card; never runs code."""
    path = Path(path) if path is not None else released_weights_path()
    if not path.is_file():
        advice = (f"reinstall the package, or set {WEIGHTS_ENV} to the weights file" if path == released_weights_path()
                  else f"it is a folder: give the weights file in it ({path / 'weights.safetensors'} for a training "
                  "run)" if path.is_dir() else "check the path of the weights file")
        raise InputError(f"{path}: weights file not found; {advice}")
    expected = expected_sha256(path)
    if expected is not None and sha256_of(path) != expected:
        raise InputError(f"{path}: sha256 does not match its model card; the file is corrupt or was changed")
    try:
        state = load_file(str(path), device=str(map_location))
        config = ModelConfig(**weights_metadata(path)["config"])
        model = MisalignmentNet(config)
        model.load_state_dict(state)
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a valid weights file ({reason}); pass a .safetensors file "
                         "written by 'registration-misalignment train'") from None
    return model.eval()


def training_settings_of(weights):
    """The training settings (a `TrainConfig` as a dict) that made a weights file: from its model card, or from the
    training run folder it is the weights of; None when neither tells."""
    path = Path(weights)
    card = existing_card_path(path)
    if card.is_file():
        return json.loads(card.read_text()).get("training")
    state = path.parent / "training_state.pt"
    if path.name == "weights.safetensors" and state.is_file():
        import torch
        return json.loads(torch.load(state, map_location="cpu", weights_only=True)["train_config"])
    return None
