"""Calibration on synthetic pairs from a training CT: temperature and class biases fitted by minimum NLL."""
from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import export_weights, load_model, weights_metadata
from .errors import InputError
from .evaluation import softmax, synthetic_lung_logits
from .metrics import expected_calibration_error
from .model import MisalignmentNet

log = logging.getLogger("RegistrationMisalignment")
FEW_SAMPLES = 16  # below this the fit follows the few tiles drawn rather than the model

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


def fit_scale_and_bias(logits, truth) -> tuple:
    """Scale s (1/20 to 20) and class biases b (b[0] = 0) minimising the NLL of softmax(s * logits + b) (L-BFGS)."""
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    truth = torch.from_numpy(np.asarray(truth, dtype=np.int64))
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(logits.shape[1] - 1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_scale, bias], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def scale() -> torch.Tensor:
        return torch.exp(log_scale.clamp(*LOG_TEMPERATURE_RANGE))

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits * scale() + F.pad(bias, (1, 0)), truth)
        loss.backward()
        return loss
    optimizer.step(closure)
    return float(scale().detach()), (0.0,) + tuple(float(b) for b in bias.detach())


def calibrate(model: MisalignmentNet, source, samples: int = 48, out_size: int = 32, device="cpu",
              progress: bool = False, temperature_only: bool = False) -> dict:
    """Fit and set the model's temperature and class biases (or only T) on synthetic pairs from a training CT."""
    if samples < FEW_SAMPLES:
        log.warning(f"calibrating on only {samples} synthetic pairs: the temperature and class biases may fit those "
                    "tiles rather than the model; use 48 (the default) or more")
    voxels = synthetic_lung_logits(model, source, samples, out_size, CALIBRATION_SEED, device, progress)
    truth, logits = voxels.truth, voxels.logits
    if len(truth) == 0:
        raise InputError(f"{source.name}: no labelled lung voxels in {samples} synthetic pairs; use more --samples")
    if temperature_only:
        scale, bias = 1.0 / fit_temperature(logits, truth), (0.0, 0.0, 0.0)
    else:
        scale, bias = fit_scale_and_bias(logits, truth)
    if not math.exp(LOG_TEMPERATURE_RANGE[0]) * 1.001 < scale < math.exp(LOG_TEMPERATURE_RANGE[1]) / 1.001:
        log.warning(f"the calibration's scale of the logits reached the limit of its range ({scale:.3g}): the model "
                    "is far from calibrated on these pairs (too few training steps?); its probabilities stay "
                    "unreliable")
    temperature_before, bias_before = model.config.temperature, model.config.class_bias
    # softmax(scale * (head / T + b0) + bias) = softmax(head / (T / scale) + scale * b0 + bias)
    model.config.temperature = temperature_before / scale
    model.config.class_bias = tuple(scale * b0 + b for b0, b in zip(bias_before, bias))
    calibrated = logits * scale + np.asarray(bias)
    torch_truth = torch.from_numpy(truth.astype(np.int64))
    return {"source": source.name, "samples": samples, "first_seed": CALIBRATION_SEED, "out_size": out_size,
            "voxels": int(len(truth)), "method": "temperature" if temperature_only else "temperature_and_class_bias",
            "accuracy_before": float((logits.argmax(1) == truth).mean()),
            "accuracy": float((calibrated.argmax(1) == truth).mean()),
            "temperature_before": temperature_before, "class_bias_before": list(bias_before),
            "temperature": model.config.temperature, "class_bias": list(model.config.class_bias),
            "nll_before": nll(torch.from_numpy(logits.astype(np.float64)), torch_truth, 1.0),
            "nll_after": nll(torch.from_numpy(calibrated), torch_truth, 1.0),
            "ece_before": expected_calibration_error(softmax(logits), truth),
            "ece_after": expected_calibration_error(softmax(calibrated), truth)}


def calibrate_weights(weights_in, source, out, samples: int = 48, device="cpu", progress: bool = False,
                      temperature_only: bool = False) -> dict:
    """Calibrate the weights in `weights_in` on `source` and write them, tensors unchanged, to `out`."""
    model = load_model(weights_in)
    fit = calibrate(model, source, samples, device=device, progress=progress, temperature_only=temperature_only)
    kept = {k: v for k, v in weights_metadata(weights_in).items() if k not in ("config", "calibration")}
    return {**fit, "sha256": export_weights(model.cpu(), out, extra={**kept, "calibration": fit})}
