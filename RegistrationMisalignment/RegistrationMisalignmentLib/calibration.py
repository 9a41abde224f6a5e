"""Temperature scaling: fit the logit temperature by minimum NLL on synthetic pairs from a training CT."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import export_weights, load_model, weights_metadata
from .errors import InputError
from .evaluation import softmax, synthetic_lung_logits
from .metrics import expected_calibration_error
from .model import MisalignmentNet

# Seeds CALIBRATION_SEED + i: apart from training (seed * 10^7 + i), validation (~10^16) and held-out evaluation
# (2 * 10^9 + seed * 10^6 + i) seeds.
CALIBRATION_SEED = 3 * 10 ** 9
LOG_TEMPERATURE_RANGE = (-3.0, 3.0)  # temperatures from 0.05 to 20


def nll(logits: torch.Tensor, truth: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits / temperature, truth))


def golden_section_minimum(f, lo: float, hi: float, tolerance: float = 1e-4) -> float:
    """Argument of the minimum of a unimodal function on [lo, hi] (golden-section search)."""
    ratio = (math.sqrt(5) - 1) / 2
    c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > tolerance:
        if fc < fd:
            hi, d, fd = d, c, fc
            c = hi - ratio * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + ratio * (hi - lo)
            fd = f(d)
    return (lo + hi) / 2


def fit_temperature(logits, truth) -> float:
    """Temperature minimising the NLL of softmax(logits / T) (convex in 1/T; golden-section search on log T)."""
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    truth = torch.from_numpy(np.asarray(truth, dtype=np.int64))
    return math.exp(golden_section_minimum(lambda log_t: nll(logits, truth, math.exp(log_t)), *LOG_TEMPERATURE_RANGE))


def calibrate(model: MisalignmentNet, source, samples: int = 48, out_size: int = 32, device="cpu",
              progress: bool = False) -> dict:
    """Fit and set the model's temperature on lung voxels of synthetic pairs from `source` (a training CT)."""
    truth, logits = synthetic_lung_logits(model, source, samples, out_size, CALIBRATION_SEED, device, progress)
    if len(truth) == 0:
        raise InputError(f"{source.name}: no labelled lung voxels in {samples} synthetic pairs; use more --samples")
    scale = fit_temperature(logits, truth)
    before = model.config.temperature
    model.config.temperature = before * scale
    torch_logits, torch_truth = torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(truth.astype(np.int64))
    return {"source": source.name, "samples": samples, "first_seed": CALIBRATION_SEED, "out_size": out_size,
            "voxels": int(len(truth)), "accuracy": float((logits.argmax(1) == truth).mean()),
            "temperature_before": before, "temperature": model.config.temperature,
            "nll_before": nll(torch_logits, torch_truth, 1.0), "nll_after": nll(torch_logits, torch_truth, scale),
            "ece_before": expected_calibration_error(softmax(logits), truth),
            "ece_after": expected_calibration_error(softmax(logits / scale), truth)}


def calibrate_weights(weights_in, source, out, samples: int = 48, device="cpu", progress: bool = False) -> dict:
    """Fit the temperature of the weights in `weights_in` on `source` and write them, tensors unchanged, to `out`."""
    model = load_model(weights_in)
    fit = calibrate(model, source, samples, device=device, progress=progress)
    kept = {k: v for k, v in weights_metadata(weights_in).items() if k not in ("config", "calibration")}
    return {**fit, "sha256": export_weights(model.cpu(), out, extra={**kept, "calibration": fit})}
