"""Training sources: real CTs resampled to 1 mm in LPS orientation with their masks, and phantoms."""
from __future__ import annotations

import SimpleITK as sitk

from .errors import InputError
from .imageio import read_image
from .input_checks import warn_if_not_ct
from .masks import lung_mask, torso_mask
from .phantom import make_chest_phantom
from .pyramid import AIR_HU
from .synthesis import Source, source_from_arrays


def lps_1mm_reference(ct: sitk.Image) -> sitk.Image:
    """Empty 1 mm isotropic grid over a CT's extent with LPS axes (the grid of its training source)."""
    oriented = sitk.DICOMOrient(ct, "LPS")
    size = [max(1, int(round(n * s))) for n, s in zip(oriented.GetSize(), oriented.GetSpacing())]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetOrigin(oriented.GetOrigin())
    ref.SetDirection(oriented.GetDirection())
    ref.SetSpacing((1.0, 1.0, 1.0))
    return ref


def to_lps_1mm(ct: sitk.Image) -> sitk.Image:
    """Reorient a CT to LPS axes and resample it linearly to 1 mm isotropic (float32 HU)."""
    return sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), lps_1mm_reference(ct), sitk.Transform(), sitk.sitkLinear,
                         AIR_HU, sitk.sitkFloat32)


def source_from_image(name: str, ct: sitk.Image, lungs: sitk.Image = None) -> Source:
    """Training source from a CT (any grid): 1 mm LPS, background set to air, torso and lung masks; a warning when
    its intensities do not look like HU."""
    warn_if_not_ct(ct, name)
    ct = to_lps_1mm(ct)
    torso = torso_mask(ct)
    if lungs is None:
        lungs = lung_mask(ct, torso)
    else:
        lungs = sitk.Resample(lungs, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    hu = sitk.GetArrayFromImage(sitk.Mask(ct, torso, outsideValue=AIR_HU))
    source = source_from_arrays(name, hu, sitk.GetArrayFromImage(torso), sitk.GetArrayFromImage(lungs))
    if len(source.lung_voxels) == 0:
        raise InputError(f"{name}: no air-filled lungs found; synthetic pairs are made from chest CTs in HU")
    return source


def load_sources(ct_paths=(), phantom_seeds=()) -> list:
    """Load real CTs from files and build phantoms with the given seeds."""
    sources = [source_from_image(str(p), read_image(p)) for p in ct_paths]
    for seed in phantom_seeds:
        ct, lungs = make_chest_phantom(seed)
        sources.append(source_from_image(f"phantom-{seed}", ct, lungs))
    return sources
