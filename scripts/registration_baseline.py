"""Baseline: how well an elastix registration tells the residual of a synthetic pair, voxel by voxel.

Builds whole-CT pairs with a known field (as `demo --ct` does: fixed = the CT warped by the field, moving = the CT),
registers moving to fixed with one of the landmark protocol's elastix setups (`--setup`; default `bspline_tuned`:
affine, then a 4-level B-spline down to a 10 mm grid), and bins the length of elastix's displacement at 3 and 6 mm
at every lung voxel (the automatic mask of the fixed image, as `predict` uses). That registration-based map and the
network's map are scored against the true residual at the same voxels; the spread of (elastix's length - true
length) is elastix's residual precision.

    python scripts/registration_baseline.py --ct ../shared/data/thorax_nsclc_r01-001.nii.gz
    python scripts/registration_baseline.py --ct CT --family respiratory --seed 3 --max-mm 15 --json out.json
    python scripts/registration_baseline.py --ct CT --setup bspline_poor    # one level, 20 iterations, 40 mm grid
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment"))

from RegistrationMisalignmentLib import labels as L  # noqa: E402
from RegistrationMisalignmentLib.demo import known_field_pair  # noqa: E402
from RegistrationMisalignmentLib.imageio import read_image, write_bytes  # noqa: E402
from RegistrationMisalignmentLib.inference import MisalignmentPredictor  # noqa: E402
from RegistrationMisalignmentLib.landmark_evaluation import SETUPS, register  # noqa: E402
from RegistrationMisalignmentLib.masks import automatic_lung_mask  # noqa: E402
from RegistrationMisalignmentLib.metrics import classification_report, confusion_matrix  # noqa: E402
from RegistrationMisalignmentLib.synthesis import FAMILIES  # noqa: E402

FIELD_FAMILIES = [f for f in FAMILIES if f != "zero"]


def score_pair(predictor, ct: sitk.Image, family: str, max_mm: float, seed: int, setup: str = "bspline_tuned") -> dict:
    """True, network and elastix classes and lengths (mm) at the lung voxels of one synthetic pair."""
    pair, _ = known_field_pair(ct, None, family, max_mm, seed)
    lungs = automatic_lung_mask(pair.fixed)
    inside = sitk.GetArrayFromImage(lungs) > 0
    started = time.perf_counter()
    network = sitk.GetArrayFromImage(predictor.predict(pair.fixed, pair.moving, mask=lungs).labels)
    network_s = time.perf_counter() - started
    started = time.perf_counter()
    displacement = sitk.GetArrayFromImage(register(pair.fixed, pair.moving, setup)[1])
    elastix_s = time.perf_counter() - started
    inside &= network > 0  # where the map is evaluated (inside both fields of view)
    truth_mm = pair.magnitude_mm[inside]
    elastix_mm = np.sqrt((displacement[inside] ** 2).sum(-1))
    return {"truth": L.class_index(truth_mm), "network": network[inside].astype(np.int64) - L.CORRECT,
            "elastix": L.class_index(elastix_mm), "error_mm": elastix_mm - truth_mm,
            "seconds": {"network": network_s, "elastix": elastix_s}}


def summary(parts: list) -> dict:
    """Accuracy, average F1 and confusion matrix of both maps, and elastix's residual precision, pooled."""
    truth = np.concatenate([p["truth"] for p in parts])
    error = np.concatenate([p["error_mm"] for p in parts])
    result = {"lung_voxels": int(len(truth)),
              "elastix_length_error_mm": {"mean": float(error.mean()), "sd": float(error.std()),
                                          "median_abs": float(np.median(np.abs(error)))}}
    for name in ("network", "elastix"):
        result[name] = classification_report(confusion_matrix(truth, np.concatenate([p[name] for p in parts])))
    return result


def main() -> None:
    """Score the network and the elastix baseline on whole-CT synthetic pairs; print one line per pair and pooled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", required=True, help="chest CT, preferably one the model did not train on")
    parser.add_argument("--family", action="append", choices=FIELD_FAMILIES, help="default: all three")
    parser.add_argument("--seed", action="append", type=int, help="field seeds (default: 0)")
    parser.add_argument("--max-mm", type=float, default=12.0, help="largest displacement of each field (mm)")
    parser.add_argument("--setup", choices=SETUPS, default="bspline_tuned",
                        help="elastix setup of the landmark protocol (default: bspline_tuned)")
    parser.add_argument("--weights", help="weights file (default: the released model)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    predictor = MisalignmentPredictor.load(args.weights, device="cpu")
    ct = read_image(args.ct)
    results, parts = [], []
    for family in args.family or FIELD_FAMILIES:
        for seed in args.seed or [0]:
            part = score_pair(predictor, ct, family, args.max_mm, seed, args.setup)
            parts.append(part)
            results.append({"family": family, "seed": seed, **summary([part]), "seconds": part["seconds"]})
            print(_line(f"{family} seed {seed}", results[-1], args.setup), flush=True)
    pooled = summary(parts)
    print(_line("pooled", pooled, args.setup))
    if args.json:
        write_bytes(json.dumps({"ct": args.ct, "max_mm": args.max_mm, "setup": args.setup, "pairs": results,
                                "pooled": pooled}, indent=2).encode(), args.json)


def _line(name: str, result: dict, setup: str) -> str:
    """One line: both maps' accuracy and average F1, and elastix's length error."""
    error = result["elastix_length_error_mm"]
    return (f"{name}: {result['lung_voxels']} lung voxels; network {100 * result['network']['accuracy']:.1f} / "
            f"{100 * result['network']['average_f1']:.1f} %; elastix {setup} "
            f"{100 * result['elastix']['accuracy']:.1f} / {100 * result['elastix']['average_f1']:.1f} % "
            f"(length error {error['mean']:+.2f} +- {error['sd']:.2f} mm, median |error| {error['median_abs']:.2f} mm)")


if __name__ == "__main__":
    main()
