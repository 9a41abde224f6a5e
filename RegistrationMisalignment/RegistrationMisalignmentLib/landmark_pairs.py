"""A landmark pair with exactly known correspondences: a CT warped by a known field, landmarks on lung structures.

Not a substitute for manually placed landmarks on a real inhale/exhale pair: the deformation is synthetic
(the same families the model trains on), so results on such a pair must be labelled as such."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .demo import known_field_pair
from .masks import lung_mask, torso_mask

STRUCTURE_HU = -500.0  # vessels and airway walls inside the lungs: distinctive points, as landmarks usually are


@dataclass
class LandmarkPair:
    """Fixed and moving CT with corresponding landmarks (LPS, mm): moving point = fixed point + u(fixed point)."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_points: np.ndarray
    moving_points: np.ndarray


def landmark_indices(fixed_hu: np.ndarray, lungs: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` lung voxels (zyx indices) on structures brighter than STRUCTURE_HU, drawn reproducibly."""
    candidates = np.argwhere(lungs & (fixed_hu > STRUCTURE_HU))
    if len(candidates) < count:
        candidates = np.argwhere(lungs)
    if len(candidates) < count:
        raise ValueError(f"only {len(candidates)} lung voxels found; fewer than the {count} landmarks asked for")
    chosen = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False)
    return candidates[np.sort(chosen)]


def make_landmark_pair(ct: sitk.Image, count: int = 300, family: str = "respiratory", max_mm: float = 20.0,
                       seed: int = 0) -> LandmarkPair:
    """Warp `ct` by a known field of `family` and place `count` corresponding landmarks in the fixed image's lungs."""
    pair, field = known_field_pair(ct, None, family, max_mm, seed)
    fixed_f = sitk.Cast(pair.fixed, sitk.sitkFloat32)
    lungs = sitk.GetArrayFromImage(lung_mask(fixed_f, torso_mask(fixed_f))) > 0
    indices = landmark_indices(sitk.GetArrayViewFromImage(pair.fixed), lungs, count, seed)
    fixed_points = np.array([pair.fixed.TransformIndexToPhysicalPoint([int(i) for i in idx[::-1]])
                             for idx in indices])
    direction = np.asarray(pair.fixed.GetDirection()).reshape(3, 3)
    displacement_xyz = field[:, indices[:, 0], indices[:, 1], indices[:, 2]].T[:, ::-1]
    return LandmarkPair(pair.fixed, pair.moving, fixed_points, fixed_points + displacement_xyz @ direction.T)
