"""Compare two misalignment maps of the same pair (e.g. made by two versions): labels that differ and the largest
probability difference.

    registration-misalignment demo --ct ../shared/data/thorax_nsclc_r01-001.nii.gz --out A    # on one commit
    registration-misalignment demo --ct ../shared/data/thorax_nsclc_r01-001.nii.gz --out B    # on the other
    python scripts/compare_maps.py A B [--json]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def compare_maps(first, second) -> dict:
    """Evaluated voxels, labels that differ and the largest probability difference of two output folders
    (labels.nrrd and probabilities.nrrd each)."""
    first, second = Path(first), Path(second)
    labels = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd"))) for folder in (first, second)]
    if labels[0].shape != labels[1].shape:
        raise SystemExit(f"error: the maps have different grids {labels[0].shape} and {labels[1].shape}; compare maps "
                         "of the same pair")
    probabilities = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "probabilities.nrrd")))
                     for folder in (first, second)]
    return {"evaluated_voxels": int((labels[0] > 0).sum()),
            "labels_differing": int((labels[0] != labels[1]).sum()),
            "max_probability_difference": float(np.abs(probabilities[0] - probabilities[1]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = compare_maps(args.first, args.second)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['labels_differing']} of {result['evaluated_voxels']} evaluated voxels have another label; "
              f"probabilities differ by at most {result['max_probability_difference']:.2e}")


if __name__ == "__main__":
    main()
