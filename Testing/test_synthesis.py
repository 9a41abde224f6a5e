"""Synthetic deformation fields, warping, augmentation and training targets."""
import numpy as np
import pytest
import torch

from RegistrationMisalignmentLib import synthesis
from RegistrationMisalignmentLib.model import ModelConfig, hidden_size
from RegistrationMisalignmentLib.sources import source_from_image
from RegistrationMisalignmentLib.labels import COARSE_THRESHOLDS_MM
from RegistrationMisalignmentLib.synthesis import (BREATHING_RATIO_RANGE, BREATHING_RATIO_VARIATION, FAMILIES, IGNORE,
                                                   breathing_density, collate, level_targets, make_batch, make_field,
                                                   make_sample, make_samples, parenchyma_density_ratio, sponge,
                                                   thick_slices, vector_norm, warp)


@pytest.fixture(scope="module")
def source(small_phantom):
    ct, lungs = small_phantom
    return source_from_image("phantom-small", ct, lungs)


CONFIG = ModelConfig(features=4, hidden=4)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "zero"])
def test_fields_reach_the_requested_magnitude_and_stay_in_the_body(source, family):
    gen = torch.Generator().manual_seed(3)
    field = make_field(family, source.hu, source.torso, source.lungs, 0, source.lung_z_range, gen, 15.0)
    magnitude = vector_norm(field)
    assert field.shape == (3,) + tuple(source.hu.shape)
    assert 10.0 < float(magnitude.max()) <= 15.0 + 1e-3
    outside = ~source.torso
    assert float(magnitude[outside].mean()) < 0.5 * float(magnitude[source.lungs].mean())


def test_zero_field_gives_only_correct_targets(source):
    sample = make_sample(source, CONFIG, 16, seed=5, family="zero")
    for lv, target in sample.targets.items():
        assert set(torch.unique(target).tolist()) <= {IGNORE, 0}
        assert (target == 0).any()


@pytest.mark.parametrize("shift_mm, classes", [(2.0, {4: 0, 2: 0, 1: 0}), (4.5, {4: 0, 2: 1, 1: 1}),
                                                (8.0, {4: 1, 2: 1, 1: 2})])
def test_targets_are_the_binned_field_magnitude_at_every_level(source, monkeypatch, shift_mm, classes):
    def constant_field(family, hu, *args):
        field = torch.zeros((3,) + tuple(hu.shape))
        field[1] = shift_mm
        return field
    monkeypatch.setattr(synthesis, "make_field", constant_field)
    sample = make_sample(source, CONFIG, 16, seed=7)
    for lv, expected in classes.items():
        valid = sample.targets[lv][sample.targets[lv] != IGNORE]
        assert len(valid) > 0 and set(valid.tolist()) == {expected}


def test_the_lungs_scored_are_the_fixed_images_the_source_lungs_warped_by_the_field(source, monkeypatch):
    """The fixed image is the source at x + u(x); so are its lungs, over which the metrics count (as at inference,
    where the lungs come from the fixed image)."""
    def constant_field(shift_mm):
        def field(family, hu, *args):
            shifted = torch.zeros((3,) + tuple(hu.shape))
            shifted[1] = shift_mm
            return shifted
        return field

    lungs = {}
    for shift in (0.0, 8.0):
        monkeypatch.setattr(synthesis, "make_field", constant_field(shift))
        lungs[shift] = make_sample(source, CONFIG, 32, seed=12).lungs  # the same crop: the field draws nothing
    assert lungs[0.0][:, 8:].any() and not torch.equal(lungs[8.0], lungs[0.0])
    assert torch.equal(lungs[8.0][:, :-8], lungs[0.0][:, 8:])


def test_every_architecture_gets_the_same_pairs_from_a_seed(source):
    """The ablation trains and scores its architectures on the same data: the single CNN too, though it needs less
    context around a tile."""
    samples = [make_sample(source, ModelConfig(features=4, hidden=4, architecture=architecture), 16, seed=21)
               for architecture in ("hierarchical_lstm", "multires_cnn", "single_cnn")]
    for other in samples[1:]:
        assert torch.equal(other.residual_mm, samples[0].residual_mm) and torch.equal(other.lungs, samples[0].lungs)
        assert torch.equal(other.targets[1], samples[0].targets[1]) and other.family == samples[0].family


@pytest.mark.parametrize("seed", [3, 8, 10])
def test_finest_targets_are_the_binned_residual_of_the_sample(source, seed):
    sample = make_sample(source, CONFIG, 16, seed=seed)
    target = sample.targets[1]
    assert sample.residual_mm.shape == target.shape == sample.lungs.shape
    valid = target != IGNORE
    binned = torch.bucketize(sample.residual_mm[valid], torch.tensor([3.0, 6.0]), right=False)
    assert valid.any() and torch.equal(binned, target[valid])


