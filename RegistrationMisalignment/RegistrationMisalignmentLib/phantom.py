"""Deterministic procedural chest CT phantom (HU image and lung mask) for the demo and for training."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

REFERENCE_SIZE_XYZ = (192, 160, 176)
HU_MIN, HU_MAX = -1024.0, 3071.0
AIR_HU = -1000.0
FAT_HU = -100.0
SKIN_HU = 10.0
MUSCLE_HU = 40.0
MEDIASTINUM_HU = -70.0
LIVER_HU = 60.0
CORTICAL_HU = 700.0
MARROW_HU = 250.0
CARTILAGE_HU = 120.0
VERTEBRA_HU = 300.0
VERTEBRA_RIM_HU = 650.0
DISC_HU = 80.0
CANAL_HU = 25.0
CONTRAST_HU = 150.0
AORTA_HU = 170.0
LUNG_HU = -850.0
FISSURE_HU = -600.0
VESSEL_HU = 40.0
AIRWAY_WALL_HU = -30.0
VESSEL_ROOT_MM = 5.0
VESSEL_MIN_MM = 0.7
AIRWAY_ROOT_MM = 4.5
AIRWAY_MIN_MM = 1.0
TERRITORY_POINTS = 4000
MURRAY = 0.5 ** (1.0 / 3.0)
TAPER = 0.985
BLUR_SIGMA_MM = 0.6
NOISE_HU = 15.0


def make_chest_phantom(seed: int = 0, size_xyz=(192, 160, 176)) -> tuple:
    """Return (ct, lungs): a procedural chest CT in HU (sitk Int16, 1 mm) and its lung mask (sitk UInt8, 0/1)."""
    rng = np.random.default_rng(seed)
    shape = (int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0]))
    grid = _grid(shape)
    lay = _layout(rng, shape)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    wall_depth = _paint_body_wall(hu, grid, lay)
    _paint_abdomen(hu, grid, lay, wall_depth)
    occupied = _paint_mediastinum(hu, lay)
    _paint_ribs_and_sternum(hu, grid, lay, wall_depth)
    occupied |= _paint_spine(hu, grid, lay, wall_depth)[None]
    lungs = _lung_regions(grid, lay, wall_depth, occupied)
    either = lungs[0] | lungs[1]
    _paint_parenchyma(hu, rng, grid, lay, either)
    _paint_fissures(hu, grid, lay, lungs)
    _paint_pulmonary_trees(hu, rng, lay, lungs)
    hu = _blur(hu, BLUR_SIGMA_MM)
    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(NOISE_HU)
    ct = _image(np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16))
    return ct, _image(either.astype(np.uint8))


def _grid(shape: Tuple[int, int, int]) -> SimpleNamespace:
    """Return broadcastable physical coordinates (mm, centred at 0) of the voxel grid indexed [z, y, x]."""
    nz, ny, nx = shape
    return SimpleNamespace(
        shape=shape,
        z=(np.arange(nz) - (nz - 1) / 2.0)[:, None, None],
        y=(np.arange(ny) - (ny - 1) / 2.0)[None, :, None],
        x=(np.arange(nx) - (nx - 1) / 2.0)[None, None, :],
    )


def _layout(rng: np.random.Generator, shape: Tuple[int, int, int]) -> SimpleNamespace:
    """Draw the jittered anatomical dimensions (mm, LPS, volume centred at 0) of one phantom."""
    nz, ny, nx = shape
    s = (nz * ny * nx / float(np.prod(REFERENCE_SIZE_XYZ))) ** (1.0 / 3.0)

    def jit(value: float, spread: float = 0.04) -> float:
        """Return value scaled by a random factor within +-spread."""
        return float(value * rng.uniform(1.0 - spread, 1.0 + spread))

    lay = SimpleNamespace(scale=s)
    lay.a, lay.b = jit(0.46 * nx), jit(0.43 * ny)
    lay.skin, lay.fat, lay.muscle = 1.5, jit(7.0 * s), jit(12.0 * s)
    lay.wall = lay.fat + lay.muscle
    lay.ac, lay.bc = lay.a - lay.wall, lay.b - lay.wall
    lay.rib_pitch = jit(22.0 * s)
    lay.rib_phase = float(rng.uniform(0.0, lay.rib_pitch))
    lay.rib_slope = jit(0.3, 0.2)
    lay.rib_half = (jit(3.5 * s), jit(5.5 * s))
    lay.rib_jitter = rng.uniform(0.88, 1.12, size=64)
    lay.rv, lay.rc = jit(13.0 * s), jit(6.0 * s)
    lay.yv = lay.bc - jit(17.0 * s)
    lay.yc = lay.yv + lay.rv + lay.rc + 1.0
    lay.disc = jit(5.0 * s)
    lay.w_med = jit(0.06 * nx)
    lay.z_top, lay.z_base = 0.46 * nz, -0.47 * nz
    lay.apex_h, lay.dome_h = jit(0.18 * nz), jit(0.27 * nz)
    lay.dome_shift = jit(0.04 * nz, 0.3)
    lay.lung_c = (0.5 * lay.ac, 0.15 * lay.bc)
    lay.lung_ax = (0.55 * lay.ac, 0.95 * lay.bc)
    lay.z_car = lay.z_top - jit(0.3 * nz)
    lay.r_trachea = jit(8.0 * s)
    lay.y_tr = lay.yv - lay.rv - jit(21.0 * s)
    lay.esophagus = (3.0 * s, lay.yv - lay.rv - 7.0 * s, 6.0 * s)
    lay.heart_semi = np.array([jit(40.0 * s), jit(28.0 * s), jit(26.0 * s)])
    lay.heart_c = np.array([jit(0.08 * nx, 0.15), -lay.bc + jit(27.0 * s), jit(-0.12 * nz, 0.1)])
    lay.heart_axis = _unit([1.0, jit(-0.9, 0.1), jit(-0.45, 0.1)])
    lay.r_aorta = (jit(11.0 * s), jit(9.0 * s))
    angle = np.deg2rad(jit(50.0, 0.1))
    reach = lay.rv + lay.r_aorta[1] + 1.5
    lay.desc = (reach * np.sin(angle), lay.yv - reach * np.cos(angle))
    return lay


def _unit(v: Sequence[float]) -> np.ndarray:
    """Return v normalised to unit length."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _to_index(points_xyz: np.ndarray, shape: Tuple[int, int, int]) -> np.ndarray:
    """Convert physical (x, y, z) mm points to continuous (z, y, x) voxel indices."""
    p = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))
    return p[:, ::-1] + (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0


def _polyline(points_xyz: Sequence[Sequence[float]], radii: Sequence[float], shape) -> np.ndarray:
    """Return capsule segments (z, y, x, z, y, x, r0, r1) joining consecutive physical points."""
    p = _to_index(np.asarray(points_xyz), shape)
    r = np.asarray(radii, dtype=np.float64)
    return np.column_stack([p[:-1], p[1:], r[:-1], r[1:]])


def _ellipse_distance(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance (mm, negative inside) from (x, y) to the ellipse with semi-axes a, b."""
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2) + 1e-6
    grad = np.sqrt((x / a ** 2) ** 2 + (y / b ** 2) ** 2) / r + 1e-6
    return (r - 1.0) / grad


def _paint_body_wall(hu: np.ndarray, g: SimpleNamespace, lay: SimpleNamespace) -> np.ndarray:
    """Paint skin, subcutaneous fat, muscle and the mediastinal fill; return the 2D depth below the skin."""
    depth = -_ellipse_distance(g.x[0], g.y[0], lay.a, lay.b)
    hu[:, depth >= 0] = SKIN_HU
    hu[:, depth >= lay.skin] = FAT_HU
    hu[:, depth >= lay.fat] = MUSCLE_HU
    hu[:, depth >= lay.wall] = MEDIASTINUM_HU
    return depth


def _dome(g: SimpleNamespace, lay: SimpleNamespace, side: int) -> np.ndarray:
    """Return the 2D height (mm) of the diaphragm dome under the lung on `side` (+1 left, -1 right)."""
    q = ((g.x[0] - side * lay.lung_c[0]) / lay.lung_ax[0]) ** 2 + ((g.y[0] - lay.lung_c[1]) / lay.lung_ax[1]) ** 2
    lift = lay.dome_shift if side < 0 else 0.0
    return lay.z_base + lift + lay.dome_h * np.maximum(1.0 - q, 0.0)


def _diaphragm(g: SimpleNamespace, lay: SimpleNamespace) -> np.ndarray:
    """Return the 2D height (mm) of the whole diaphragm (both domes and the central tendon)."""
    q = (g.x[0] / (0.6 * lay.ac)) ** 2 + (g.y[0] / lay.bc) ** 2
    central = lay.z_base + 0.55 * lay.dome_h * np.maximum(1.0 - q, 0.0)
    return np.maximum(np.maximum(_dome(g, lay, 1), _dome(g, lay, -1)), central)


def _paint_abdomen(hu: np.ndarray, g: SimpleNamespace, lay: SimpleNamespace, depth: np.ndarray) -> None:
    """Paint the diaphragm muscle and the liver/upper abdomen below it."""
    surface = _diaphragm(g, lay)[None]
    cavity = (depth >= lay.wall)[None]
    hu[cavity & (g.z < surface + 3.0)] = MUSCLE_HU
    hu[cavity & (g.z < surface)] = LIVER_HU


def _oriented_block(shape, center_zyx: np.ndarray, axes_zyx: np.ndarray, semi: np.ndarray):
    """Return (slices, normalised squared radius) of an oriented ellipsoid over its bounding box."""
    reach = float(np.max(semi)) + 1.0
    lo = np.maximum(np.floor(center_zyx - reach).astype(int), 0)
    hi = np.minimum(np.ceil(center_zyx + reach).astype(int) + 1, shape)
    rel = [(np.arange(lo[k], hi[k]) - center_zyx[k]).reshape([-1 if j == k else 1 for j in range(3)]) for k in range(3)]
    rho = sum(((rel[0] * ax[0] + rel[1] * ax[1] + rel[2] * ax[2]) / s) ** 2 for ax, s in zip(axes_zyx, semi))
    return tuple(slice(a, b) for a, b in zip(lo, hi)), rho


def _heart_frame(lay: SimpleNamespace) -> np.ndarray:
    """Return the heart's orthonormal axes (long axis first) as rows of physical (x, y, z) vectors."""
    u = lay.heart_axis
    v = _unit(np.cross(u, [0.0, 0.0, 1.0]))
    return np.stack([u, v, np.cross(u, v)])


def _paint_heart(hu: np.ndarray, occupied: np.ndarray, lay: SimpleNamespace) -> None:
    """Paint the myocardium with contrast-filled chambers and mark the heart (with margin) as occupied."""
    frame = _heart_frame(lay)
    axes = frame[:, ::-1]
    center = _to_index(lay.heart_c, hu.shape)[0]
    sl, rho = _oriented_block(hu.shape, center, axes, lay.heart_semi + 4.0)
    occupied[sl] |= rho <= 1.0
    sl, rho = _oriented_block(hu.shape, center, axes, lay.heart_semi)
    hu[sl][rho <= 1.0] = MUSCLE_HU
    chambers = (((0.2, 0.35, 0.0), (0.5, 0.33, 0.5)), ((0.1, -0.4, 0.05), (0.5, 0.28, 0.5)),
                ((-0.55, 0.0, 0.15), (0.3, 0.5, 0.45)))
    for offset, fraction in chambers:
        c = _to_index(lay.heart_c + (np.asarray(offset) * lay.heart_semi) @ frame, hu.shape)[0]
        sl, rho = _oriented_block(hu.shape, c, axes, lay.heart_semi * np.asarray(fraction))
        hu[sl][rho <= 1.0] = CONTRAST_HU


def _aorta_path(lay: SimpleNamespace, shape) -> np.ndarray:
    """Return the capsule segments of the ascending aorta, arch and descending aorta."""
    s, (hx, hy, hz) = lay.scale, lay.heart_c
    ra, rd = lay.r_aorta
    dx, dy = lay.desc
    points = [(hx - 14 * s, hy + 8 * s, hz + 8 * s), (-7 * s, lay.y_tr - 20 * s, lay.z_car - 6 * s),
              (2 * s, lay.y_tr - 19 * s, lay.z_car + 12 * s), (dx - 2 * s, lay.y_tr - 4 * s, lay.z_car + 17 * s),
              (dx, dy - 3 * s, lay.z_car + 8 * s), (dx, dy, lay.z_car - 8 * s), (dx, dy, -shape[0])]
    return _polyline(points, [ra, ra, ra, 0.5 * (ra + rd), rd, rd, rd], shape)


def _pulmonary_trunk(lay: SimpleNamespace, shape) -> Tuple[np.ndarray, np.ndarray]:
    """Return the pulmonary trunk segments and the physical point where it bifurcates."""
    s, (hx, hy, hz) = lay.scale, lay.heart_c
    fork = np.array([3 * s, lay.y_tr - 10 * s, lay.z_car - 10 * s])
    points = [(hx + 2 * s, hy - 4 * s, hz + 14 * s), (hx - 2 * s, hy - 6 * s, hz + 30 * s), fork]
    return _polyline(points, [10 * s, 10 * s, 8 * s], shape), fork


def _central_airways(lay: SimpleNamespace, shape) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Return trachea and main bronchus segments (lumen radii) and the physical bronchus ends per side."""
    s = lay.scale
    carina = (0.0, lay.y_tr, lay.z_car)
    trachea = _polyline([(0.0, lay.y_tr, shape[0]), carina], [lay.r_trachea] * 2, shape)
    ends, segs = [], [trachea]
    for side, drop in ((1, 16.0), (-1, 10.0)):
        end = np.array([side * (lay.w_med + 5.0 * s), lay.y_tr + 1.0 * s, lay.z_car - drop * s])
        ends.append(end)
        segs.append(_polyline([carina, end], [0.75 * lay.r_trachea, 0.65 * lay.r_trachea], shape))
    return np.concatenate(segs), ends


def _paint_mediastinum(hu: np.ndarray, lay: SimpleNamespace) -> np.ndarray:
    """Paint heart, great vessels and esophagus; return the mask (with central airways) the lungs must avoid."""
    shape = hu.shape
    occupied = np.zeros(shape, dtype=bool)
    _paint_heart(hu, occupied, lay)
    ex, ey, er = lay.esophagus
    esophagus = _polyline([(ex, ey, shape[0]), (ex, ey, -shape[0])], [er, er], shape)
    aorta = _aorta_path(lay, shape)
    trunk, _ = _pulmonary_trunk(lay, shape)
    airways, _ = _central_airways(lay, shape)
    _paint_capsules(hu, esophagus, MUSCLE_HU)
    _paint_capsules(hu, aorta, AORTA_HU)
    _paint_capsules(hu, trunk, CONTRAST_HU)
    for segs, margin in ((esophagus, 2.0), (aorta, 3.0), (trunk, 3.0), (airways, 4.0)):
        _mark_capsules(occupied, segs, margin)
    return occupied


def _paint_ribs_and_sternum(hu: np.ndarray, g: SimpleNamespace, lay: SimpleNamespace, depth: np.ndarray) -> None:
    """Paint oblique curved ribs (cortex and marrow), costal cartilages and the sternum in the chest wall."""
    centre_depth = lay.wall - 4.5 * lay.scale
    band = np.abs(depth - centre_depth) < lay.rib_half[0] + 0.5
    iy, ix = np.nonzero(band)
    x, y = g.x[0, 0, ix], g.y[0, iy, 0]
    radial = depth[iy, ix] - centre_depth
    theta = np.degrees(np.abs(np.arctan2(x, -y)))
    zc = g.z[:, :, 0] - lay.rib_slope * y[None, :]
    k = np.rint((zc - lay.rib_phase) / lay.rib_pitch)
    dz = zc - lay.rib_phase - k * lay.rib_pitch
    size = lay.rib_jitter[(k.astype(int) % lay.rib_jitter.size)]
    rho = (radial[None] / lay.rib_half[0]) ** 2 + (dz / (lay.rib_half[1] * size)) ** 2
    core = (radial[None] / (0.55 * lay.rib_half[0])) ** 2 + (dz / (0.7 * lay.rib_half[1] * size)) ** 2
    bony = ((theta > 50.0) & (theta < 165.0))[None]
    cartilage = ((theta > 14.0) & (theta <= 50.0))[None]
    sternum = ((np.abs(x) < 13.0 * lay.scale) & (y < 0))[None] & (g.z[:, :, 0] > lay.z_base + 0.3 * g.shape[0])
    sternal_core = (np.abs(x) < 10.0 * lay.scale)[None] & (np.abs(radial) < 2.5 * lay.scale)[None]
    block = hu[:, iy, ix]
    block[sternum & (np.abs(radial) < lay.rib_half[0])[None]] = VERTEBRA_RIM_HU
    block[sternum & sternal_core] = MARROW_HU
    block[cartilage & (rho <= 1.0)] = CARTILAGE_HU
    block[bony & (rho <= 1.0)] = CORTICAL_HU
    block[bony & (core <= 1.0)] = MARROW_HU
    hu[:, iy, ix] = block


def _paint_spine(hu: np.ndarray, g: SimpleNamespace, lay: SimpleNamespace, depth: np.ndarray) -> np.ndarray:
    """Paint vertebral bodies, discs, posterior arches and the spinal canal; return the 2D exclusion mask."""
    x, y, z = g.x[0], g.y[0], g.z[:, 0, 0]
    r_body = np.hypot(x, y - lay.yv)
    r_canal = np.hypot(x, y - lay.yc)
    phase = np.mod(z - lay.rib_phase - lay.rib_slope * lay.yv, lay.rib_pitch)
    disc = phase < lay.disc
    endplate = (phase < lay.disc + 1.5) | (phase > lay.rib_pitch - 1.5)
    body = r_body <= lay.rv
    arch = ((r_canal <= lay.rc + 4.0 * lay.scale) & (y > lay.yv)) | (
        (np.abs(x) < 3.0 * lay.scale) & (y > lay.yc) & (depth > lay.fat + 2.0))
    iy, ix = np.nonzero(body)
    rim = (r_body[iy, ix] > lay.rv - 1.8)[None]
    hu[:, iy, ix] = np.where(disc[:, None], DISC_HU, np.where(endplate[:, None] | rim, VERTEBRA_RIM_HU, VERTEBRA_HU))
    iy, ix = np.nonzero(arch & ~body)
    hu[:, iy, ix] = np.where(disc[:, None], MUSCLE_HU, VERTEBRA_RIM_HU)[:, :1]
    hu[:, r_canal <= lay.rc] = CANAL_HU
    return (r_body <= lay.rv + 3.0) | (r_canal <= lay.rc + 7.0 * lay.scale)


def _lung_regions(g: SimpleNamespace, lay: SimpleNamespace, depth: np.ndarray, occupied: np.ndarray) -> tuple:
    """Return boolean (left, right) lung regions: inside the ribs, above the domes, beside the mediastinum."""
    floor = (_diaphragm(g, lay) + 3.0)[None]
    free = (depth >= lay.wall + 1.5)[None] & (g.z > floor) & ~occupied
    regions = []
    for side in (1, -1):
        q = ((g.x[0] - side * lay.lung_c[0]) / lay.lung_ax[0]) ** 2 + ((g.y[0] - lay.lung_c[1]) / lay.lung_ax[1]) ** 2
        roof = (lay.z_top - lay.apex_h * q)[None]
        regions.append(free & (side * g.x > lay.w_med) & (g.z < roof))
    return tuple(regions)


def _paint_parenchyma(hu: np.ndarray, rng: np.random.Generator, g: SimpleNamespace, lay: SimpleNamespace,
                      lungs: np.ndarray) -> None:
    """Fill the lungs with parenchyma HU: smooth random low-frequency waves plus a gravity gradient."""
    field = np.float32(LUNG_HU + rng.uniform(-15.0, 15.0)) + np.float32(25.0 / lay.bc) * g.y.astype(np.float32)
    for _ in range(4):
        k = _unit(rng.standard_normal(3)) * (2.0 * np.pi / rng.uniform(40.0, 110.0))
        plane = (k[0] * g.x + k[1] * g.y + rng.uniform(0.0, 2.0 * np.pi)).astype(np.float32)
        field = field + np.float32(rng.uniform(5.0, 12.0)) * np.cos(plane + (k[2] * g.z).astype(np.float32))
    np.copyto(hu, field, where=lungs)


def _paint_fissures(hu: np.ndarray, g: SimpleNamespace, lay: SimpleNamespace, lungs: tuple) -> None:
    """Paint the thin oblique fissures of both lungs and the horizontal fissure of the right lung."""
    z_post, z_ant = lay.z_car + 5.0 * lay.scale, lay.z_base + 0.2 * lay.dome_h + 10.0
    slope = (z_post - z_ant) / (2.0 * lay.bc)
    z0 = 0.5 * (z_post + z_ant)
    norm = np.sqrt(1.0 + slope ** 2)
    for side, lung in zip((1, -1), lungs):
        bow = 6.0 * ((g.x - side * lay.lung_c[0]) / lay.lung_ax[0]) ** 2
        dist = np.abs((g.z - z0 - slope * g.y) + bow) / norm
        cover = np.clip(1.0 - dist, 0.0, 1.0) * lung
        hu += (np.float32(FISSURE_HU) - hu) * cover.astype(np.float32)
    z_h = lay.z_car - 22.0 * lay.scale
    y_cross = (z_h - z0) / slope
    cover = np.clip(1.0 - np.abs(g.z - z_h), 0.0, 1.0) * (g.y < y_cross) * lungs[1]
    hu += (np.float32(FISSURE_HU) - hu) * cover.astype(np.float32)


def _territory(rng: np.random.Generator, flat_index: np.ndarray, shape) -> np.ndarray:
    """Sample random lung points (z, y, x indices) that a tree must supply."""
    pick = flat_index[rng.integers(0, flat_index.size, TERRITORY_POINTS)]
    points = np.column_stack(np.unravel_index(pick, shape)).astype(np.float64)
    return points + rng.uniform(-0.5, 0.5, points.shape)


def _halves_by_height(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split territory points into upper and lower halves (as two lobes' supply regions)."""
    order = np.argsort(points[:, 0], kind="stable")
    half = len(points) // 2
    return points[order[half:]], points[order[:half]]


def _nearest(points: np.ndarray, target_xyz: np.ndarray, shape) -> np.ndarray:
    """Return the point (z, y, x indices) of `points` closest to a physical target."""
    target = _to_index(target_xyz, shape)[0]
    return points[int(np.argmin(np.sum((points - target) ** 2, axis=1)))]


def _paint_pulmonary_trees(hu: np.ndarray, rng: np.random.Generator, lay: SimpleNamespace, lungs: tuple) -> None:
    """Grow and paint artery, vein and airway trees in each lung, connected to the hilar structures."""
    shape, s = hu.shape, lay.scale
    either = lungs[0] | lungs[1]
    _, fork = _pulmonary_trunk(lay, shape)
    central, bronchus_ends = _central_airways(lay, shape)
    atrium = lay.heart_c + (np.array([-0.55, 0.0, 0.15]) * lay.heart_semi) @ _heart_frame(lay)
    r_vessel, r_airway = VESSEL_ROOT_MM * min(1.0, s), AIRWAY_ROOT_MM * min(1.0, s)
    vessels, hilar_vessels, airways, hilar_airways = [], [], [], []
    for side, lung, end in zip((1, -1), lungs, bronchus_ends):
        flat = np.flatnonzero(lung)
        if flat.size == 0:
            continue
        for source, offsets in ((fork, ((-8.0, 10.0), (-6.0, -6.0))), (atrium, ((-2.0, -14.0), (4.0, -30.0)))):
            for lobe, (dy, dz) in zip(_halves_by_height(_territory(rng, flat, shape)), offsets):
                root = _nearest(lobe, end + np.array([0.0, dy, dz]) * s, shape)
                vessels.append(_grow_tree(rng, lobe, root, r_vessel, VESSEL_MIN_MM, lung))
                hilar_vessels.append([*_to_index(source, shape)[0], *root, 6.0 * s, r_vessel])
        airway_pts = _territory(rng, flat, shape)
        airway_root = _nearest(airway_pts, end + [side * 3.0 * s, 0.0, 0.0], shape)
        airways.append(_grow_tree(rng, airway_pts, airway_root, r_airway, AIRWAY_MIN_MM, lung))
        hilar_airways.append(np.array([[*_to_index(end, shape)[0], *airway_root, 0.65 * lay.r_trachea, r_airway]]))
    if vessels:
        _paint_capsules(hu, np.asarray(hilar_vessels), CONTRAST_HU, ~either)
        _paint_capsules(hu, np.concatenate(vessels), VESSEL_HU, either)
    parts = [(np.concatenate([central] + hilar_airways), None)] + [(tree, either) for tree in airways]
    _paint_airways(hu, parts)


def _inside_end(start: np.ndarray, direction: np.ndarray, length: float, inside: np.ndarray) -> Optional[np.ndarray]:
    """Return the farthest of a few shortened branch ends that lies inside the mask, or None."""
    for fraction in (1.0, 0.75, 0.5, 0.3):
        end = start + direction * (length * fraction)
        idx = np.rint(end).astype(int)
        if np.all(idx >= 0) and np.all(idx < inside.shape) and inside[tuple(idx)]:
            return end
    return None


def _split(rng: np.random.Generator, points: np.ndarray, direction: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Split a territory in two across its main spread perpendicular to the parent branch."""
    rel = points - points.mean(axis=0)
    rel = rel - np.outer(rel @ direction, direction)
    axis = np.linalg.eigh(rel.T @ rel)[1][:, -1]
    order = np.argsort(rel @ axis, kind="stable")
    n_first = int(np.clip(round(rng.uniform(0.3, 0.7) * len(points)), 1, len(points) - 1))
    return points[order[:n_first]], points[order[n_first:]]


def _grow_tree(rng: np.random.Generator, points: np.ndarray, root: np.ndarray, r_root: float, r_min: float,
               inside: np.ndarray) -> np.ndarray:
    """Grow a space-filling bifurcating tree by recursive territory splitting; return tapered segments."""
    segs = []
    stack = [(np.asarray(root, dtype=np.float64), points, float(r_root))]
    while stack:
        start, territory, radius = stack.pop()
        target = territory.mean(axis=0)
        dist = float(np.linalg.norm(target - start))
        if dist < 1.0:
            continue
        direction = (target - start) / dist
        terminal = radius * MURRAY < r_min or len(territory) < 6
        reach = dist * (1.0 if terminal else rng.uniform(0.35, 0.6))
        end = _inside_end(start, direction, max(reach, 2.0 * radius), inside)
        if end is None:
            continue
        bend = rng.standard_normal(3)
        bend -= (bend @ direction) * direction
        mid = 0.5 * (start + end) + bend * (0.06 * np.linalg.norm(end - start) / (np.linalg.norm(bend) + 1e-9))
        r_end = radius * TAPER
        r_mid = 0.5 * (radius + r_end)
        segs.append([*start, *mid, radius, r_mid])
        segs.append([*mid, *end, r_mid, r_end])
        if terminal:
            continue
        for part in _split(rng, territory, direction):
            stack.append((end, part, max(r_end * (len(part) / len(territory)) ** (1.0 / 3.0), r_min)))
    return np.asarray(segs, dtype=np.float64).reshape(-1, 8)


def _widened(segs: np.ndarray, factor: float, extra: float) -> np.ndarray:
    """Return a copy of capsule segments with radii scaled by factor and enlarged by extra mm."""
    out = np.array(segs, dtype=np.float64).reshape(-1, 8)
    out[:, 6:8] = out[:, 6:8] * factor + extra
    return out


def _capsule_blocks(shape, segs: np.ndarray) -> Iterator[tuple]:
    """Yield (slices, partial-volume coverage) of each tapered capsule within its own bounding box."""
    limit = np.asarray(shape)
    for seg in np.asarray(segs, dtype=np.float64).reshape(-1, 8):
        p0, d = seg[0:3], seg[3:6] - seg[0:3]
        r0, r1 = seg[6], seg[7]
        pad = max(r0, r1) + 1.0
        lo = np.maximum(np.floor(np.minimum(seg[0:3], seg[3:6]) - pad).astype(int), 0)
        hi = np.minimum(np.ceil(np.maximum(seg[0:3], seg[3:6]) + pad).astype(int) + 1, limit)
        if np.any(hi <= lo):
            continue
        cz = (np.arange(lo[0], hi[0]) - p0[0])[:, None, None]
        cy = (np.arange(lo[1], hi[1]) - p0[1])[None, :, None]
        cx = (np.arange(lo[2], hi[2]) - p0[2])[None, None, :]
        t = np.clip((cz * d[0] + cy * d[1] + cx * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
        dist = np.sqrt((cz - t * d[0]) ** 2 + (cy - t * d[1]) ** 2 + (cx - t * d[2]) ** 2)
        yield tuple(slice(a, b) for a, b in zip(lo, hi)), np.clip(r0 + t * (r1 - r0) + 0.5 - dist, 0.0, 1.0)


def _paint_capsules(hu: np.ndarray, segs: np.ndarray, value: float, where: Optional[np.ndarray] = None) -> None:
    """Blend capsules of tissue `value` into hu by their coverage, optionally only where a mask is set."""
    for sl, cover in _capsule_blocks(hu.shape, segs):
        if where is not None:
            cover = cover * where[sl]
        block = hu[sl]
        block += (value - block) * cover


def _mark_capsules(mask: np.ndarray, segs: np.ndarray, grow: float) -> None:
    """Set mask wherever capsules enlarged by `grow` mm touch."""
    for sl, cover in _capsule_blocks(mask.shape, _widened(segs, 1.0, grow)):
        mask[sl] |= cover > 0.0


def _paint_airways(hu: np.ndarray, parts: List[tuple]) -> None:
    """Paint (segments with lumen radii, mask) airway parts: all soft-tissue walls first, then all air lumens."""
    for segs, where in parts:
        _paint_capsules(hu, _widened(segs, 1.2, 0.6), AIRWAY_WALL_HU, where)
    for segs, where in parts:
        _paint_capsules(hu, segs, AIR_HU, where)


def _blur(volume: np.ndarray, sigma: float) -> np.ndarray:
    """Return the volume smoothed by a separable truncated Gaussian (edge-replicated borders)."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    for axis in range(3):
        padded = np.pad(volume, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        out = np.zeros_like(volume)
        for offset, weight in enumerate(kernel):
            window = [slice(None)] * 3
            window[axis] = slice(offset, offset + volume.shape[axis])
            out += weight * padded[tuple(window)]
        volume = out
    return volume


def _image(array: np.ndarray) -> sitk.Image:
    """Wrap a [z, y, x] array as a 1 mm isotropic, identity-direction image centred at the origin."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetOrigin(tuple(-(n - 1) / 2.0 for n in array.shape[::-1]))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image
