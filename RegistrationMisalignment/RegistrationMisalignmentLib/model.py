"""Hierarchical ConvLSTM network (S4 -> S2 -> S1) and its two ablations, all fully convolutional."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
import torch.nn.functional as F

from .devices import onednn_inference
from .errors import InputError
from .labels import COARSE_THRESHOLDS_MM

LEVELS = (4, 2, 1)
ARCHITECTURES = ("hierarchical_lstm", "multires_cnn", "single_cnn")
INPUT_CHANNELS = 3  # fixed, moving, inside-the-image indicator


@dataclass
class ModelConfig:
    """Architecture hyper-parameters; stored in every checkpoint."""

    architecture: str = "hierarchical_lstm"
    features: int = 16
    hidden: int = 16
    encoder_depths: dict = field(default_factory=lambda: {4: 7, 2: 6, 1: 5})
    batch_norm: bool = True
    difference_channel: bool = True
    temperature: float = 1.0  # logits are divided by it (calibration); training uses 1
    class_bias: tuple = (0.0, 0.0, 0.0)  # added to the finest step's logits after T (calibration); training uses 0

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if not 0 < self.temperature < float("inf"):
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")
        self.class_bias = tuple(float(b) for b in self.class_bias)
        if len(self.class_bias) != 3 or not all(math.isfinite(b) for b in self.class_bias):
            raise ValueError(f"class_bias must be three finite numbers, got {self.class_bias}")
        self.encoder_depths = {int(k): int(v) for k, v in self.encoder_depths.items()}

    @property
    def levels(self) -> tuple:
        """Resolution levels the network reads, coarse to fine."""
        return (1,) if self.architecture == "single_cnn" else LEVELS

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dictionary."""
        return asdict(self)

    def uncalibrated(self) -> "ModelConfig":
        """The same architecture without calibration (temperature 1, no class bias): what training uses."""
        return replace(self, temperature=1.0, class_bias=(0.0, 0.0, 0.0))


def hidden_size(level: int, out_size: int) -> int:
    """Edge length (in level voxels) of the hidden state at `level` for an S1 output tile of `out_size`."""
    if level == 1:
        return out_size
    if level == 2:
        return out_size // 2 + 2
    return out_size // 4 + 2


def input_size(config: ModelConfig, level: int, out_size: int) -> int:
    """Edge length (in level voxels) of the input patch at `level` for an S1 output tile of `out_size`."""
    return hidden_size(level, out_size) + 2 + 2 * config.encoder_depths[level]


def check_output_size(out_size: int) -> None:
    """Raise unless the S1 output tile edge is a positive multiple of 8 (keeps the pyramid grids aligned)."""
    if out_size <= 0 or out_size % 8:
        raise InputError(f"output tile size must be a positive multiple of 8, got {out_size}; pass e.g. --out-size 32")


def edges_zyx(size) -> tuple:
    """Three edges (zyx) from one edge of a cube or from three edges."""
    return tuple(int(n) for n in size) if hasattr(size, "__len__") else (int(size),) * 3


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """Crop the three spatial dimensions of a (N, C, D, H, W) tensor symmetrically to `size` (zyx, or one edge)."""
    sizes = edges_zyx(size)
    if tuple(x.shape[2:]) == sizes:
        return x
    return x[(Ellipsis,) + tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(x.shape[2:], sizes))]


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling followed by a centred crop to `size` (zyx, or one edge)."""
    return center_crop(F.interpolate(x, scale_factor=2, mode="nearest"), size)


class Conv3d(nn.Conv3d):
    """nn.Conv3d, convolving with oneDNN in float32 inference on the CPU whatever the volume's shape
    (`devices.onednn_inference`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_inference(x):
            return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                            self.groups)
        return super().forward(x)


