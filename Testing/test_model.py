"""Network shapes, the ablations and the aligned pyramid geometry."""
import pytest
import torch
import torch.nn.functional as F

from torch import nn

from RegistrationMisalignmentLib.model import (ARCHITECTURES, Conv3d, MisalignmentNet, ModelConfig, folded_for_inference,
                                            input_size)
from RegistrationMisalignmentLib.pyramid import build_pyramid, context_margin, tile_inputs


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("out_size", [8, 16])
def test_every_architecture_maps_patches_to_the_output_tile(architecture, out_size):
    config = ModelConfig(architecture=architecture, features=4, hidden=4)
    net = MisalignmentNet(config)
    inputs = {lv: torch.randn(2, 3, *(input_size(config, lv, out_size),) * 3) for lv in config.levels}
    logits = net(inputs)
    assert tuple(logits[1].shape) == (2, 3, out_size, out_size, out_size)
    assert set(logits) == set(config.levels)
    for lv in config.levels:
        assert logits[lv].shape[1] == (3 if lv == 1 else 2)


def test_per_patch_inputs_have_the_same_voxel_count_at_every_level():
    config = ModelConfig()
    assert len({input_size(config, lv, 8) for lv in config.levels}) == 1


def test_single_resolution_ablation_reads_only_s1():
    assert ModelConfig(architecture="single_cnn").levels == (1,)
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(architecture="transformer")


def _logits_before_and_after(temperature: float, class_bias=(0.0, 0.0, 0.0)) -> tuple:
    """Logits of a small network on random inputs, uncalibrated and with the given calibration."""
    torch.manual_seed(0)
    net = MisalignmentNet(ModelConfig(features=4, hidden=4)).eval()
    inputs = {lv: torch.randn(1, 3, *(input_size(net.config, lv, 8),) * 3) for lv in net.config.levels}
    with torch.no_grad():
        plain = net(inputs)
        net.config.temperature, net.config.class_bias = temperature, class_bias
        return net, plain, net(inputs)


def test_temperature_divides_the_logits_of_every_step():
    net, plain, scaled = _logits_before_and_after(2.5)
    for lv in net.config.levels:
        assert torch.allclose(scaled[lv] * 2.5, plain[lv], atol=1e-6)
        assert torch.equal(scaled[lv].argmax(1), plain[lv].argmax(1))
    assert ModelConfig().temperature == 1.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            ModelConfig(temperature=bad)


def test_class_bias_shifts_only_the_finest_logits_after_the_temperature():
    net, plain, calibrated = _logits_before_and_after(2.0, (0.0, 1.5, -0.5))
    expected = plain[1] / 2.0 + torch.tensor([0.0, 1.5, -0.5]).view(1, 3, 1, 1, 1)
    assert torch.allclose(calibrated[1], expected, atol=1e-6)
    for lv in (4, 2):
        assert torch.allclose(calibrated[lv] * 2.0, plain[lv], atol=1e-6)
    assert net.config.uncalibrated() == ModelConfig(features=4, hidden=4)
    assert ModelConfig(class_bias=[0, 1, 2]).class_bias == (0.0, 1.0, 2.0)  # JSON gives lists
    for bad in ((0.0, 1.0), (0.0, float("nan"), 0.0)):
        with pytest.raises(ValueError, match="class_bias"):
            ModelConfig(class_bias=bad)


def test_pyramid_levels_halve_and_keep_the_grid():
    volume = torch.zeros(3, 32, 40, 48)
    volume[0, :, :, 24:] = 1.0
    pyramid = build_pyramid(volume)
    assert tuple(pyramid[2].shape) == (3, 16, 20, 24)
    assert tuple(pyramid[4].shape) == (3, 8, 10, 12)
    assert torch.all(pyramid[4][0, :, :, 7:] == 1.0) and torch.all(pyramid[4][0, :, :, :5] == 0.0)
    with pytest.raises(ValueError, match="multiples of 4"):
        build_pyramid(torch.zeros(3, 30, 32, 32))


