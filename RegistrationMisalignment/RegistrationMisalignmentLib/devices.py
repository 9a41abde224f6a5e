"""Choosing the torch device and the number of CPU threads."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    """Map 'auto' / 'cpu' / 'cuda' / 'gpu' to an available torch device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device in ("gpu", "cuda") and not torch.cuda.is_available():
        raise InputError("no CUDA GPU is available here; use --device cpu (or auto)")
    return torch.device("cuda" if device == "gpu" else device)


def convolution_layout(device: torch.device) -> torch.memory_format:
    """Memory format for the 3-D convolutions: channels-last on the CPU (oneDNN's fastest), the default elsewhere."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def in_convolution_layout(tensors: dict, device: torch.device) -> dict:
    """The level tensors of a batch in the layout `convolution_layout(device)` prefers."""
    layout = convolution_layout(device)
    return {level: x.contiguous(memory_format=layout) for level, x in tensors.items()}


def default_threads() -> int:
    """Physical CPU cores this process may run on (its affinity set, SMT siblings counted once)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def machine_description() -> str:
    """CPU model and core count (and GPU name when present) of this machine."""
    cpu = "unknown CPU"
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
