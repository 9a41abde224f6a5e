"""Synthetic training pairs: deformation fields, warping, intensity augmentation and targets (torch, any device)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .labels import COARSE_THRESHOLDS_MM
from .devices import synchronize
from .errors import InputError
from .model import ModelConfig, hidden_size
from .pyramid import AIR_HU, build_pyramid, context_margin, separable_filter, stack_channels, tile_inputs

FAMILIES = ("single_frequency", "mixed_frequency", "respiratory", "zero")
FAMILY_WEIGHTS = (0.35, 0.3, 0.2, 0.15)
MAX_MAGNITUDES_MM = (7.0, 15.0, 20.0)
WARP_MARGIN = 24  # S1 voxels of source read around the fixed region (>= largest displacement)
IGNORE = -1
FIELD_VOXEL_MM = 2.0  # deformation fields are generated on this grid, then upsampled to 1 mm
BREATHING_RATIO_RANGE = (0.625, 1.6)  # lung density ratio between two breathing states (either way round)
BREATHING_RATIO_VARIATION = 0.2  # smooth spatial variation of that ratio (+-20 %)
PARENCHYMA_HU = -850.0  # typical lung parenchyma; denser voxels are part tissue, whose density does not change


@dataclass
class Source:
    """A CT on the 1 mm grid (zyx tensors) with its torso and lung masks."""

    name: str
    hu: torch.Tensor
    torso: torch.Tensor
    lungs: torch.Tensor

    def __post_init__(self):
        self.lung_voxels = torch.nonzero(self.lungs).cpu()  # in host memory: drawing a centre never waits for a GPU
        zs = self.lung_voxels[:, 0]
        self.lung_z_range = (int(zs.min()), int(zs.max())) if len(zs) else (0, self.hu.shape[0] - 1)

    def to(self, device) -> "Source":
        """This source with its volumes on `device` (itself when they are there already): samples made on a GPU
        then crop there instead of copying each crop from host memory."""
        device = torch.device(device)
        if self.hu.device.type == device.type:
            return self
        return Source(self.name, self.hu.to(device), self.torso.to(device), self.lungs.to(device))


def check_source_extent(source: Source, out_size: int, where: str = "") -> None:
    """Raise InputError unless the source's lungs, where its training tiles are centred, span one output tile
    (`out_size` voxels of the 1 mm grid) along every axis: a smaller source holds no whole tile."""
    lungs = lung_extent_xyz(source)
    short = [axis for axis, n in zip("xyz", lungs) if n < out_size]
    if short:
        ct = tuple(reversed(source.hu.shape))
        raise InputError(f"{source.name}{where}: its lungs span {_mm(lungs)} (x y z; the CT {_mm(ct)} on the 1 mm "
                         f"training grid), less than one {out_size} mm training tile (--out-size {out_size}) along "
                         f"{' and '.join(short)}: too small to train on; use a whole-chest CT")


def lung_extent_xyz(source: Source) -> tuple:
    """Edges (x, y, z voxels of the 1 mm grid) of the bounding box of a source's lungs; zeros without lungs."""
    voxels = source.lung_voxels
    if len(voxels) == 0:
        return (0, 0, 0)
    return tuple(reversed((voxels.max(0).values - voxels.min(0).values + 1).tolist()))


def _mm(edges) -> str:
    """Edges in mm as `a x b x c mm`."""
    return " x ".join(str(int(n)) for n in edges) + " mm"