def test_tiles_are_centred_on_the_same_physical_point():
    config = ModelConfig(features=4, hidden=4)
    margin = context_margin(config, 8)
    n = 8 + 2 * margin
    z = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, n, n)
    pyramid = build_pyramid(torch.stack([z, z, torch.ones_like(z)]))
    patches = tile_inputs(pyramid, config, (margin,) * 3, 8)
    centre_s1 = margin + 4 - 0.5  # physical centre of the output block, in S1 index units
    for lv, patch in patches.items():
        mid = patch.shape[1] // 2
        value = 0.5 * (patch[0, mid - 1, mid, mid] + patch[0, mid, mid, mid])
        assert abs(float(value) - centre_s1) < 0.6, lv
    with pytest.raises(ValueError, match="multiple of 4"):
        tile_inputs(pyramid, config, (margin + 2,) * 3, 8)


def test_cpu_inference_convolves_a_single_small_volume_with_onednn(monkeypatch):
    """PyTorch's own choice for one volume with N x C x D x H <= 20480 is its slow reference convolution; inference
    goes to oneDNN with the same result, while training and autocast keep PyTorch's choice."""
    calls = []
    onednn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *args: calls.append(args[0].shape) or onednn(*args))
    conv = Conv3d(4, 12, 3)
    x = torch.randn(1, 4, 20, 20, 20)
    with torch.no_grad():
        got = conv(x)
    assert calls == [x.shape]
    assert torch.allclose(got, F.conv3d(x, conv.weight, conv.bias), atol=1e-5)
    assert conv(x).requires_grad  # training
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.bfloat16
    assert len(calls) == 1


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_reads_each_axis_on_its_own(architecture):
    """A box's output: the edges of the box, the same values as the cube that holds it (its centre slab)."""
    net = MisalignmentNet(ModelConfig(architecture=architecture, features=4, hidden=4)).eval()
    torch.manual_seed(0)
    cube = {lv: torch.randn(1, 3, *(input_size(net.config, lv, 24),) * 3) for lv in net.config.levels}
    box = {}
    for lv, x in cube.items():  # the middle 8 of 24 output voxels along z: 8 S1 voxels in from each side
        inner = input_size(net.config, lv, 8)
        start = (x.shape[2] - inner) // 2
        box[lv] = x[:, :, start:start + inner]
    with torch.no_grad():
        whole, part = net(cube)[1], net(box)[1]
    assert part.shape[2:] == (8, 24, 24)
    assert torch.allclose(part, whole[:, :, 8:16], atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("batch_norm, difference_channel", [(True, True), (False, True), (True, False)])
def test_folding_for_inference_keeps_the_function_in_fewer_layers(architecture, batch_norm, difference_channel):
    torch.manual_seed(2)
    net = MisalignmentNet(ModelConfig(architecture=architecture, features=4, hidden=4, batch_norm=batch_norm,
                                      difference_channel=difference_channel))
    with torch.no_grad():  # statistics and affine maps far from the identity
        for norm in (m for m in net.modules() if isinstance(m, nn.BatchNorm3d)):
            norm.running_mean.uniform_(-1.0, 1.0), norm.running_var.uniform_(0.3, 3.0)
            norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1.0, 1.0)
    net.eval()
    inputs = {lv: torch.randn(2, 3, *(input_size(net.config, lv, 8),) * 3) for lv in net.config.levels}
    folded = folded_for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules()) == batch_norm  # the original is untouched
    first = folded.encoders[str(net.config.levels[0])][0]
    assert first.in_channels == first.weight.shape[1] == 3
    with torch.no_grad():
        expected, got, again = net(inputs), folded(inputs), folded_for_inference(folded)(inputs)
    for lv in net.config.levels:
        assert torch.allclose(got[lv], expected[lv], atol=1e-4)
        assert torch.equal(again[lv], got[lv])
