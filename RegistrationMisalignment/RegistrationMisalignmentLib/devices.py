"""Choosing the torch device."""
from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    """Map 'auto' / 'cpu' / 'cuda' / 'gpu' to an available torch device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise InputError("no CUDA GPU is available here; use --device cpu (or auto)")
    return torch.device("cuda" if device == "gpu" else device)
