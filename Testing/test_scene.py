"""Scene logic on a real MRML scene (slicer-core): output nodes, reuse, untouched inputs, failure leaves no trace."""
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.preprocessing import moving_on_fixed_grid
from RegistrationMisalignmentLib.regions import wrong_regions
from RegistrationMisalignmentLib.scene import (MAX_FIELD_SAMPLES, add_result_nodes, field_size, field_spacing,
                                               image_from_volume_node, image_in_world, mask_image, moving_input,
                                               output_segmentation, predict_nodes, status_text)

from conftest import grid_transform_node, volume_node as _volume


def _snapshot(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return (slicer.util.arrayFromVolume(node).copy(), [matrix.GetElement(r, c) for r in range(4) for c in range(4)],
            node.GetTransformNodeID(), node.GetName())


def _node_ids(scene):
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def test_images_round_trip_through_volume_nodes_in_lps(scene, small_phantom):
    ct, _ = small_phantom
    oblique = sitk.Image(ct)
    oblique.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    oblique.SetSpacing((0.8, 0.9, 2.0))
    node = _volume(scene, oblique, "ct")
    back = image_from_volume_node(node)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(oblique))
    assert np.allclose(back.GetDirection(), oblique.GetDirection()) and np.allclose(back.GetSpacing(), (0.8, 0.9, 2.0))
    lps = np.asarray(oblique.TransformIndexToPhysicalPoint((3, 4, 5)))
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((3, 4, 5, 1))[:3]
    assert np.allclose(ras, lps * [-1, -1, 1])


def test_predict_nodes_creates_the_outputs_and_leaves_inputs_alone(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    moving = _volume(scene, small_pair.moving, "moving")
    before = (_snapshot(fixed), _snapshot(moving))
    out = predict_nodes(fixed, moving, predictor=tiny_predictor, probabilities=True)
    assert all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
               for old, new in zip(before, (_snapshot(fixed), _snapshot(moving))) for a, b in zip(old, new))
    expected = sitk.GetArrayFromImage(tiny_predictor.predict(small_pair.fixed, small_pair.moving).labels)
    labels = slicer.util.arrayFromVolume(out["labels"])
    assert np.array_equal(labels, expected)
    assert _snapshot(out["labels"])[1] == _snapshot(fixed)[1]  # same geometry as the fixed volume
    colors = out["labels"].GetDisplayNode().GetColorNode()
    assert [colors.GetColorName(v) for v in L.CLASS_VALUES] == ["correct (<= 3 mm)", "poor (3-6 mm)", "wrong (> 6 mm)"]
    rgba = [0.0] * 4
    colors.GetColor(L.WRONG, rgba)
    assert rgba[:3] == pytest.approx(L.CLASS_COLORS[L.WRONG], abs=1 / 255)  # stored as 8-bit
    segmentation = out["segmentation"].GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(s.GetName() for s in segments) == sorted(L.display_name(v) for v in L.CLASS_VALUES)
    for segment in segments:
        value = next(v for v in L.CLASS_VALUES if L.display_name(v) == segment.GetName())
        assert segment.GetColor() == pytest.approx(L.CLASS_COLORS[value], abs=1 / 255)
    table = out["table"]
    assert table.GetNumberOfRows() == 3
    for row, value in enumerate(L.CLASS_VALUES):
        assert int(table.GetCellText(row, 2)) == int((labels == value).sum())
        assert float(table.GetCellText(row, 3)) == pytest.approx((labels == value).sum() * 0.001)
    probs = [slicer.util.arrayFromVolume(out[f"probability_{L.CLASS_NAMES[v]}"]) for v in L.CLASS_VALUES]
    assert np.allclose(np.sum(probs, axis=0)[labels > 0], 1.0, atol=1e-4)
    confidence = slicer.util.arrayFromVolume(out["confidence"])
    assert np.allclose(confidence, np.where(labels > 0, np.max(probs, axis=0), 0.0))
    assert confidence[labels > 0].min() >= 1 / 3 - 1e-6
    display = out["confidence"].GetDisplayNode()
    assert display.GetColorNode().GetName() == "RegistrationMisalignment confidence"
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((1 / 3, 1.0))
    unsure, sure = [0.0] * 4, [0.0] * 4
    display.GetColorNode().GetColor(0, unsure)
    display.GetColorNode().GetColor(255, sure)
    assert sum(sure[:3]) > 2 * sum(unsure[:3])  # dark purple when unsure, bright yellow when sure
    assert display.GetApplyThreshold() and 0 < display.GetLowerThreshold() < 1 / 3  # no colour where not evaluated
    composite = scene.GetFirstNodeByName("Red composite")
    assert composite.GetBackgroundVolumeID() == fixed.GetID()


