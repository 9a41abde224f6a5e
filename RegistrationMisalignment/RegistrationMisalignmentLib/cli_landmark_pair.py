"""The `make-landmark-pair` command: a CT warped by a known field, with corresponding landmarks, for `evaluate`."""
from __future__ import annotations

import json
from pathlib import Path

from .cli_common import output_folder, require_at_least, require_at_least_one, require_positive

PAIR_FILES = ("fixed.nrrd", "moving.nrrd", "fixed_landmarks.csv", "moving_landmarks.csv", "landmark_pair.json")


def _add_make_landmark_pair(sub) -> None:
    """Register the `make-landmark-pair` command."""
    p = sub.add_parser("make-landmark-pair", help="build a landmark pair with known correspondences from one CT",
                       description="Warp a CT by a known synthetic field (fixed = warped CT, moving = CT) and place "
                                   "landmarks on lung structures of the fixed image; the moving landmarks follow the "
                                   "field exactly. Both images are written on a 1 mm grid in LPS orientation (the "
                                   "CT is resampled first, as for training pairs). For running `evaluate` where no "
                                   "manually landmarked pair exists; label results on such a pair as synthetic.")
    p.add_argument("--ct", required=True, help="chest CT (file or DICOM folder)")
    p.add_argument("--out", required=True, help="folder for fixed.nrrd, moving.nrrd and the landmark CSVs")
    p.add_argument("--points", type=int, default=300, help="number of landmarks (default 300)")
    p.add_argument("--field", default="respiratory", choices=["single_frequency", "mixed_frequency", "respiratory"])
    p.add_argument("--max-mm", type=float, default=20.0, help="largest displacement of the field (mm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def run_make_landmark_pair(args) -> dict:
    """Write the pair and its landmarks."""
    from .errors import InputError
    from .imageio import read_image, write_bytes, write_image
    from .landmark_pairs import make_landmark_pair
    require_at_least_one(points=args.points)
    require_at_least(0, seed=args.seed)
    require_positive(max_mm=args.max_mm)
    out = output_folder(args.out, *PAIR_FILES)
    ct = read_image(args.ct)
    try:
        pair = make_landmark_pair(ct, args.points, args.field, args.max_mm, args.seed)
    except ValueError as exc:
        raise InputError(f"{args.ct}: {exc}") from None
    write_image(pair.fixed, out / "fixed.nrrd")
    write_image(pair.moving, out / "moving.nrrd")
    for name, points in (("fixed_landmarks.csv", pair.fixed_points), ("moving_landmarks.csv", pair.moving_points)):
        write_bytes(("x,y,z\n" + "".join(f"{x:.4f},{y:.4f},{z:.4f}\n" for x, y, z in points)).encode(), out / name)
    description = {"ct": str(Path(args.ct).resolve()), "field": args.field, "max_mm": args.max_mm, "seed": args.seed,
                   "points": args.points, "note": "synthetic deformation with exactly known correspondences"}
    write_bytes(json.dumps(description, indent=1).encode(), out / "landmark_pair.json")
    if not args.json:
        print(f"wrote {out}/fixed.nrrd, moving.nrrd, fixed_landmarks.csv, moving_landmarks.csv "
              f"({args.points} landmarks)")
    return dict(description, out=str(out))


LANDMARK_PAIR_COMMANDS = {"make-landmark-pair": (_add_make_landmark_pair, run_make_landmark_pair)}