class Encoder(nn.Sequential):
    """Stack of valid 3x3x3 convolutions (+ batch norm, a per-voxel affine map at inference) with ReLU."""

    def __init__(self, in_channels: int, features: int, depth: int, batch_norm: bool):
        layers = []
        for i in range(depth):
            layers.append(Conv3d(in_channels if i == 0 else features, features, 3, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm3d(features))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ConvLSTMCell(nn.Module):
    """3-D ConvLSTM cell with valid convolutions; hidden and cell states come from the coarser step."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gates = Conv3d(in_channels + hidden, 4 * hidden, 3)

    def forward(self, x, state):
        """Return the new (hidden, cell) state; `state` is None at the first step."""
        if state is None:
            h_prev = x.new_zeros((x.shape[0], self.hidden) + x.shape[2:])
            c_prev = None
        else:
            h_prev, c_prev = state
        i, f, o, g = self.gates(torch.cat([x, h_prev], 1)).chunk(4, 1)
        cell = torch.sigmoid(i) * torch.tanh(g)
        if c_prev is not None:
            cell = cell + torch.sigmoid(f) * center_crop(c_prev, cell.shape[2:])
        return torch.sigmoid(o) * torch.tanh(cell), cell


class FusionCell(nn.Module):
    """Plain convolutional fusion of a level's features with the coarser step's output (no LSTM ablation)."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.conv = Conv3d(in_channels + hidden, hidden, 3)

    def forward(self, x, state):
        """Return (features, None); `state` is None at the first step."""
        prev = x.new_zeros((x.shape[0], self.hidden) + x.shape[2:]) if state is None else state[0]
        return torch.relu(self.conv(torch.cat([x, prev], 1))), None


class MisalignmentNet(nn.Module):
    """Encoders per level, a recurrent (or plain) cell run coarse to fine, and a classification head per step."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        levels = config.levels
        channels = INPUT_CHANNELS + int(config.difference_channel)
        self.encoders = nn.ModuleDict({str(lv): Encoder(channels, config.features, config.encoder_depths[lv],
                                                        config.batch_norm) for lv in levels})
        cell_type = ConvLSTMCell if config.architecture == "hierarchical_lstm" else FusionCell
        self.cell = cell_type(config.features, config.hidden)
        self.heads = nn.ModuleDict(
            {str(lv): Conv3d(config.hidden, len(COARSE_THRESHOLDS_MM[lv]) + 1, 1) for lv in levels})
        self._bias_tensor = (None, None)  # (key, tensor): the class bias copied once per device, dtype and value
        self.difference_folded = False  # True once `folded_for_inference` put the difference channel in the weights

    def forward(self, inputs: dict) -> dict:
        """Map {level: (N, 3, d, h, w) patch} to {level: (N, classes, o_d, o_h, o_w) logits}, coarse first (calibrated);
        each axis on its own, so a tile need not be a cube."""
        state = None
        logits = {}
        for lv in self.config.levels:
            x = inputs[lv]
            if self.config.difference_channel and not self.difference_folded:
                x = torch.cat([x, x[:, :1] - x[:, 1:2]], 1)
            x = self.encoders[str(lv)](x)
            if state is not None:
                state = tuple(None if s is None else upsample_to(s, x.shape[2:]) for s in state)
            state = self.cell(x, state)
            logits[lv] = self.heads[str(lv)](state[0]) / self.config.temperature
        if any(self.config.class_bias):
            logits[1] = logits[1] + self._class_bias_like(logits[1])
        return logits

    def _class_bias_like(self, logits: torch.Tensor) -> torch.Tensor:
        """The class bias as a (1, 3, 1, 1, 1) tensor on the logits' device and dtype, copied there only once."""
        key = (logits.device, logits.dtype, self.config.class_bias)
        if self._bias_tensor[0] != key:
            bias = torch.tensor(self.config.class_bias, dtype=logits.dtype, device=logits.device)
            self._bias_tensor = (key, bias.view(1, -1, 1, 1, 1))
        return self._bias_tensor[1]


def folded_for_inference(net: MisalignmentNet) -> MisalignmentNet:
    """A copy of `net` for inference, the same function within float32 rounding in fewer passes over the activations:
    each batch norm folded into the convolution before it, and the difference channel (fixed - moving) into each
    level's first convolution. Folding a folded network changes nothing."""
    folded = copy.deepcopy(net).eval()
    with torch.no_grad():
        for encoder in folded.encoders.values():
            for index, layer in enumerate(list(encoder)):
                if isinstance(layer, nn.BatchNorm3d):
                    _fold_batch_norm(encoder[index - 1], layer)
                    encoder[index] = nn.Identity()
            if folded.config.difference_channel and not folded.difference_folded:
                _fold_difference_channel(encoder[0])
    folded.difference_folded = folded.config.difference_channel
    return folded


def _fold_batch_norm(conv: nn.Conv3d, norm: nn.BatchNorm3d) -> None:
    """Make `conv` compute batch norm (inference statistics) of its output: scaled weights, shifted bias."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight.mul_(scale.view(-1, 1, 1, 1, 1))
    conv.bias = nn.Parameter(shift)


def _fold_difference_channel(conv: nn.Conv3d) -> None:
    """Make a first convolution that read (fixed, moving, inside, fixed - moving) read (fixed, moving, inside)."""
    w = conv.weight
    conv.weight = nn.Parameter(torch.stack([w[:, 0] + w[:, 3], w[:, 1] - w[:, 3], w[:, 2]], 1))
    conv.in_channels = 3