def test_volumes_stored_in_another_order_of_axes_get_the_map_of_the_lps_stored_scan(scene, small_pair, tiny_predictor):
    """A scan loaded as RAS (as many NIfTI files are) gets, on its own grid, the map of the same scan stored as LPS."""
    fixed = _volume(scene, sitk.DICOMOrient(small_pair.fixed, "RAS"), "fixed")
    moving = _volume(scene, sitk.DICOMOrient(small_pair.moving, "RAS"), "moving")
    out = predict_nodes(fixed, moving, predictor=tiny_predictor)
    assert _snapshot(out["labels"])[1] == _snapshot(fixed)[1]
    expected = tiny_predictor.predict(small_pair.fixed, small_pair.moving).labels
    labels = sitk.DICOMOrient(image_from_volume_node(out["labels"]), "LPS")
    assert np.array_equal(sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(expected))


def test_segments_hold_exactly_the_label_map_voxels(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    out = predict_nodes(fixed, _volume(scene, small_pair.moving, "moving"), predictor=tiny_predictor)
    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    color_table = out["colors"]
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(out["segmentation"], exported)
    seg_array = slicer.util.arrayFromVolume(exported)
    label_array = slicer.util.arrayFromVolume(out["labels"])
    segmentation = out["segmentation"].GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert ids == [L.CLASS_NAMES[v] for v in L.CLASS_VALUES]  # class order and IDs, whichever classes occur
    for i in range(segmentation.GetNumberOfSegments()):
        name = segmentation.GetNthSegment(i).GetName()
        value = next(v for v in L.CLASS_VALUES if color_table.GetColorName(v) == name)
        assert int((seg_array == i + 1).sum()) == int((label_array == value).sum()), name


def test_a_second_run_reuses_the_nodes(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    moving = _volume(scene, small_pair.moving, "moving")
    first = predict_nodes(fixed, moving, predictor=tiny_predictor)
    ids = _node_ids(scene)
    second = predict_nodes(fixed, moving, predictor=tiny_predictor)
    assert _node_ids(scene) == ids
    for key in ("labels", "colors", "segmentation", "table"):
        assert first[key].GetID() == second[key].GetID()


def test_a_renamed_fixed_volume_keeps_its_outputs_renamed_after_it(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "CT")
    moving = _volume(scene, small_pair.moving, "moving")
    first = predict_nodes(fixed, moving, predictor=tiny_predictor)
    fixed.SetName("CT baseline")
    ids = _node_ids(scene)
    second = predict_nodes(fixed, moving, predictor=tiny_predictor)
    assert _node_ids(scene) == ids and second["segmentation"].GetID() == first["segmentation"].GetID()
    assert second["labels"].GetName() == "CT baseline misalignment"


def test_a_saved_scene_imported_into_another_keeps_its_maps_with_its_own_volume(scene, small_pair, tiny_predictor,
                                                                                tmp_path):
    saved_fixed = _volume(scene, small_pair.fixed, "CT")
    saved = predict_nodes(saved_fixed, _volume(scene, small_pair.moving, "moving"), predictor=tiny_predictor)
    scene.SetURL(str(tmp_path / "saved.mrml"))
    assert scene.Commit()
    scene.Clear(False)
    todays = _volume(scene, small_pair.fixed, "CT")  # takes the saved volume's node ID
    assert todays.GetID() == saved_fixed.GetID()
    scene.SetURL(str(tmp_path / "saved.mrml"))
    assert scene.Import()
    imported = scene.GetNodeByID(saved["labels"].GetID())
    imported_fixed = [node for node in slicer.util.getNodes("CT", scene=scene).values()
                      if node.GetID() != todays.GetID()]
    assert imported is not None and output_segmentation(todays) is None
    assert output_segmentation(imported_fixed[0]) is not None
    out = predict_nodes(todays, _volume(scene, small_pair.moving, "moving today"), predictor=tiny_predictor)
    assert out["labels"].GetID() != imported.GetID()


def test_the_same_volume_as_fixed_and_moving_is_refused(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "CT")
    ids = _node_ids(scene)
    with pytest.raises(InputError, match="chosen as both fixed and moving"):
        predict_nodes(fixed, fixed, predictor=tiny_predictor)
    assert _node_ids(scene) == ids


def test_a_failing_run_leaves_the_scene_as_it_was(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    moving = _volume(scene, small_pair.moving, "moving")
    empty = _volume(scene, sitk.Image(small_pair.fixed.GetSize(), sitk.sitkUInt8), "empty mask", label=True)
    ids = _node_ids(scene)
    with pytest.raises(InputError, match="mask is empty"):
        predict_nodes(fixed, moving, mask_node=empty, predictor=tiny_predictor)
    assert _node_ids(scene) == ids


def test_a_fixed_volume_removed_while_predicting_adds_nothing(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    result = tiny_predictor.predict(small_pair.fixed, small_pair.moving)  # as a background job would finish
    scene.RemoveNode(fixed)
    ids = _node_ids(scene)
    with pytest.raises(InputError, match="'fixed' was removed from the scene while predicting"):
        add_result_nodes(fixed, result, probabilities=True)
    assert _node_ids(scene) == ids


def test_a_linear_transform_goes_to_the_engine_as_it_is_and_another_as_a_displacement_field(scene, small_pair):
    moving = _volume(scene, small_pair.moving, "moving")
    stored = sitk.GetArrayFromImage(small_pair.moving)
    transform = _shift_transform(scene, "shift", 10.0)  # RAS +x: the volume shows 10 mm further left
    before = _snapshot(moving)
    image, fixed_to_moving = moving_input(moving, transform, small_pair.fixed)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), stored)
    assert np.allclose(fixed_to_moving.TransformPoint((1.0, 2.0, 3.0)), (11.0, 2.0, 3.0))  # LPS x = -RAS x
    grid = grid_transform_node(scene, "grid", 5.0)  # from the world to the volume: RAS +5 mm in x
    ids = _node_ids(scene)
    image, field = moving_input(moving, grid, small_pair.fixed)
    assert isinstance(field, sitk.DisplacementFieldTransform)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), stored)  # the image as stored: resampled once, later
    assert np.allclose(field.TransformPoint((1.0, 2.0, 3.0)), (-4.0, 2.0, 3.0))
    engine, _ = moving_on_fixed_grid(small_pair.fixed, image, field)
    shown = sitk.Resample(image_in_world(moving, grid), small_pair.fixed, sitk.Transform(), sitk.sitkLinear, -1024.0,
                          sitk.sitkFloat32)  # what Slicer shows: the volume hardened, then put on the fixed grid
    wrong_way, _ = moving_on_fixed_grid(small_pair.fixed, image, sitk.TranslationTransform(3, (5.0, 0.0, 0.0)))
    difference = np.abs(sitk.GetArrayViewFromImage(engine) - sitk.GetArrayViewFromImage(shown)).mean()
    assert difference < 0.1 * np.abs(sitk.GetArrayViewFromImage(wrong_way) - sitk.GetArrayViewFromImage(shown)).mean()
    assert _node_ids(scene) == ids
    after = _snapshot(moving)
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]