@dataclass
class Sample:
    """One training tile: per-level inputs and targets (class index or IGNORE)."""

    inputs: dict
    targets: dict
    lungs: torch.Tensor  # S1 output region, bool: the fixed image's lungs (the source's, warped)
    family: str
    residual_mm: torch.Tensor  # S1 output region, |u| in mm (the continuous truth behind targets[1])


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    """1-D normalised Gaussian kernel truncated at 3 sigma."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of a (C, D, H, W) tensor (replicate border); wide kernels run at half size."""
    if sigma <= 0:
        return x
    if sigma > 2.0 and min(x.shape[1:]) >= 8:
        half = gaussian_smooth(F.avg_pool3d(x[None], 2, ceil_mode=True)[0], math.sqrt(sigma ** 2 - 0.25) / 2.0)
        return F.interpolate(half[None], size=tuple(x.shape[1:]), mode="trilinear", align_corners=False)[0]
    return separable_filter(x, _gaussian_kernel(sigma, x.device, x.dtype))


def drawn_on_host(values: torch.Tensor, device) -> torch.Tensor:
    """Random numbers drawn on the CPU (so that a seed gives the same ones on every device) on `device`; to a GPU
    through pinned memory, without waiting for the GPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return values
    return values.pin_memory().to(device, non_blocking=True)


def random_bspline_field(shape, spacing_mm: float, gen: torch.Generator, device, voxel_mm: float = 1.0):
    """Smooth random vector field (3, D, H, W) from random control points `spacing_mm` apart, unit max norm."""
    coarse = [max(2, int(math.ceil(n * voxel_mm / spacing_mm)) + 2) for n in shape]
    ctrl = drawn_on_host(torch.randn((1, 3, *coarse), generator=gen), device)
    field = F.interpolate(ctrl, size=tuple(shape), mode="trilinear", align_corners=True)[0]
    field = gaussian_smooth(field, spacing_mm / (4.0 * voxel_mm))
    return field / vector_norm(field).max().clamp_min(1e-6)


def _rand(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """Uniform random float in [lo, hi) from a torch generator."""
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def vector_norm(field: torch.Tensor) -> torch.Tensor:
    """Per-voxel Euclidean norm of a (..., 3, D, H, W) field."""
    return torch.sqrt((field * field).sum(-4))


def _scaled(field: torch.Tensor, max_mm: float) -> torch.Tensor:
    """Scale a field so its largest displacement norm is `max_mm`."""
    return field * (max_mm / vector_norm(field).max().clamp_min(1e-6))


def _scaled_unless_zero(field: torch.Tensor, max_mm: float) -> torch.Tensor:
    """`_scaled`, or zeros where the field's largest norm is below 1e-6 (decided on the device, without waiting)."""
    largest = vector_norm(field).max()
    return torch.where(largest < 1e-6, torch.zeros_like(field), field * (max_mm / largest.clamp_min(1e-6)))


def single_frequency_field(torso, gen, max_mm) -> torch.Tensor:
    """Random B-spline field (20-80 mm grid), smoothed and torso-masked (on the FIELD_VOXEL_MM grid)."""
    field = random_bspline_field(torso.shape, _rand(gen, 20.0, 80.0), gen, torso.device, FIELD_VOXEL_MM)
    soft = gaussian_smooth(torso[None].float(), 3.0 / FIELD_VOXEL_MM)
    return _scaled(field * soft, max_mm)


def mixed_frequency_field(hu, lungs, gen, max_mm) -> torch.Tensor:
    """Edge-driven random regions inside the lungs times a B-spline field, smoothed (sigma 5-15 mm)."""
    smooth = gaussian_smooth(hu[None], 1.0)[0]
    grads = torch.gradient(smooth)
    edges = (torch.sqrt(sum(g * g for g in grads)) > 60.0 * FIELD_VOXEL_MM) & (lungs > 0.5)
    keep = drawn_on_host(torch.rand(edges.shape, generator=gen), edges.device) < _rand(gen, 0.005, 0.05)
    seeds = (edges & keep).float()[None, None]
    regions = F.max_pool3d(seeds, kernel_size=5, stride=1, padding=2)[0]
    field = random_bspline_field(hu.shape, _rand(gen, 10.0, 30.0), gen, hu.device, FIELD_VOXEL_MM) * regions
    field = gaussian_smooth(field, _rand(gen, 5.0, 15.0) / FIELD_VOXEL_MM)
    return _scaled_unless_zero(field, max_mm)


