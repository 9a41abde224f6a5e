"""PNG figures: class maps overlaid on the CT in axial, coronal and sagittal views."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import labels as L  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def overlay_rgb(ct_slice: np.ndarray, label_slice: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB image of a CT slice (lung window) with the class colours blended on top."""
    grey = np.clip((ct_slice + 1350.0) / 1500.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for value in L.CLASS_VALUES:
        where = label_slice == value
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(L.CLASS_COLORS[value])
    return rgb


def view_slices(volume: np.ndarray, centre_zyx) -> dict:
    """Axial, coronal and sagittal slices (zyx array) through a point, oriented for display."""
    z, y, x = (int(c) for c in centre_zyx)
    return {"axial": volume[z], "coronal": volume[:, y, :][::-1], "sagittal": volume[:, :, x][::-1]}


def busiest_point(label_array: np.ndarray, value: int = L.WRONG) -> tuple:
    """Centre of the voxels with `value` (or of all evaluated voxels if there are none)."""
    where = np.argwhere(label_array == value)
    if len(where) == 0:
        where = np.argwhere(label_array > 0)
    if len(where) == 0:
        return tuple(n // 2 for n in label_array.shape)
    return tuple(int(v) for v in np.median(where, axis=0))


def comparison_png(ct: np.ndarray, rows: dict, centre_zyx=None, spacing_zyx=(1.0, 1.0, 1.0)) -> bytes:
    """PNG bytes: one row per named label map (e.g. truth, prediction), three views each, with a legend."""
    centre = centre_zyx or busiest_point(next(iter(rows.values())))
    ct_views = view_slices(ct, centre)
    aspects = {"axial": spacing_zyx[1] / spacing_zyx[2], "coronal": spacing_zyx[0] / spacing_zyx[2],
               "sagittal": spacing_zyx[0] / spacing_zyx[1]}
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 4.2 * len(rows)), squeeze=False)
    for r, (name, label_array) in enumerate(rows.items()):
        label_views = view_slices(label_array, centre)
        for c, view in enumerate(VIEWS):
            ax = axes[r][c]
            ax.imshow(overlay_rgb(ct_views[view], label_views[view]), aspect=aspects[view], interpolation="nearest")
            ax.set_title(f"{name}: {view}")
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=L.CLASS_COLORS[v]) for v in L.CLASS_VALUES]
    fig.legend(handles, [L.display_name(v) for v in L.CLASS_VALUES], loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def worst_slice_indices(label_array: np.ndarray) -> dict:
    """Per view, the slice index with the most wrong voxels (else most evaluated voxels, else the middle)."""
    for where in (label_array == L.WRONG, label_array > 0):
        per_zy = np.count_nonzero(where, axis=2)
        if per_zy.any():
            return {"axial": int(np.argmax(per_zy.sum(axis=1))), "coronal": int(np.argmax(per_zy.sum(axis=0))),
                    "sagittal": int(np.argmax(np.count_nonzero(where, axis=(0, 1))))}
    z, y, x = (n // 2 for n in label_array.shape)
    return {"axial": z, "coronal": y, "sagittal": x}


def _resample_nearest(image: np.ndarray, pixel_mm: tuple, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D slice with square pixels, its longer physical side `size` pixels."""
    extent = np.asarray(image.shape) * np.asarray(pixel_mm, dtype=np.float64)
    shape = np.maximum(1, np.round(extent * size / extent.max())).astype(int)
    rows, cols = ((np.arange(n) + 0.5) * old / n for n, old in zip(shape, image.shape))
    return image[rows.astype(int)[:, None], cols.astype(int)]


def thumbnail_pngs(ct_array: np.ndarray, label_array: np.ndarray, spacing_zyx, size: int = 256) -> dict:
    """PNG bytes per view: the class overlay through the slices with the most wrong voxels, true aspect ratio."""
    worst = worst_slice_indices(label_array)
    centre = (worst["axial"], worst["coronal"], worst["sagittal"])
    sz, sy, sx = spacing_zyx
    pixel_mm = {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}
    ct_views, label_views = view_slices(ct_array, centre), view_slices(label_array, centre)
    pngs = {}
    for view in VIEWS:
        ct_small, label_small = (_resample_nearest(v[view], pixel_mm[view], size) for v in (ct_views, label_views))
        buffer = io.BytesIO()
        plt.imsave(buffer, overlay_rgb(ct_small.astype(np.float32), label_small), format="png")
        pngs[view] = buffer.getvalue()
    return pngs
