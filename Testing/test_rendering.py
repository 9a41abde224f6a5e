"""The overlay as a clinician sees it: an offscreen Red slice view (trame-slicer) shows the class colours."""
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtkmodules.util.numpy_support import vtk_to_numpy

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.inference import PredictionResult
from RegistrationMisalignmentLib.scene import add_result_nodes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from render_screenshot import add_ct_node, offscreen_slice_views, screenshot_png, view_pixels  # noqa: E402


@pytest.fixture(scope="module")
def app():
    """A headless Slicer application with an offscreen Red (axial) slice view."""
    app, (app.red,) = offscreen_slice_views(400, ("axial",))
    return app


def _known_labels(ct: sitk.Image) -> sitk.Image:
    """Wrong in the left half of a box, correct in the right half, poor in a strip between."""
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, dtype=np.uint8)
    labels[20:60, 20:60, 20:44] = L.WRONG
    labels[20:60, 20:60, 44:50] = L.POOR
    labels[20:60, 20:60, 50:76] = L.CORRECT
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return image


def _labels_under_pixels(view, label_node, shape) -> np.ndarray:
    """The label-map value under each pixel of the slice view (0 outside the volume)."""
    slice_node = view.mrml_view_node if hasattr(view, "mrml_view_node") else view.get_view_node()
    xy_to_ras = slice_node.GetXYToRAS()
    ras_to_ijk = vtk.vtkMatrix4x4()
    label_node.GetRASToIJKMatrix(ras_to_ijk)
    xy_to_ijk = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(ras_to_ijk, xy_to_ras, xy_to_ijk)
    m = np.array([[xy_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    ijk = np.rint(m @ np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size), np.ones(xs.size)]))[:3].astype(int)
    array = vtk_to_numpy(label_node.GetImageData().GetPointData().GetScalars()).reshape(
        label_node.GetImageData().GetDimensions()[::-1])
    inside = np.all((ijk >= 0) & (ijk < np.array(array.shape[::-1])[:, None]), axis=0)
    values = np.zeros(xs.size, dtype=np.uint8)
    values[inside] = array[ijk[2, inside], ijk[1, inside], ijk[0, inside]]
    return values.reshape(height, width)


def test_red_slice_view_shows_red_where_wrong_and_green_where_correct(app, small_pair):
    fixed = add_ct_node(app.scene, small_pair.fixed)
    labels = _known_labels(small_pair.fixed)
    summary = {"classes": {L.CLASS_NAMES[v]: {"voxels": 0, "ml": 0.0, "fraction": 0.0} for v in L.CLASS_VALUES}}
    nodes = add_result_nodes(fixed, PredictionResult(labels, None, summary))
    slice_node = app.red.get_view_node()
    slice_node.JumpSliceByCentering(*nodes["labels"].GetImageData().GetCenter())
    app.red.fit_view_to_content()
    slice_node.SetSliceOffset(0.0)  # through the box (the volume is centred at 0)
    pixels = view_pixels(app.red)
    if os.environ.get("RENDERING_PNG"):
        import matplotlib.pyplot as plt
        plt.imsave(os.environ["RENDERING_PNG"], pixels[::-1].astype(np.uint8))
    under = _labels_under_pixels(app.red, nodes["labels"], pixels.shape[:2])
    red, green = pixels[..., 0], pixels[..., 1]
    wrong, correct, outside = under == L.WRONG, under == L.CORRECT, under == L.NOT_EVALUATED
    assert wrong.sum() > 500 and correct.sum() > 500
    assert np.median(red[wrong] - green[wrong]) > 40
    assert np.median(green[correct] - red[correct]) > 40
    assert np.median(np.abs(red[outside] - green[outside])) < 10  # grey CT, no overlay


def test_screenshot_shows_three_slice_views_with_the_predicted_overlay(tiny_predictor):
    png = screenshot_png(tiny_predictor, seed=0, size=120, phantom_size_xyz=(96, 80, 88))
    import matplotlib.pyplot as plt
    pixels = (plt.imread(io.BytesIO(png))[..., :3] * 255).astype(int)
    assert pixels.shape == (120, 360, 3)
    coloured = np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2]) > 60
    for panel in np.split(coloured, 3, axis=1):
        assert panel.sum() > 50  # every view cuts through the lungs' overlay


def test_the_slice_view_shows_the_colour_legend_beside_the_overlay(app, small_pair):
    fixed = add_ct_node(app.scene, small_pair.fixed, "legend fixed")
    summary = {"classes": {L.CLASS_NAMES[v]: {"voxels": 0, "ml": 0.0, "fraction": 0.0} for v in L.CLASS_VALUES}}
    nodes = add_result_nodes(fixed, PredictionResult(_known_labels(small_pair.fixed), None, summary))
    app.red.get_view_node().JumpSliceByCentering(*nodes["labels"].GetImageData().GetCenter())
    app.red.fit_view_to_content()
    pixels = view_pixels(app.red)
    off_map = _labels_under_pixels(app.red, nodes["labels"], pixels.shape[:2]) == L.NOT_EVALUATED
    swatches = {}
    for value in L.CLASS_VALUES:
        colour = np.array(L.CLASS_COLORS[value]) * 255
        rows, _ = np.nonzero(off_map & (np.abs(pixels - colour).max(axis=-1) < 30))  # full colour: not blended
        assert rows.size > 100, L.CLASS_NAMES[value]
        swatches[value] = np.median(rows)
    assert swatches[L.WRONG] > swatches[L.POOR] > swatches[L.CORRECT]  # wrong on top (row 0 is the bottom)