def respiratory_field(torso, z_offset_mm: float, lung_z_range, gen, max_mm) -> torch.Tensor:
    """Diaphragm-driven cranio-caudal shift with anterior-posterior scaling decaying upward, plus weak B-spline."""
    d, h, w = torso.shape
    device = torso.device
    z = torch.arange(d, device=device, dtype=torch.float32) * FIELD_VOXEL_MM + z_offset_mm
    bottom, top = lung_z_range
    decay = ((top - z) / max(top - bottom, 1)).clamp(0.0, 1.0).view(d, 1, 1).expand(d, h, w)
    shift = _rand(gen, 15.0, 30.0)
    y = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1).expand(d, h, w) * FIELD_VOXEL_MM
    ap = _rand(gen, 0.08, 0.16) * (h * FIELD_VOXEL_MM - y) * decay
    field = torch.stack([shift * decay, -ap.clamp_max(shift), torch.zeros_like(decay)])
    field = field + 0.15 * shift * random_bspline_field(torso.shape, 60.0, gen, device, FIELD_VOXEL_MM)
    field = field * gaussian_smooth(torso[None].float(), 3.0 / FIELD_VOXEL_MM)
    return _scaled(field, max_mm)


def warp(volume: torch.Tensor, field: torch.Tensor, margin: int) -> torch.Tensor:
    """Sample a (C, D, H, W) volume at x + u(x), x on the central region (offset `margin`); trilinear. A batch:
    (N, C, D, H, W) volumes and (N, 3, d, h, w) fields."""
    if volume.dim() == 4:
        return warp(volume[None], field[None], margin)[0]
    d, h, w = volume.shape[2:]
    fd, fh, fw = field.shape[2:]
    grids = torch.meshgrid(*[torch.arange(n, device=field.device, dtype=field.dtype) + margin for n in (fd, fh, fw)],
                           indexing="ij")
    pos = [g + u for g, u in zip(grids, field.unbind(1))]
    norm = [2.0 * p / (n - 1) - 1.0 for p, n in zip(pos, (d, h, w))]
    grid = torch.stack([norm[2], norm[1], norm[0]], dim=-1)
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)


def central_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`torch.gradient` of `x` along one dim (unit spacing, one-sided at the edges), bit for bit, written into one
    new tensor."""
    n = x.shape[dim]
    out = torch.empty_like(x)
    torch.sub(x.narrow(dim, 2, n - 2), x.narrow(dim, 0, n - 2), out=out.narrow(dim, 1, n - 2)).div_(2.0)
    torch.sub(x.narrow(dim, 1, 1), x.narrow(dim, 0, 1), out=out.narrow(dim, 0, 1))
    torch.sub(x.narrow(dim, n - 1, 1), x.narrow(dim, n - 2, 1), out=out.narrow(dim, n - 1, 1))
    return out


def jacobian_determinant(field: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of x -> x + u(x) for a (..., 3, D, H, W) field (central differences, voxel
    units), expanded along the first row with the products and sums taken in place."""
    components = field.unbind(-4)
    j = [[central_difference(components[i], k - 3) for k in range(3)] for i in range(3)]
    for i in range(3):
        j[i][i].add_(1.0)

    def cofactor_term(row0: int, a: int, b: int) -> torch.Tensor:
        """j[0][row0] * (j[1][a] * j[2][b] - j[1][b] * j[2][a])."""
        return torch.mul(j[1][a], j[2][b]).sub_(j[1][b] * j[2][a]).mul_(j[0][row0])

    return cofactor_term(0, 1, 2).sub_(cofactor_term(1, 0, 2)).add_(cofactor_term(2, 0, 1))


