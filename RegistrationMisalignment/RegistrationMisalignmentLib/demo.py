"""The demo: deform a CT (default: the phantom) with a known field, predict, compare with the truth."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import labels as L
from .imageio import read_image, write_bytes, write_image
from .metrics import classification_report, confusion_matrix
from .phantom import make_chest_phantom
from .sources import lps_1mm_reference, source_from_image
from .synthesis import make_field, vector_norm, warp


@dataclass
class SyntheticPair:
    """A fixed/moving pair made by warping a CT with a known field, and the true misalignment in mm."""

    fixed: sitk.Image
    moving: sitk.Image
    magnitude_mm: np.ndarray  # zyx, on the fixed grid


def synthetic_pair(ct: sitk.Image, lungs: sitk.Image = None, family: str = "single_frequency",
                   max_mm: float = 12.0, seed: int = 0) -> SyntheticPair:
    """Resample `ct` to 1 mm LPS; fixed = ct warped by a random field of `family`, moving = ct."""
    return known_field_pair(ct, lungs, family, max_mm, seed)[0]


def known_field_pair(ct: sitk.Image, lungs: sitk.Image = None, family: str = "single_frequency",
                     max_mm: float = 12.0, seed: int = 0) -> tuple:
    """The synthetic pair and its field (3, D, H, W; zyx components in mm on the 1 mm LPS grid of the pair)."""
    source = source_from_image("the CT", ct, lungs)
    gen = torch.Generator().manual_seed(seed)
    field = make_field(family, source.hu, source.torso, source.lungs, 0, source.lung_z_range, gen, max_mm)
    fixed_hu = warp(source.hu[None], field, 0)[0]
    reference = lps_1mm_reference(ct)
    pair = SyntheticPair(_image(fixed_hu.numpy(), reference), _image(source.hu.numpy(), reference),
                         vector_norm(field).numpy())
    return pair, field.numpy()


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Int16 HU image from a zyx array on the reference grid."""
    image = sitk.GetImageFromArray(np.clip(np.rint(array), -1024, 3071).astype(np.int16))
    image.CopyInformation(reference)
    return image


DEMO_SEED_LIMIT = 2 ** 32  # seeds below it
DEMO_FILES = {"fixed": "fixed.nrrd", "moving": "moving.nrrd", "truth": "truth.nrrd", "labels": "labels.nrrd",
              "probabilities": "probabilities.nrrd", "figure": "demo.png"}


def run_demo(predictor, out_dir, ct_path=None, seed: int = 0, family: str = "single_frequency",
             max_mm: float = 12.0, progress=None) -> dict:
    """Build the pair, predict, write NRRDs and a PNG to `out_dir`, and return the agreement with the truth."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ct, lungs = (read_image(ct_path), None) if ct_path else make_chest_phantom(seed)
    pair = synthetic_pair(ct, lungs, family, max_mm, seed)
    result = predictor.predict(pair.fixed, pair.moving, progress=progress)
    predicted = sitk.GetArrayFromImage(result.labels)
    inside = predicted > 0
    truth = np.where(inside, L.label_value(pair.magnitude_mm), L.NOT_EVALUATED).astype(np.uint8)
    truth_image = sitk.GetImageFromArray(truth)
    truth_image.CopyInformation(pair.fixed)
    files = {key: out_dir / name for key, name in DEMO_FILES.items()}
    for key, image in (("fixed", pair.fixed), ("moving", pair.moving), ("truth", truth_image),
                       ("labels", result.labels), ("probabilities", result.probabilities)):
        write_image(image, files[key])
    fixed_array = sitk.GetArrayViewFromImage(pair.fixed)
    from .figures import comparison_png  # matplotlib only where a figure is drawn
    write_bytes(comparison_png(fixed_array, {"truth": truth, "prediction": predicted}), files["figure"])
    report = classification_report(confusion_matrix(truth[inside] - 1, predicted[inside] - 1))
    return {"agreement": report, "files": {k: str(v) for k, v in files.items()}, "summary": result.summary,
            "source": str(ct_path) if ct_path else f"phantom seed {seed}", "field": family, "max_mm": max_mm}
