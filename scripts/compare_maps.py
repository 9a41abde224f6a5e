"""Compare two misalignment maps of the same pair (e.g. made by two versions, or of the same scan stored in two orders
of axes): labels that differ and the largest probability difference.

    registration-misalignment demo --ct ../shared/data/thorax_nsclc_r01-001.nii.gz --out A    # on one commit
    registration-misalignment demo --ct ../shared/data/thorax_nsclc_r01-001.nii.gz --out B    # on the other
    python scripts/compare_maps.py A B [--json]

Maps stored in different orders of axes are compared voxel by voxel in LPS order (the same scan stored as PIR, say):

    mkdir B && python -c "import SimpleITK as s; [s.WriteImage(s.DICOMOrient(s.ReadImage(f'A/{n}.nrrd'), 'PIR'), \
        f'B/{n}.nrrd') for n in ('fixed', 'moving')]"
    registration-misalignment predict --fixed B/fixed.nrrd --moving B/moving.nrrd --output B/labels.nrrd \
        --probabilities B/probabilities.nrrd
    python scripts/compare_maps.py A B
"""
import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from RegistrationMisalignmentLib.orientation import in_network_orientation


def _in_lps_order(path: Path) -> sitk.Image:
    """An output image with its voxels in LPS order."""
    return in_network_orientation(sitk.ReadImage(str(path)))


def compare_maps(first, second) -> dict:
    """Evaluated voxels, labels that differ and the largest probability difference of two output folders
    (labels.nrrd and probabilities.nrrd each), voxel by voxel in LPS order."""
    first, second = Path(first), Path(second)
    labels = [_in_lps_order(folder / "labels.nrrd") for folder in (first, second)]
    grids = [(image.GetSize(), image.GetSpacing()) for image in labels]
    if grids[0] != grids[1] or not np.allclose(labels[0].GetOrigin(), labels[1].GetOrigin(), atol=1e-3):
        raise SystemExit(f"error: the maps have different grids {grids[0][0]} and {grids[1][0]}; compare maps "
                         "of the same pair")
    labels = [sitk.GetArrayFromImage(image) for image in labels]
    probabilities = [sitk.GetArrayFromImage(_in_lps_order(folder / "probabilities.nrrd"))
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