def test_respiratory_field_is_largest_at_the_diaphragm(source):
    gen = torch.Generator().manual_seed(0)
    field = make_field("respiratory", source.hu, source.torso, source.lungs, 0, source.lung_z_range, gen, 20.0)
    bottom, top = source.lung_z_range
    lungs = source.lungs
    low = vector_norm(field)[bottom:bottom + 10][lungs[bottom:bottom + 10]].mean()
    high = vector_norm(field)[top - 10:top][lungs[top - 10:top]].mean()
    assert float(low) > 2.0 * float(high)


def test_samples_are_reproducible_by_seed(source):
    a = make_sample(source, CONFIG, 16, seed=11)
    b = make_sample(source, CONFIG, 16, seed=11)
    c = make_sample(source, CONFIG, 16, seed=12)
    for lv in CONFIG.levels:
        assert torch.equal(a.inputs[lv], b.inputs[lv])
        assert torch.equal(a.targets[lv], b.targets[lv])
    assert not torch.equal(a.inputs[1], c.inputs[1])


def test_samples_made_together_are_those_made_one_by_one_bit_for_bit(source, small_phantom, monkeypatch):
    """Batched synthesis (what training uses on a GPU, made to batch here on the CPU too) draws each sample from its
    own seed in the same order: every field family, density change, thick slices and cropped fields of view, from
    two sources."""
    monkeypatch.setattr(synthesis, "_chunks", lambda specs, device: [list(specs)])
    ct, lungs = small_phantom
    other = source_from_image("phantom-flipped", sitk_flipped(ct), sitk_flipped(lungs))
    specs = [((source, other)[i % 2], 40 + i) for i in range(10)]
    together = make_samples(specs, CONFIG, 16, density_change=0.7)
    alone = [make_sample(src, CONFIG, 16, seed, density_change=0.7) for src, seed in specs]
    assert {s.family for s in alone} == set(FAMILIES)
    for a, b in zip(together, alone):
        assert a.family == b.family and torch.equal(a.lungs, b.lungs) and torch.equal(a.residual_mm, b.residual_mm)
        for lv in CONFIG.levels:
            assert torch.equal(a.inputs[lv], b.inputs[lv]) and torch.equal(a.targets[lv], b.targets[lv])
    inputs, targets = make_batch(specs[:4], CONFIG, 16, density_change=0.7)
    expected_inputs, expected_targets = collate(alone[:4])
    monkeypatch.undo()  # on the CPU: one sample at a time, stacked
    cpu_inputs, cpu_targets = make_batch(specs[:4], CONFIG, 16, density_change=0.7)
    for lv in CONFIG.levels:
        assert inputs[lv].is_contiguous() and torch.equal(inputs[lv], expected_inputs[lv])
        assert torch.equal(targets[lv], expected_targets[lv])
        assert torch.equal(cpu_inputs[lv], expected_inputs[lv]) and torch.equal(cpu_targets[lv], expected_targets[lv])


def sitk_flipped(image):
    """The image mirrored left-right (a second, different source)."""
    import SimpleITK as sitk
    return sitk.Flip(image, [True, False, False])


def test_targets_count_the_thresholds_below_the_residual_as_bucketize_does():
    config = ModelConfig(features=4, hidden=4)
    full = 4 * hidden_size(4, 8)  # the S4 output's span for an 8^3 tile
    magnitude = torch.rand(2, full, full, full) * 10.0
    lo1 = (full - 8) // 2
    magnitude[0, lo1, lo1, lo1:lo1 + 4] = torch.tensor([3.0, 6.0, 0.0, 3.0001])  # on a threshold: the lower class
    targets = level_targets(magnitude, torch.ones_like(magnitude), config, 8)
    for lv in config.levels:
        span = lv * hidden_size(lv, 8)
        lo = (full - span) // 2
        crop = (slice(None),) + (slice(lo, lo + span),) * 3
        pooled = torch.nn.functional.avg_pool3d(magnitude[crop][:, None], lv)[:, 0] if lv > 1 else magnitude[crop]
        expected = torch.bucketize(pooled.contiguous(), torch.tensor(COARSE_THRESHOLDS_MM[lv]), right=False)
        assert torch.equal(targets[lv], expected)
    assert targets[1][0, 0, 0, :4].tolist() == [0, 1, 0, 1]


def test_a_mixed_frequency_field_without_seeds_is_zero_not_amplified_noise():
    hu = torch.full((16, 16, 16), -800.0)
    hu[:, :, 8:] = 40.0  # an edge, but outside the (empty) lungs: no seed regions
    field = synthesis.mixed_frequency_field(hu, torch.zeros_like(hu), torch.Generator().manual_seed(0), 10.0)
    assert field.shape == (3, 16, 16, 16) and not field.any()


def test_warp_by_a_constant_shift_moves_the_image():
    volume = torch.arange(20, dtype=torch.float32).view(20, 1, 1).expand(20, 20, 20)[None].clone()
    field = torch.zeros(3, 10, 10, 10)
    field[0] = 2.0
    warped = warp(volume, field, 5)
    assert torch.allclose(warped[0, :, 4, 4], torch.arange(7, 17, dtype=torch.float32))


