"""Where a map calls the registration wrong: its connected 'wrong' regions, their volumes and centres, largest first."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from . import labels as L

LISTED_REGIONS = 5  # the largest regions a summary lists (all are counted)


def wrong_regions(labels: sitk.Image, limit: int = LISTED_REGIONS) -> dict:
    """The face-connected regions of 'wrong' voxels of a label map: how many there are and the `limit` largest (mL,
    voxels, centre in LPS mm, extent in mm along the image axes), largest first (ties: nearer the image origin)."""
    box = _wrong_box(labels)
    if box is None:
        return {"wrong_region_count": 0, "wrong_regions": []}
    index, size = box
    components = sitk.ConnectedComponentImageFilter()
    regions = components.Execute(sitk.BinaryThreshold(sitk.RegionOfInterest(labels, size, index), L.WRONG, L.WRONG,
                                                      1, 0))
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(regions)
    spacing = np.asarray(labels.GetSpacing())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    largest = sorted(shapes.GetLabels(), key=lambda label: (-shapes.GetNumberOfPixels(label), label))[:limit]
    listed = [{"ml": shapes.GetNumberOfPixels(label) * voxel_ml, "voxels": int(shapes.GetNumberOfPixels(label)),
               "centre_lps_mm": [float(v) for v in shapes.GetCentroid(label)],
               "extent_mm": [float(v) for v in np.asarray(shapes.GetBoundingBox(label)[3:]) * spacing]}
              for label in largest]
    return {"wrong_region_count": int(components.GetObjectCount()), "wrong_regions": listed}


def _wrong_box(labels: sitk.Image):
    """Index and size (xyz) of the bounding box of the 'wrong' voxels, or None when there are none."""
    wrong = sitk.GetArrayViewFromImage(labels) == L.WRONG
    along_z = np.flatnonzero(wrong.any(axis=(1, 2)))
    if along_z.size == 0:
        return None
    plane = wrong[along_z[0]:along_z[-1] + 1].any(axis=0)
    along_y, along_x = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    index = [int(along_x[0]), int(along_y[0]), int(along_z[0])]
    size = [int(along_x[-1]) + 1 - index[0], int(along_y[-1]) + 1 - index[1], int(along_z[-1]) + 1 - index[2]]
    return index, size


def regions_text(summary: dict, ras: bool = False) -> str:
    """One line on the regions called wrong: how many, and the largest's volume and centre (LPS mm, or RAS as Slicer
    shows coordinates)."""
    count, listed = summary.get("wrong_region_count"), summary.get("wrong_regions")
    if not count or not listed:
        return "no region called wrong"
    centre = np.asarray(listed[0]["centre_lps_mm"]) * ((-1, -1, 1) if ras else 1)
    where = ", ".join(f"{v:.0f}" for v in centre)
    noun = "region" if count == 1 else "regions"
    return (f"{count} {noun} called wrong; the largest {listed[0]['ml']:.1f} mL around ({where}) mm "
            f"{'RAS' if ras else 'LPS'}")
