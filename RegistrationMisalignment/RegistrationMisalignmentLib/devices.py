"""Choosing the torch device and the number of CPU threads."""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .errors import InputError


def resolve_device(device: str = "auto") -> torch.device:
    """Map 'auto' / 'cpu' / 'cuda' / 'gpu' / 'cuda:N' (or such a torch.device) to an available torch device; an
    InputError naming those for any other."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = str(device) if isinstance(device, torch.device) else device
    if not isinstance(name, str) or not re.fullmatch(r"cpu|gpu|cuda(:\d+)?", name):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' (or 'gpu') or 'cuda:N' (N: a GPU's number), got "
                         f"{device!r}")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("no CUDA GPU is available here; use --device cpu (or auto)")
    chosen = torch.device("cuda" if name == "gpu" else name)
    if chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise InputError(f"device {name!r}: there is no such GPU here (GPUs: "
                         f"{', '.join(f'cuda:{i}' for i in range(torch.cuda.device_count()))})")
    return chosen


# Memory format of the 3-D convolutions: channels-last, the fastest of oneDNN on the CPU and of cuDNN on an H100
# (see BENCHMARKS.md); the same on every device, so that CPU and GPU results agree.
CONVOLUTION_LAYOUT = torch.channels_last_3d


def in_convolution_layout(tensors: dict) -> dict:
    """The level tensors of a batch in CONVOLUTION_LAYOUT."""
    return {level: x.contiguous(memory_format=CONVOLUTION_LAYOUT) for level, x in tensors.items()}


def onednn_inference(x: torch.Tensor) -> bool:
    """Whether to convolve `x` with oneDNN directly: float32 inference (no gradients, no autocast) on a CPU where
    PyTorch has oneDNN. PyTorch's own choice sends one volume whose N x C x D x H is at most 20480 to its reference
    convolution, up to 19x slower per layer (BENCHMARKS.md); batches of two or more already go to oneDNN."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not _cpu_autocast() and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _cpu_autocast() -> bool:
    """Whether CPU autocast is on (its query changed in torch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def usable_cpus() -> list:
    """The logical CPUs this process may run on: its affinity set where the system has one, else all."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def default_threads() -> int:
    """Physical CPU cores this process may run on (its affinity set, SMT siblings counted once)."""
    cpus = usable_cpus()
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


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize()
