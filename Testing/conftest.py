"""Shared fixtures: small phantom pairs, a small untrained network, the shared real CTs."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import slicer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment"))

from RegistrationMisalignmentLib.checkpoint import card_path, export_weights  # noqa: E402
from RegistrationMisalignmentLib.demo import synthetic_pair  # noqa: E402
from RegistrationMisalignmentLib.inference import MisalignmentPredictor  # noqa: E402
from RegistrationMisalignmentLib.model import MisalignmentNet, ModelConfig  # noqa: E402
from RegistrationMisalignmentLib.phantom import make_chest_phantom  # noqa: E402
from RegistrationMisalignmentLib.scene import update_volume_node  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = (96, 80, 88)


def shared_ct(name: str) -> Path:
    """Path of a shared real CT; fails (never skips) when the shared data are missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.fail(f"{path} is missing: the shared real CTs must sit in ../shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def small_phantom():
    """A small phantom CT and its lung mask."""
    return make_chest_phantom(0, SMALL)


@pytest.fixture(scope="session")
def small_pair(small_phantom):
    """A synthetic pair from the small phantom with a known single-frequency field (max 12 mm)."""
    ct, lungs = small_phantom
    return synthetic_pair(ct, lungs, "single_frequency", 12.0, seed=1)


@pytest.fixture(scope="session")
def tiny_model():
    """A small, untrained but deterministic hierarchical network."""
    torch.manual_seed(0)
    return MisalignmentNet(ModelConfig(features=4, hidden=4)).eval()


@pytest.fixture(scope="session")
def tiny_predictor(tiny_model):
    """A CPU predictor around the tiny model with a small memory budget (several tiles)."""
    return MisalignmentPredictor(tiny_model, device="cpu", max_memory_gb=0.05)


def save_weights_with_card(model, path) -> None:
    """Export `model` to `path` with a model card holding its sha256 (as a released model has)."""
    card_path(path).write_text(json.dumps({"sha256": export_weights(model, path)}))


def image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Image from a zyx array with the reference's geometry."""
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def register_colors_module_nodes(scene) -> None:
    """Register the colour legend node class, as Slicer's Colors module does at start-up."""
    scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())


@pytest.fixture
def scene():
    """A headless MRML scene with the application, colour and segmentation logics registered first."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    register_colors_module_nodes(scene)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode", "Red composite")
    yield scene
    segmentations.SetMRMLScene(None)
    scene.Clear(True)


def volume_node(scene, image, name, label=False):
    """A scalar (or label map) volume node holding a SimpleITK image."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    update_volume_node(node, image)
    return node


def grid_transform_node(scene, name, x_mm):
    """A grid transform node whose displacement from the world to the volumes under it is x_mm along RAS x."""
    import vtk
    from vtk.util import numpy_support
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    field = vtk.vtkImageData()
    field.SetDimensions(4, 4, 4)
    field.SetSpacing(200.0, 200.0, 200.0)
    field.SetOrigin(-300.0, -300.0, -300.0)
    field.AllocateScalars(vtk.VTK_DOUBLE, 3)
    numpy_support.vtk_to_numpy(field.GetPointData().GetScalars())[:] = (x_mm, 0.0, 0.0)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(field)
    grid.SetAndObserveTransformFromParent(transform)
    return grid


def engine_environment() -> dict:
    """This process's environment with the engine first on PYTHONPATH, for running the command line as a program."""
    engine = str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([engine] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def run_in_terminal(args, timeout: float = 300.0):
    """Run the command line with stderr on a pseudo-terminal 120 columns wide, as a user's terminal (so progress bars
    are drawn); return its exit status and what it wrote there, with the terminal's line ends made plain."""
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import termios
    import time
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "RegistrationMisalignmentLib", *map(str, args)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
                               env=engine_environment())
    os.close(follower)
    written, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # Linux: every writer has closed the terminal
                    break
                if not chunk:
                    break
                written.append(chunk)
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        process.kill()
        os.close(leader)
    return status, b"".join(written).decode("utf-8", "replace").replace("\r\n", "\n")


def warnings_stand_alone(terminal: str) -> list:
    """The warning lines a terminal shows, after a test that each one starts its line (not glued to a progress bar:
    what follows the line's last carriage return is the warning)."""
    lines = [line for line in terminal.split("\n") if "warning:" in line]
    assert all(line.split("\r")[-1].startswith("warning: ") for line in lines), lines
    return [line.split("\r")[-1] for line in lines]
