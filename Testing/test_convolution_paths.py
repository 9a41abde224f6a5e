"""The convolution-paths script: its prediction of PyTorch's choice is the convolution PyTorch really runs."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import convolution_paths  # noqa: E402


def test_the_script_names_the_convolution_pytorch_runs_for_each_layer(tiny_model):
    rows = convolution_paths.compare(tiny_model, (64, 64, 8), repeats=1)
    depths = tiny_model.config.encoder_depths
    assert len(rows) == sum(depths.values()) + len(depths)  # encoders, and the cell at each level
    assert {r["pytorch_picks_reference"] for r in rows} == {True, False}  # only the first S1 layers are large enough
    for row in rows:
        x = torch.randn(row["input_shape"])
        weight = torch.randn(4, row["input_shape"][1], 3, 3, 3)
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as run:
            F.conv3d(x, weight)
        names = {event.key for event in run.key_averages()}
        assert ("aten::slow_conv3d_forward" in names) == row["pytorch_picks_reference"], row["input_shape"]
        assert row["pytorch_ms"] > 0 and row["onednn_ms"] > 0