def test_sponge_changes_lung_density_with_volume_not_soft_tissue():
    field = torch.zeros(3, 12, 12, 12)
    field[0] = 0.2 * torch.arange(12, dtype=torch.float32).view(12, 1, 1)  # expansion: det J = 1.2
    hu = torch.full((12, 12, 12), -800.0)
    hu[:, :, 6:] = 40.0
    out = sponge(hu, field)
    assert torch.allclose(out[6, 6, 2], torch.tensor(200.0 / 1.2 - 1000.0))
    assert torch.all(out[:, :, 6:] == 40.0)


def test_jacobian_determinant_is_the_first_row_expansion_of_torch_gradient_bit_for_bit():
    field = 3.0 * torch.randn(3, 9, 11, 13, generator=torch.Generator().manual_seed(0))
    grads = [torch.gradient(field[i]) for i in range(3)]
    j = [[grads[i][k] + (1.0 if i == k else 0.0) for k in range(3)] for i in range(3)]
    expected = (j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
                + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]))
    assert torch.equal(synthesis.jacobian_determinant(field), expected)  # training samples stay exactly as they were
    linear = torch.zeros(3, 6, 6, 6)
    linear[1] = 0.5 * torch.arange(6, dtype=torch.float32).view(1, 6, 1)  # du_y/dy = 0.5, edges included
    assert torch.allclose(synthesis.jacobian_determinant(linear), torch.tensor(1.5))


def test_parenchyma_density_scales_lung_not_air_tissue_or_bone():
    hu = torch.tensor([-1000.0, -900.0, -850.0, -600.0, -300.0, 0.0, 40.0, 700.0])
    denser = parenchyma_density_ratio(hu, 1.6)
    assert torch.allclose(denser[1:3], torch.tensor([-840.0, -760.0]))  # (HU + 1000) x 1.6 in parenchyma
    assert denser[0] == -1000.0 and torch.equal(denser[5:], hu[5:])
    assert torch.all(denser[1:5] > hu[1:5]) and torch.all(torch.diff(denser) > 0)  # stays ordered: no jumps
    assert torch.equal(parenchyma_density_ratio(hu, 1.0), hu)


def test_breathing_density_keeps_the_ratio_in_range_and_tissue_unchanged():
    hu = torch.full((24, 24, 24), -850.0)
    hu[:, :, 12:] = 40.0
    gen = torch.Generator().manual_seed(0)
    lo, hi = (r * (1 + s * BREATHING_RATIO_VARIATION) for r, s in zip(BREATHING_RATIO_RANGE, (-1, 1)))
    ratios = [(breathing_density(hu, gen)[:, :, :12] + 1000.0) / 150.0 for _ in range(20)]
    assert all(lo - 1e-4 <= float(r.min()) and float(r.max()) <= hi + 1e-4 for r in ratios)
    assert min(float(r.mean()) for r in ratios) < 0.9 and max(float(r.mean()) for r in ratios) > 1.15
    assert all(float(r.std()) > 0 for r in ratios)  # varies smoothly in space
    assert torch.all(breathing_density(hu, gen)[:, :, 12:] == 40.0)


def test_density_change_alters_the_images_not_the_residual(source):
    changed = plain = 0
    for seed in range(8):
        a = make_sample(source, CONFIG, 16, seed=seed)
        b = make_sample(source, CONFIG, 16, seed=seed, density_change=1.0)
        assert torch.equal(a.residual_mm, b.residual_mm)  # the field comes first; the change is not misalignment
        same = [torch.equal(a.inputs[1][c], b.inputs[1][c]) for c in range(2)]  # fixed, moving channels
        changed += not all(same)
        plain += torch.equal(a.inputs[1], make_sample(source, CONFIG, 16, seed=seed, density_change=0.0).inputs[1])
    assert changed == 8 and plain == 8


def test_thick_slices_average_along_z_only():
    hu = torch.zeros(12, 4, 4)
    hu[5] = 300.0
    thick = thick_slices(hu, 3)
    assert thick.shape == hu.shape
    assert float(thick[5].mean()) < 300.0 and float(thick[:, 0, 0].sum()) == pytest.approx(300.0, rel=0.2)
    assert torch.allclose(thick[:, 0, 0], thick[:, 3, 3])


@pytest.mark.parametrize("depth, thickness", [(304, 3), (130, 2), (128, 3)])
def test_thick_slices_move_nothing_along_z(depth, thickness):
    """A linear ramp's slab means, interpolated back, are the ramp itself away from the ends (it was stretched by up
    to 2 voxels when the depth was not a whole number of slabs)."""
    ramp = torch.arange(depth, dtype=torch.float32).view(depth, 1, 1).expand(depth, 2, 2).contiguous()
    back = thick_slices(ramp, thickness)[thickness:-thickness, 0, 0]
    assert torch.allclose(back, ramp[thickness:-thickness, 0, 0], atol=1e-3)


def test_class_labels_of_a_sample_cover_the_three_classes_over_families(source):
    seen = set()
    for seed in range(8):
        sample = make_sample(source, CONFIG, 16, seed=seed)
        seen |= set(np.unique(sample.targets[1].numpy()).tolist())
    assert {0, 1, 2} <= seen
