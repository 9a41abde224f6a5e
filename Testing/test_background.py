"""Prediction in a child process: same result as in-process, progress, cancel, errors, scene outputs."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from RegistrationMisalignmentLib.background import BackgroundPrediction
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.scene import add_result_nodes, start_prediction

from conftest import grid_transform_node, save_weights_with_card, volume_node


@pytest.fixture(scope="module")
def weights(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights_with_card(tiny_model, path)
    return path


def test_child_process_gives_the_in_process_result_and_reports_progress(small_pair, tiny_predictor, weights):
    seen = []
    job = BackgroundPrediction(small_pair.fixed, small_pair.moving, weights=weights, device="cpu",
                               progress=lambda fraction, message: seen.append(fraction))
    job.wait(timeout=300)
    result = job.result()
    expected = tiny_predictor.predict(small_pair.fixed, small_pair.moving)
    assert np.array_equal(sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(expected.labels))
    assert result.summary["classes"] == expected.summary["classes"]
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert not job.folder.exists()
    with pytest.raises(InputError, match="already taken"):
        job.result()


def test_a_child_that_cannot_start_is_one_line_and_leaves_no_files(small_pair, weights, tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(InputError, match="could not be started"):
        BackgroundPrediction(small_pair.fixed, small_pair.moving, weights=weights, device="cpu",
                             python=str(tmp_path / "no-such-python"))
    assert list(tmp_path.iterdir()) == []


def test_cancel_stops_the_child_and_removes_its_files(small_pair, weights):
    job = BackgroundPrediction(small_pair.fixed, small_pair.moving, weights=weights, device="cpu")
    job.cancel()
    assert job.process.poll() is not None and not job.folder.exists()
    with pytest.raises(InputError, match="cancelled"):
        job.result()


def test_child_errors_come_back_as_one_line(small_pair, weights):
    empty = sitk.Image(small_pair.fixed.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(small_pair.fixed)
    job = BackgroundPrediction(small_pair.fixed, small_pair.moving, mask=empty, weights=weights, device="cpu")
    with pytest.raises(InputError, match="mask is empty") as err:
        job.result()
    assert "\n" not in str(err.value)


def test_a_child_that_is_killed_says_so_and_not_its_last_warning(small_pair, tmp_path):
    killed = tmp_path / "python-killed-by-the-system"
    killed.write_text("#!/bin/sh\necho 'warning: moving image is on another grid' >&2\nkill -9 $$\n")
    killed.chmod(0o755)
    job = BackgroundPrediction(small_pair.fixed, small_pair.moving, device="cpu", python=str(killed))
    with pytest.raises(InputError, match="was stopped by signal 9 without an error of its own") as err:
        job.result()
    assert "another grid" not in str(err.value) and "out of memory?" in str(err.value)


def test_background_run_on_scene_nodes(scene, small_pair, tiny_predictor, weights):
    fixed = volume_node(scene, small_pair.fixed, "fixed")
    shifted = sitk.Image(small_pair.moving)
    shifted.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) + (6.0, 0.0, 0.0)))
    moving = volume_node(scene, shifted, "moving")
    undo = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 6.0)  # RAS +x undoes the LPS +x shift
    undo.SetMatrixTransformToParent(matrix)
    expected = tiny_predictor.predict(small_pair.fixed, small_pair.moving).labels
    deformable = grid_transform_node(scene, "deformable registration", -6.0)  # the same, as a non-linear transform
    for transform, asked in ((undo, True), (deformable, False)):  # through a transform file; a displacement field
        job = start_prediction(fixed, moving, transform_node=transform, weights=weights, device="cpu",
                               probabilities=asked)
        assert ("--probabilities" in job.process.args) == asked  # 12 bytes per voxel, written only when asked for
        nodes = add_result_nodes(fixed, job.result(), probabilities=True)
        assert nodes["labels"].GetName() == "fixed misalignment"
        assert nodes["table"].GetNumberOfRows() == 3 and ("probability_wrong" in nodes) == asked
        assert np.array_equal(slicer.util.arrayFromVolume(nodes["labels"]), sitk.GetArrayViewFromImage(expected))


def test_mixed_precision_checkbox_reaches_the_child(scene, small_pair, weights):
    fixed = volume_node(scene, small_pair.fixed, "fixed amp")
    moving = volume_node(scene, small_pair.moving, "moving amp")
    result = start_prediction(fixed, moving, weights=weights, device="cpu", amp=True).result()
    assert result.summary["precision"] == "bfloat16 autocast"