def sponge(hu: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Sponge model: lung density divided by the Jacobian determinant (clipped to [0.7, 1.3])."""
    jac = jacobian_determinant(field).clamp(0.7, 1.3)
    return torch.where(hu < -200.0, (hu + 1000.0) / jac - 1000.0, hu)


def parenchyma_density_ratio(hu: torch.Tensor, ratio) -> torch.Tensor:
    """HU with the lung parenchyma's density (HU + 1000) times `ratio`; tissue and bone (>= 0 HU) unchanged."""
    parenchyma_density = (hu + 1000.0).clamp(0.0, PARENCHYMA_HU + 1000.0)
    parenchyma_share = 1.0 - ((hu - PARENCHYMA_HU) / -PARENCHYMA_HU).clamp(0.0, 1.0)
    return hu + (ratio - 1.0) * parenchyma_density * parenchyma_share


def breathing_density(hu: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Lung parenchyma in another breathing state: its density times a smooth random ratio field."""
    lo, hi = BREATHING_RATIO_RANGE
    mean = math.exp(_rand(gen, math.log(lo), math.log(hi)))
    variation = random_bspline_field(hu.shape, _rand(gen, 40.0, 80.0), gen, hu.device)[0]
    return parenchyma_density_ratio(hu, mean * (1.0 + BREATHING_RATIO_VARIATION * variation))


def thick_slices(hu: torch.Tensor, thickness: int) -> torch.Tensor:
    """Simulate a scan with `thickness`-mm slices along z, linearly interpolated back to 1 mm: each slab's mean sits
    at the slab's centre, so nothing moves (z is padded by its last slice to whole slabs, then cropped)."""
    d = hu.shape[0]
    columns = hu.permute(1, 2, 0).reshape(1, -1, d)
    whole = F.pad(columns, (0, -d % thickness), mode="replicate")
    pooled = F.avg_pool1d(whole, thickness, thickness)
    back = F.interpolate(pooled, scale_factor=thickness, mode="linear", align_corners=False)[..., :d]
    return back.reshape(hu.shape[1], hu.shape[2], d).permute(2, 0, 1).contiguous()


def random_field_of_view(shape, gen, device) -> torch.Tensor:
    """Inside-the-image flag of a scan cropped by a random plane (simulates partial chest coverage)."""
    inside = torch.ones(shape, device=device)
    axis = int(torch.randint(0, 3, (), generator=gen))
    cut = int(shape[axis] * _rand(gen, 0.3, 0.7))
    index = [slice(None)] * 3
    index[axis] = slice(cut, None) if _rand(gen) < 0.5 else slice(None, cut)
    inside[tuple(index)] = 0.0
    return inside


def make_field(family: str, hu, torso, lungs, z_offset, lung_z_range, gen, max_mm) -> torch.Tensor:
    """Deformation field (3, D, H, W) in mm of the given family, built on a coarser grid and upsampled."""
    if family == "zero":
        return torch.zeros((3,) + tuple(hu.shape), device=hu.device)
    f = int(FIELD_VOXEL_MM)
    hu_c, torso_c, lungs_c = (F.avg_pool3d(v[None, None].float(), f)[0, 0] for v in (hu, torso, lungs))
    if family == "single_frequency":
        field = single_frequency_field(torso_c, gen, max_mm)
    elif family == "mixed_frequency":
        field = mixed_frequency_field(hu_c, lungs_c, gen, max_mm)
    else:
        field = respiratory_field(torso_c, float(z_offset), lung_z_range, gen, max_mm)
    return F.interpolate(field[None], size=tuple(hu.shape), mode="trilinear", align_corners=False)[0]


def level_targets(magnitude: torch.Tensor, valid: torch.Tensor, config: ModelConfig, out_size: int) -> dict:
    """Class targets per level from |u| and validity on the S1 region of the S4 output (IGNORE where invalid); one
    (D, H, W) region or a batch of them (N, D, H, W)."""
    targets = {}
    full = magnitude.shape[-1]
    for lv in config.levels:
        span = lv * hidden_size(lv, out_size)
        lo = (full - span) // 2
        crop = (Ellipsis,) + (slice(lo, lo + span),) * 3
        mag = _pooled(magnitude[crop], lv)
        ok = _pooled(valid[crop].float(), lv) > 0.5 if lv > 1 else valid[crop] > 0
        # the class is the number of thresholds below |u| (as bucketize, without copying thresholds to a GPU)
        cls = sum((mag > threshold).long() for threshold in COARSE_THRESHOLDS_MM[lv])
        targets[lv] = torch.where(ok, cls, torch.full_like(cls, IGNORE))
    return targets


def _pooled(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Average pooling of the last three dimensions by `factor` (the volume itself for 1)."""
    if factor == 1:
        return volume
    return F.avg_pool3d(volume.unsqueeze(-4), factor).squeeze(-4)


@dataclass
class _Draft:
    """One sample's drawn part: its generator, family, source crops (with the warp margin) and field."""

    gen: torch.Generator
    family: str
    hu: torch.Tensor
    torso: torch.Tensor
    lungs: torch.Tensor
    inside: torch.Tensor
    field: torch.Tensor


def sampling_margin(config: ModelConfig, out_size: int) -> int:
    """S1 voxels around a sample's output tile over which its source is cropped and its field drawn: the context of
    the full three-step network (or more), whatever the architecture, so that the ablation's architectures are
    trained and scored on the same pairs (the single CNN, with less context, cuts its patches from the middle)."""
    return max(context_margin(config, out_size), context_margin(ModelConfig(), out_size))


def _draft(source: Source, config: ModelConfig, out_size: int, seed: int, device, family: str) -> _Draft:
    """Draw a sample's family, magnitude and centre, crop the source there and make its field."""
    gen = torch.Generator().manual_seed(seed)
    family = family or FAMILIES[int(torch.multinomial(torch.tensor(FAMILY_WEIGHTS), 1, generator=gen))]
    max_mm = MAX_MAGNITUDES_MM[int(torch.randint(0, len(MAX_MAGNITUDES_MM), (), generator=gen))] * _rand(gen, 0.6, 1.0)
    size = out_size + 2 * sampling_margin(config, out_size)
    centre = source.lung_voxels[int(torch.randint(0, len(source.lung_voxels), (), generator=gen))].tolist()
    lo = [(c - size // 2) for c in centre]
    hu, torso, lungs, inside = _crop_padded(source, lo, size + 2 * WARP_MARGIN, WARP_MARGIN, device)
    core = (slice(WARP_MARGIN, WARP_MARGIN + size),) * 3
    field = make_field(family, hu[core], torso[core], lungs[core], lo[0], source.lung_z_range, gen, max_mm)
    return _Draft(gen, family, hu, torso, lungs, inside, field)


def _augmented(draft: _Draft, fixed_hu, moving_hu, inside, body, device, density_change: float) -> tuple:
    """A sample's warped pair after its random changes: breathing density, thick slices, a cropped field of view
    and noise (drawn in this order from its generator)."""
    gen = draft.gen
    if density_change > 0 and _rand(gen) < density_change:
        if _rand(gen) < 0.5:
            fixed_hu = breathing_density(fixed_hu, gen)
        else:
            moving_hu = breathing_density(moving_hu, gen)
    if _rand(gen) < 0.3:
        thickness = int(torch.randint(2, 4, (), generator=gen))
        fixed_hu, moving_hu = thick_slices(fixed_hu, thickness), thick_slices(moving_hu, thickness)
    if _rand(gen) < 0.25:
        inside = inside * random_field_of_view(inside.shape, gen, device)
    noise = _rand(gen, 0.0, 20.0)
    noise_gen = _noise_generator(gen, device)
    fixed_hu = fixed_hu + body * noise * torch.randn(fixed_hu.shape, generator=noise_gen, device=noise_gen.device)
    moving_hu = moving_hu + body * noise * torch.randn(moving_hu.shape, generator=noise_gen, device=noise_gen.device)
    return fixed_hu, moving_hu, inside


@dataclass
class _Batch:
    """Synthetic tiles made together: per-level inputs and targets, lungs and |u| on the output region (all with a
    leading sample dimension) and the family of each."""

    inputs: dict
    targets: dict
    lungs: torch.Tensor
    residual_mm: torch.Tensor
    families: list


def _synthesise(sources_and_seeds, config: ModelConfig, out_size: int, device, family: str,
                density_change: float) -> _Batch:
    """What is drawn is made per sample, in the order of `make_sample`; the warp, the sponge model, the pyramid,
    the patches and the targets are computed for all samples at once (on a GPU, a fraction of the launches)."""
    drafts = [_draft(source, config, out_size, seed, device, family) for source, seed in sources_and_seeds]
    margin = sampling_margin(config, out_size)
    size = out_size + 2 * margin
    core = (slice(WARP_MARGIN, WARP_MARGIN + size),) * 3
    fields = torch.stack([d.field for d in drafts])
    sources = torch.stack([volume for d in drafts for volume in (d.hu, d.inside)]).unflatten(0, (len(drafts), 2))
    warped = warp(sources, fields, WARP_MARGIN)
    body = torch.stack([d.torso[core] for d in drafts]) > 0
    fixed_hu = sponge(warped[:, 0], fields)
    inside = (warped[:, 1] > 0.5).float() * sources[(slice(None), 1) + core]
    del warped, sources
    pairs = [_augmented(d, fixed_hu[i], d.hu[core], inside[i], body[i], device, density_change)
             for i, d in enumerate(drafts)]
    fixed_hu, moving_hu, inside = (torch.stack(parts) for parts in zip(*pairs))
    inputs = tile_inputs(build_pyramid(stack_channels(fixed_hu, moving_hu, inside)), config, (margin,) * 3, out_size)
    magnitude = vector_norm(fields)
    s4_span = 4 * hidden_size(4, out_size) if 4 in config.levels else out_size
    lo_t = (size - s4_span) // 2
    crop = (Ellipsis,) + (slice(lo_t, lo_t + s4_span),) * 3
    targets = level_targets(magnitude[crop], (inside * body)[crop], config, out_size)
    out = (Ellipsis,) + (slice(margin, margin + out_size),) * 3
    reach = (slice(margin, margin + out_size + 2 * WARP_MARGIN),) * 3  # the output region and the warp's reach
    source_lungs = torch.stack([d.lungs[reach] for d in drafts]).unsqueeze(1).float()
    lungs = warp(source_lungs, fields[out], WARP_MARGIN)[:, 0] > 0.5  # the fixed image's, as at inference
    return _Batch(inputs, targets, lungs, magnitude[out], [d.family for d in drafts])


def _chunks(sources_and_seeds, device) -> list:
    """The samples to synthesise together: all of them on a GPU, where launching kernels sets the cost; one at a time
    on the CPU, where one sample's volumes stay in the cache (four together took 1.5x as long, BENCHMARKS.md)."""
    specs = list(sources_and_seeds)
    return [specs] if torch.device(device).type == "cuda" else [[spec] for spec in specs]


def make_samples(sources_and_seeds, config: ModelConfig, out_size: int, device="cpu", family: str = None,
                 density_change: float = 0.0) -> list:
    """Reproducible synthetic tiles, one per (source, seed), made together where that is faster: the same samples
    as `make_sample` one by one."""
    samples = []
    for chunk in _chunks(sources_and_seeds, device):
        batch = _synthesise(chunk, config, out_size, device, family, density_change)
        samples += [Sample({lv: x[i] for lv, x in batch.inputs.items()}, {lv: t[i] for lv, t in batch.targets.items()},
                           batch.lungs[i], name, batch.residual_mm[i]) for i, name in enumerate(batch.families)]
    return samples


def make_batch(sources_and_seeds, config: ModelConfig, out_size: int, device="cpu",
               density_change: float = 0.0) -> tuple:
    """Batched inputs and targets of tiles made together where that is faster: `collate` of their `make_sample`s."""
    chunks = _chunks(sources_and_seeds, device)
    if len(chunks) > 1:
        return collate(make_samples(sources_and_seeds, config, out_size, device, density_change=density_change))
    batch = _synthesise(chunks[0], config, out_size, device, None, density_change)
    return {lv: x.contiguous() for lv, x in batch.inputs.items()}, batch.targets  # patches, not the pyramid's views


def make_sample(source: Source, config: ModelConfig, out_size: int, seed: int, device="cpu",
                family: str = None, density_change: float = 0.0) -> Sample:
    """One reproducible synthetic tile from `source` (seed fixes all); `density_change`: see TrainConfig."""
    return make_samples([(source, seed)], config, out_size, device, family, density_change)[0]


def _noise_generator(gen: torch.Generator, device) -> torch.Generator:
    """The generator of the per-voxel noise: `gen` itself on the CPU; on a GPU, one there seeded from `gen`, so that
    the noise is drawn where it is added (a seed then fixes a sample on each kind of device)."""
    device = torch.device(device)
    if device.type == "cpu":
        return gen
    return torch.Generator(device).manual_seed(int(torch.randint(0, 2 ** 62, (), generator=gen)))


def _crop_padded(source: Source, lo, size: int, extra: int, device) -> tuple:
    """Crop (hu, torso, lungs, inside) of edge `size` starting at `lo` - `extra`, padding outside the source; the
    crop is made where the source is, then moved to `device`."""
    start = [l - extra for l in lo]
    out_hu = torch.full((size,) * 3, AIR_HU, device=source.hu.device)
    out_masks = torch.zeros((3,) + (size,) * 3, device=source.hu.device)
    src_sl, dst_sl = [], []
    for s, n in zip(start, source.hu.shape):
        a, b = max(s, 0), min(s + size, n)
        src_sl.append(slice(a, max(a, b)))
        dst_sl.append(slice(a - s, a - s + max(0, b - a)))
    src_sl, dst_sl = tuple(src_sl), tuple(dst_sl)
    out_hu[dst_sl] = source.hu[src_sl]
    out_masks[(0,) + dst_sl] = source.torso[src_sl].float()
    out_masks[(1,) + dst_sl] = source.lungs[src_sl].float()
    out_masks[(2,) + dst_sl] = 1.0
    out_hu, out_masks = out_hu.to(device), out_masks.to(device)
    return out_hu, out_masks[0], out_masks[1], out_masks[2]


def collate(samples) -> tuple:
    """Stack samples into batched inputs and targets."""
    levels = samples[0].inputs.keys()
    return ({lv: torch.stack([s.inputs[lv] for s in samples]) for lv in levels},
            {lv: torch.stack([s.targets[lv] for s in samples]) for lv in levels})


def synthetic_pairs_per_second(sources: list, config, out_size: int, device, count: int, seed: int = 0,
                               batch: int = 1) -> float:
    """Synthetic training pairs made per second on `device` from `sources` where they are, `batch` at a time as
    training makes them (timed after one warm-up pair of each field family)."""
    for family in FAMILIES:
        make_sample(sources[0], config, out_size, seed=seed, device=device, family=family)
    synchronize(device)
    specs = [(sources[i % len(sources)], seed + 1 + i) for i in range(count)]
    start = time.perf_counter()
    for first in range(0, count, batch):
        make_batch(specs[first:first + batch], config, out_size, device)
    synchronize(device)
    return count / (time.perf_counter() - start)


def source_from_arrays(name: str, hu: np.ndarray, torso: np.ndarray, lungs: np.ndarray) -> Source:
    """Wrap zyx numpy arrays (1 mm grid) as a training source."""
    return Source(name, torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32)),
                  torch.from_numpy(torso.astype(bool)), torch.from_numpy(lungs.astype(bool)))
