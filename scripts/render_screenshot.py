"""The Extension Manager screenshot: the demo phantom's map over axial, coronal and sagittal Slicer slice views.

Renders offscreen with trame-slicer (real MRML slice views, the module's own overlay), so the picture is what
a clinician sees in Slicer. Regenerate after every release:

    python scripts/render_screenshot.py                  # released weights -> Screenshots/overlay.png
    python scripts/render_screenshot.py --weights W --out shot.png --seed 1
"""
import argparse
import io
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment"))

from RegistrationMisalignmentLib import labels as L  # noqa: E402
from RegistrationMisalignmentLib.demo import synthetic_pair  # noqa: E402
from RegistrationMisalignmentLib.figures import busiest_point  # noqa: E402
from RegistrationMisalignmentLib.imageio import write_bytes  # noqa: E402
from RegistrationMisalignmentLib.inference import MisalignmentPredictor  # noqa: E402
from RegistrationMisalignmentLib.phantom import make_chest_phantom  # noqa: E402
from RegistrationMisalignmentLib.scene import add_result_nodes, update_volume_node  # noqa: E402

ORIENTATIONS = ("axial", "coronal", "sagittal")
LUNG_WINDOW = (1500, -500)


def offscreen_slice_views(size: int = 400, orientations=ORIENTATIONS):
    """A headless Slicer application (trame-slicer) and one offscreen slice view per orientation."""
    import slicer
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition
    vtk_messages_off()
    app = SlicerApp()
    app.scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())  # as Slicer's Colors module does
    app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    views = []
    for orientation in orientations:
        view = app.view_manager.create_view(getattr(ViewLayoutDefinition, f"{orientation}_view")())
        view.render_window().SetSize(size, size)
        views.append(view)
    return app, views


def vtk_messages_off() -> None:
    """Silence VTK's warnings on the console (offscreen rendering prints harmless ones)."""
    import vtk
    vtk.vtkObject.GlobalWarningDisplayOff()


def view_pixels(view) -> np.ndarray:
    """RGB pixels of a rendered view, row 0 at the bottom (VTK display coordinates)."""
    import vtk
    from vtkmodules.util.numpy_support import vtk_to_numpy
    view.render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.Update()
    image = grab.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3].astype(int)


def add_ct_node(scene, image, name: str = "fixed"):
    """A scalar volume node holding `image`, shown in grey with a lung window."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_node(node, image)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(*LUNG_WINDOW)
    return node


def worst_lung_point(label_array: np.ndarray) -> tuple:
    """zyx index at the centre of the wrong voxels of the side (one lung) that has more of them."""
    half = label_array.shape[2] // 2
    sides = ((0, label_array[..., :half]), (half, label_array[..., half:]))  # (x offset, view)
    offset, side = max(sides, key=lambda entry: int(np.count_nonzero(entry[1] == L.WRONG)))
    z, y, x = busiest_point(side, L.WRONG)
    return z, y, x + offset


def ras_of_index(volume_node, index_zyx) -> list:
    """RAS position (mm) of a zyx voxel index of a volume node."""
    import vtk
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    return list(ijk_to_ras.MultiplyPoint([*index_zyx[::-1], 1.0])[:3])


def screenshot_png(predictor, seed: int = 0, size: int = 360, phantom_size_xyz=(192, 160, 176)) -> bytes:
    """PNG of the demo phantom pair's predicted map in three slice views, side by side."""
    import matplotlib.pyplot as plt
    ct, lungs = make_chest_phantom(seed, phantom_size_xyz)
    pair = synthetic_pair(ct, lungs, "single_frequency", 12.0, seed)
    result = predictor.predict(pair.fixed, pair.moving)
    app, views = offscreen_slice_views(size)
    fixed = add_ct_node(app.scene, pair.fixed)
    nodes = add_result_nodes(fixed, result)
    centre_ras = ras_of_index(nodes["labels"], worst_lung_point(sitk.GetArrayViewFromImage(result.labels)))
    panels = []
    for view in views:
        view.fit_view_to_content()
        view.get_view_node().JumpSliceByOffsetting(*centre_ras)
        panels.append(view_pixels(view)[::-1])
    buffer = io.BytesIO()
    plt.imsave(buffer, np.hstack(panels).astype(np.uint8), format="png")
    return buffer.getvalue()


def main(argv=None) -> None:
    """Render the screenshot with the released (or given) weights and write it atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="weights file (default: the released model)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "Screenshots" / "overlay.png"))
    parser.add_argument("--seed", type=int, default=0, help="phantom and field seed (as `demo --seed`)")
    parser.add_argument("--size", type=int, default=360, help="edge of each slice view in pixels")
    args = parser.parse_args(argv)
    predictor = MisalignmentPredictor.load(args.weights, device="cpu")
    write_bytes(screenshot_png(predictor, args.seed, args.size), args.out)
    print(args.out)


if __name__ == "__main__":
    main()
