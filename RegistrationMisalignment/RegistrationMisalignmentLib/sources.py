"""Training sources: real CTs resampled to 1 mm in LPS orientation with their masks, and phantoms."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .imageio import read_image
from .input_checks import TRAINING_PAIRS_MISLEAD, warn_if_not_ct
from .masks import lung_mask, torso_mask
from .orientation import in_network_orientation
from .phantom import make_chest_phantom
from .pyramid import AIR_HU
from .synthesis import Source, check_source_extent, source_from_arrays


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
    warn_if_not_ct(ct, name, TRAINING_PAIRS_MISLEAD)
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
    return [source_from_image(str(p), read_image(p)) for p in ct_paths] + phantom_sources(phantom_seeds)


def phantom_sources(seeds) -> list:
    """Sources of the procedural phantoms with these seeds (named phantom-SEED)."""
    return [source_from_image(f"phantom-{seed}", *make_chest_phantom(seed)) for seed in seeds]


def training_sources(ct_paths, phantom_seeds, out_size: int) -> tuple:
    """The sources of these CTs, then of these phantoms, and the CTs' content fingerprints (each CT read once); a CT
    too small for training tiles of `out_size` is refused as soon as it is read."""
    cts = fingerprinted_sources(ct_paths, out_size)
    return [source for source, _ in cts] + phantom_sources(phantom_seeds), [fingerprint for _, fingerprint in cts]


def fingerprinted_sources(ct_paths, out_size: int = None) -> list:
    """(source, ct_fingerprint) of each CT file or DICOM folder, each read once; with `out_size`, a CT too small for
    training tiles of that size is refused before the next one is read, and so is a scan given twice."""
    read, first_named = [], {}
    for path in map(str, ct_paths):
        source, fingerprint = _source_and_fingerprint(path, read_image(path), out_size)
        if fingerprint in first_named:
            raise InputError(f"{path} holds the same scan as {first_named[fingerprint]} (same voxels, size and "
                             "spacing): it would count twice in training; give each CT once")
        first_named[fingerprint] = path
        read.append((source, fingerprint))
    return read


def _source_and_fingerprint(name: str, ct: sitk.Image, out_size: int = None) -> tuple:
    """A CT's training source (checked against tiles of `out_size` when given) and its content fingerprint."""
    source = source_from_image(name, ct)
    if out_size is not None:
        check_source_extent(source, out_size)
    return source, ct_fingerprint(ct)


def ct_fingerprint(ct: sitk.Image) -> str:
    """sha256 of a CT's float32 voxels in LPS order, size and spacing: the same for any file holding that scan."""
    oriented = in_network_orientation(ct)
    # spacing to the micrometre: NIfTI stores it as float32, DICOM as decimal text
    grid = [list(oriented.GetSize()), [round(s, 3) for s in oriented.GetSpacing()]]
    digest = hashlib.sha256(json.dumps(grid).encode())
    for plane in sitk.GetArrayViewFromImage(oriented):  # a slice at a time: no float32 copy of the whole CT
        digest.update(np.ascontiguousarray(plane, dtype=np.float32))
    return digest.hexdigest()