def test_a_displacement_field_is_sampled_every_2_mm_or_coarser_over_a_large_image():
    chest = sitk.Image([355, 280, 304], sitk.sitkInt16)
    assert np.allclose(field_spacing(chest), 2.0)
    body = sitk.Image([512, 512, 2000], sitk.sitkInt16)
    body.SetSpacing([1.0, 1.0, 0.5])
    spacing = field_spacing(body)
    assert spacing.min() > 2.0 and np.prod(field_size(body, spacing)) <= MAX_FIELD_SAMPLES


def test_a_segmentation_mask_limits_the_evaluated_region(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    box = sitk.Image(small_pair.fixed.GetSize(), sitk.sitkUInt8)
    box.CopyInformation(small_pair.fixed)
    box[30:50, 30:45, 40:60] = 1
    labelmap = _volume(scene, box, "box", label=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "box segmentation")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    out = predict_nodes(fixed, _volume(scene, small_pair.moving, "moving"), mask_node=segmentation,
                        predictor=tiny_predictor)
    labels = slicer.util.arrayFromVolume(out["labels"])
    assert np.array_equal(labels > 0, sitk.GetArrayViewFromImage(box) > 0)


def test_the_status_after_a_prediction_shows_its_classes_confidence_and_warnings(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    coarse = sitk.Resample(small_pair.moving, [n // 2 for n in small_pair.moving.GetSize()], sitk.Transform(),
                           sitk.sitkLinear, small_pair.moving.GetOrigin(),
                           [2 * v for v in small_pair.moving.GetSpacing()], small_pair.moving.GetDirection(), -1024)
    summary = predict_nodes(fixed, _volume(scene, coarse, "coarse moving"), predictor=tiny_predictor)["summary"]
    lines = status_text(summary).splitlines()
    assert lines[0].startswith("correct: ") and "mean confidence: " in lines[0]
    assert lines[1].endswith("called wrong" if not summary["wrong_regions"] else "mm RAS")
    assert lines[2:] == [f"Warning: {w}" for w in summary["warnings"]] and "another grid" in lines[2]
    summary["warnings"] = []
    assert status_text(summary).splitlines() == lines[:2]
    summary["warnings"] = None
    assert status_text(summary).splitlines() == lines[:2]
    summary["classes"] = {"correct": {"ml": 995.6, "fraction": 0.9956}, "poor": {"ml": 4.0, "fraction": 0.004},
                          "wrong": {"ml": 0.4, "fraction": 0.0004}}
    assert status_text(summary).startswith("correct: 996 mL (99.6 %)  poor: 4.0 mL (0.4 %)  wrong: 0.4 mL (< 0.1 %)")


def _shift_transform(scene, name, x_mm):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, x_mm)
    transform.SetMatrixTransformToParent(matrix)
    return transform


def test_a_moving_volume_under_its_registration_transform_is_evaluated_where_it_shows(scene, small_pair,
                                                                                     tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    shifted = sitk.Image(small_pair.moving)
    shifted.SetOrigin(tuple(np.asarray(shifted.GetOrigin()) + (8.0, 0.0, 0.0)))  # 8 mm off in LPS x
    moving = _volume(scene, shifted, "moving")
    undo = _shift_transform(scene, "registration", 8.0)  # RAS +x is LPS -x: back onto the fixed volume
    moving.SetAndObserveTransformNodeID(undo.GetID())
    expected = sitk.GetArrayFromImage(tiny_predictor.predict(small_pair.fixed, small_pair.moving).labels)
    for chosen in (None, undo):  # under the transform; or that transform also chosen in the module
        out = predict_nodes(fixed, moving, transform_node=chosen, predictor=tiny_predictor)
        assert np.array_equal(slicer.util.arrayFromVolume(out["labels"]), expected)
        assert out["summary"]["warnings"] == []  # a linear transform reaches the engine: no "another grid"
    moving.SetAndObserveTransformNodeID(grid_transform_node(scene, "deformable registration", -8.0).GetID())
    out = predict_nodes(fixed, moving, predictor=tiny_predictor)  # a non-linear transform: resampled once
    assert np.array_equal(slicer.util.arrayFromVolume(out["labels"]), expected)
    assert out["summary"]["warnings"] == []
    moving.SetAndObserveTransformNodeID(undo.GetID())
    with pytest.raises(InputError, match="is under the transform 'registration' but 'other' was chosen"):
        predict_nodes(fixed, moving, transform_node=_shift_transform(scene, "other", 1.0), predictor=tiny_predictor)
    fixed.SetAndObserveTransformNodeID(undo.GetID())
    with pytest.raises(InputError, match="the fixed volume 'fixed' is under a transform; harden it"):
        predict_nodes(fixed, moving, predictor=tiny_predictor)


def test_outputs_belong_to_their_fixed_volume_and_stale_uncertainty_volumes_go(scene, small_pair, tiny_predictor):
    first = _volume(scene, small_pair.fixed, "CT")
    second = _volume(scene, small_pair.fixed, "CT")  # two series of one name, as DICOM often gives
    users_own = _volume(scene, small_pair.fixed, "CT misalignment", label=True)
    before = slicer.util.arrayFromVolume(users_own).copy()
    moving = _volume(scene, small_pair.moving, "moving")
    a = predict_nodes(first, moving, predictor=tiny_predictor, probabilities=True)
    b = predict_nodes(second, moving, predictor=tiny_predictor)
    assert len({a["labels"].GetID(), b["labels"].GetID(), users_own.GetID()}) == 3
    assert np.array_equal(slicer.util.arrayFromVolume(users_own), before)
    again = predict_nodes(first, moving, predictor=tiny_predictor)  # now without probabilities
    assert again["labels"].GetID() == a["labels"].GetID()
    assert scene.GetNodeByID(a["confidence"].GetID()) is None
    assert scene.GetNodeByID(a["probability_wrong"].GetID()) is None
    assert output_segmentation(first).GetID() == again["segmentation"].GetID()
    assert output_segmentation(second).GetID() == b["segmentation"].GetID()
    assert again["segmentation"].GetDisplayNode().GetVisibility()  # only the latest volume's map is shown
    assert not b["segmentation"].GetDisplayNode().GetVisibility()


def test_segmentation_masks_use_every_segment_and_leave_no_helper_nodes(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    moving = _volume(scene, small_pair.moving, "moving")
    box = sitk.Image(small_pair.fixed.GetSize(), sitk.sitkUInt8)
    box.CopyInformation(small_pair.fixed)
    box[30:40, 30:45, 40:60] = 1
    box[40:50, 30:45, 40:60] = 2
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "two boxes")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(_volume(scene, box, "boxes", label=True),
                                                                           segmentation)
    segmentation.CreateDefaultDisplayNodes()
    segmentation.GetDisplayNode().SetSegmentVisibility(segmentation.GetSegmentation().GetNthSegmentID(1), False)
    ids = _node_ids(scene)
    mask = sitk.GetArrayFromImage(mask_image(segmentation, fixed))
    assert _node_ids(scene) == ids
    assert np.array_equal(mask > 0, sitk.GetArrayViewFromImage(box) > 0)  # the hidden segment too
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(InputError, match="'empty' has no segments"):
        predict_nodes(fixed, moving, mask_node=empty, predictor=tiny_predictor)
    assert _node_ids(scene) == ids | {empty.GetID()}


def test_a_run_that_fails_while_making_its_images_leaves_the_earlier_results_whole(scene, small_pair, tiny_predictor,
                                                                                   monkeypatch):
    from RegistrationMisalignmentLib import scene as scene_logic
    fixed = _volume(scene, small_pair.fixed, "fixed")
    first = predict_nodes(fixed, _volume(scene, small_pair.moving, "moving"), predictor=tiny_predictor,
                          probabilities=True)
    before = {key: slicer.util.arrayFromVolume(first[key]).copy() for key in ("labels", "confidence")}
    other = tiny_predictor.predict(small_pair.fixed, small_pair.fixed)  # another map: the images alone
    monkeypatch.setattr(scene_logic, "confidence_image", lambda result: (_ for _ in ()).throw(MemoryError()))
    ids = _node_ids(scene)
    with pytest.raises(MemoryError):
        add_result_nodes(fixed, other, probabilities=True)
    assert _node_ids(scene) == ids
    assert all(np.array_equal(slicer.util.arrayFromVolume(first[key]), before[key]) for key in before)


def _legend(node):
    return slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(node.GetDisplayNode())


def _legend_ids(scene):
    return {node.GetID() for node in scene_nodes(scene, "vtkMRMLColorLegendDisplayNode")}


def scene_nodes(scene, class_name):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def test_the_overlay_has_a_colour_legend_of_the_three_classes_in_the_slice_views(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    moving = _volume(scene, small_pair.moving, "moving")
    nodes = predict_nodes(fixed, moving, predictor=tiny_predictor, probabilities=True)
    legend = _legend(nodes["segmentation"])
    assert legend.GetVisibility() and legend.GetVisibility2D() and not legend.GetVisibility3D()
    assert legend.GetUseColorNamesForLabels() and legend.GetTitleText() == "Registration misalignment"
    assert legend.GetPrimaryDisplayNode() is nodes["segmentation"].GetDisplayNode()
    colors = legend.GetPrimaryDisplayNode().GetColorNode()
    named = [colors.GetColorName(i) for i in range(colors.GetNumberOfColors()) if colors.GetColorDefined(i)]
    assert named == ["correct (<= 3 mm)", "poor (3-6 mm)", "wrong (> 6 mm)"]  # "not evaluated" is not listed
    segments = nodes["segmentation"].GetSegmentation()
    for value in L.CLASS_VALUES:
        rgba = [0.0] * 4
        colors.GetColor(value, rgba)
        assert np.allclose(rgba[:3], segments.GetSegment(L.CLASS_NAMES[value]).GetColor(), atol=1 / 255)
    confidence = _legend(nodes["confidence"])
    assert confidence.GetTitleText() == "Confidence of the map" and not confidence.GetUseColorNamesForLabels()
    assert _legend_ids(scene) == {legend.GetID(), confidence.GetID()}
    again = predict_nodes(fixed, moving, predictor=tiny_predictor)  # reused; the confidence volume's goes with it
    assert _legend_ids(scene) == {legend.GetID()} and _legend(again["segmentation"]) is legend


def test_a_run_failing_after_its_nodes_were_made_leaves_no_legend_behind(scene, small_pair, tiny_predictor,
                                                                           monkeypatch):
    import RegistrationMisalignmentLib.scene as scene_module
    fixed = _volume(scene, small_pair.fixed, "fixed")
    moving = _volume(scene, small_pair.moving, "moving")
    ids = _node_ids(scene)

    def fail(*_):
        raise MemoryError("no memory for the statistics")

    monkeypatch.setattr(scene_module, "_fill_table", fail)
    with pytest.raises(MemoryError):
        predict_nodes(fixed, moving, predictor=tiny_predictor)
    assert _node_ids(scene) == ids


def test_the_largest_regions_called_wrong_are_listed_as_points_to_jump_to(scene, small_pair, tiny_predictor):
    fixed = _volume(scene, small_pair.fixed, "fixed")
    result = tiny_predictor.predict(small_pair.fixed, small_pair.moving)
    labels = np.zeros(sitk.GetArrayViewFromImage(small_pair.fixed).shape, dtype=np.uint8)
    labels[10:20, 10:30, 10:20] = L.WRONG  # 2000 voxels
    labels[30:34, 30:35, 30:35] = L.WRONG  # 100 voxels
    labels[40:42, 40:42, 40:42] = L.POOR
    labels[50, 50, 50:52] = L.WRONG  # 2 voxels: a region too small for one decimal must not read as 0 mL
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(small_pair.fixed)
    result = type(result)(image, None, dict(result.summary, **wrong_regions(image)))
    nodes = add_result_nodes(fixed, result)
    points = nodes["regions"]
    assert points.GetName() == "fixed misalignment wrong regions" and points.GetLocked()
    voxel_ml = np.prod(small_pair.fixed.GetSpacing()) / 1000
    assert [points.GetNthControlPointLabel(i) for i in range(points.GetNumberOfControlPoints())] == [
        f"wrong 1: {2000 * voxel_ml:.1f} mL", f"wrong 2: {100 * voxel_ml:.1f} mL", "wrong 3: < 0.1 mL"]
    assert 2 * voxel_ml < 0.05
    centre_lps = small_pair.fixed.TransformContinuousIndexToPhysicalPoint((14.5, 19.5, 14.5))
    assert np.allclose(points.GetNthControlPointPositionVector(0), np.diag([-1, -1, 1]) @ centre_lps)
    assert "3 regions called wrong; the largest" in status_text(result.summary)
    none = type(result)(sitk.Image(image.GetSize(), sitk.sitkUInt8), None, dict(result.summary, **wrong_regions(
        sitk.Image(image.GetSize(), sitk.sitkUInt8))))
    again = add_result_nodes(fixed, none)
    assert again["regions"] is points and points.GetNumberOfControlPoints() == 0
    assert "no region called wrong" in status_text(none.summary)
