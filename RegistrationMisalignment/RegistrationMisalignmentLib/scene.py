"""Slicer scene side (no Qt): MRML volume nodes <-> SimpleITK images, prediction outputs as nodes, display."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from . import labels as L
from .errors import InputError

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
COLOR_TABLE_NAME = "RegistrationMisalignment colours"
OVERLAY_OPACITY = 0.5
CONFIDENCE_TABLE_NAME = "RegistrationMisalignment confidence"
CONFIDENCE_RAMP = ((0.267, 0.005, 0.329), (0.128, 0.567, 0.551), (0.993, 0.906, 0.144))  # viridis: unsure -> sure
CONFIDENCE_RANGE = (1.0 / 3.0, 1.0)  # the largest of three probabilities is at least 1/3


def output_names(fixed_node) -> dict:
    """Names of the nodes a prediction creates or reuses for a fixed volume."""
    base = f"{fixed_node.GetName()} misalignment"
    names = {"labels": base, "segmentation": f"{base} segments", "table": f"{base} statistics"}
    names.update({f"probability_{L.CLASS_NAMES[v]}": f"{base} probability {L.CLASS_NAMES[v]}" for v in L.CLASS_VALUES})
    names["confidence"] = f"{base} confidence"
    return names


def image_from_volume_node(node) -> sitk.Image:
    """SimpleITK image (LPS geometry) from a scalar or label map volume node; the node is not changed."""
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(node), copy=True))
    directions = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions)
    ras = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetSpacing(node.GetSpacing())
    image.SetOrigin(tuple(RAS_FROM_LPS @ np.asarray(node.GetOrigin())))
    image.SetDirection(tuple((RAS_FROM_LPS @ ras).ravel()))
    return image


def update_volume_node(node, image: sitk.Image) -> None:
    """Set a volume node's voxels and geometry from a SimpleITK image (LPS)."""
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin(tuple(RAS_FROM_LPS @ np.asarray(image.GetOrigin())))
    ras = RAS_FROM_LPS @ np.asarray(image.GetDirection()).reshape(3, 3)
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, ras[r, c])
    node.SetIJKToRASDirectionMatrix(directions)


def moving_image(moving_node, transform_node=None) -> sitk.Image:
    """The moving image, with `transform_node` hardened on a temporary copy (the user's node is untouched)."""
    if transform_node is None:
        return image_from_volume_node(moving_node)
    scene = moving_node.GetScene()
    copy = scene.AddNewNodeByClass(moving_node.GetClassName(), scene.GenerateUniqueName("misalignment moving"))
    try:
        copy.Copy(moving_node)
        image_data = vtk.vtkImageData()
        image_data.DeepCopy(moving_node.GetImageData())
        copy.SetAndObserveImageData(image_data)
        copy.SetAndObserveTransformNodeID(transform_node.GetID())
        slicer.vtkSlicerTransformLogic().hardenTransform(copy)
        return image_from_volume_node(copy)
    finally:
        scene.RemoveNode(copy)


def mask_image(mask_node, fixed_node):
    """The mask as a SimpleITK image: a label map volume, or a segmentation exported on the fixed grid."""
    if mask_node is None:
        return None
    if not mask_node.IsA("vtkMRMLSegmentationNode"):
        return image_from_volume_node(mask_node)
    scene = fixed_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("misalignment mask"))
    try:
        slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(mask_node, labelmap, fixed_node)
        return image_from_volume_node(labelmap)
    finally:
        scene.RemoveNode(labelmap)


def _node(scene, class_name: str, name: str, created: list):
    """The first node of `class_name` called `name`, or a new one (recorded in `created`)."""
    for node in _nodes_by_class(scene, class_name):
        if node.GetName() == name:
            return node
    node = scene.AddNewNodeByClass(class_name, name)
    created.append(node)
    return node


def _nodes_by_class(scene, class_name: str) -> list:
    """All nodes of a class in the scene."""
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def class_color_table(scene, created: list):
    """The colour table node: transparent 0, then correct / poor / wrong named with their mm ranges."""
    table = _node(scene, "vtkMRMLColorTableNode", COLOR_TABLE_NAME, created)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(L.CLASS_VALUES) + 1)
    table.SetColor(L.NOT_EVALUATED, L.CLASS_NAMES[L.NOT_EVALUATED], 0.0, 0.0, 0.0, 0.0)
    for value in L.CLASS_VALUES:
        table.SetColor(value, L.display_name(value), *L.CLASS_COLORS[value], 1.0)
    return table


def confidence_color_table(scene, created: list):
    """A continuous colour table for the confidence volume: purple (unsure) through teal to yellow (sure)."""
    table = _node(scene, "vtkMRMLColorTableNode", CONFIDENCE_TABLE_NAME, created)
    table.SetTypeToUser()
    table.SetNumberOfColors(256)
    for i, t in enumerate(np.linspace(0.0, 1.0, 256)):
        table.SetColor(i, *[float(np.interp(t, (0.0, 0.5, 1.0), channel)) for channel in zip(*CONFIDENCE_RAMP)], 1.0)
    return table


def confidence_image(result) -> sitk.Image:
    """The largest class probability where the map is evaluated, 0 elsewhere: how sure each voxel's class is."""
    largest = sitk.GetArrayViewFromImage(result.probabilities).max(axis=-1)
    evaluated = sitk.GetArrayViewFromImage(result.labels) > 0
    image = sitk.GetImageFromArray(np.where(evaluated, largest, 0.0).astype(np.float32))
    image.CopyInformation(result.labels)
    return image


def _fill_confidence(node, result, colors) -> None:
    """Put the confidence image in a volume node coloured from 1/3 (unsure) to 1 (sure)."""
    update_volume_node(node, confidence_image(result))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colors.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*CONFIDENCE_RANGE)


def _fill_labelmap(node, labels: sitk.Image, colors) -> None:
    """Put the label image in a label map node that displays with the class colours."""
    update_volume_node(node, labels)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())


def _fill_segmentation(segmentation_node, labelmap_node, fixed_node) -> None:
    """Three named, coloured segments (empty ones included) from the label map, shown as a 2-D overlay."""
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(fixed_node)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, segmentation_node)
    present = {segmentation.GetNthSegment(i).GetLabelValue(): segmentation.GetNthSegmentID(i)
               for i in range(segmentation.GetNumberOfSegments())}
    for value in L.CLASS_VALUES:
        name = L.display_name(value)
        if value in present:
            segment = segmentation.GetSegment(present[value])
            segment.SetName(name)
            segment.SetColor(*L.CLASS_COLORS[value])
        else:
            segmentation.AddEmptySegment(L.CLASS_NAMES[value], name, L.CLASS_COLORS[value])
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility2DFill(True)
    display.SetOpacity2DFill(OVERLAY_OPACITY)


def _fill_table(table_node, summary: dict) -> None:
    """Statistics table: class, range, voxels, volume (mL) and percentage of the mask."""
    table_node.RemoveAllColumns()
    columns = [("Class", vtk.vtkStringArray), ("Range", vtk.vtkStringArray), ("Voxels", vtk.vtkIntArray),
               ("Volume (mL)", vtk.vtkDoubleArray), ("Percent of mask", vtk.vtkDoubleArray)]
    arrays = []
    for name, array_type in columns:
        array = array_type()
        array.SetName(name)
        arrays.append(array)
    for value in L.CLASS_VALUES:
        entry = summary["classes"][L.CLASS_NAMES[value]]
        arrays[0].InsertNextValue(L.CLASS_NAMES[value])
        arrays[1].InsertNextValue(L.CLASS_RANGES[value])
        arrays[2].InsertNextValue(entry["voxels"])
        arrays[3].InsertNextValue(entry["ml"])
        arrays[4].InsertNextValue(100.0 * entry["fraction"])
    for array in arrays:
        table_node.AddColumn(array)


def status_text(summary: dict) -> str:
    """The module's status after a prediction: mL and percentage of the evaluated region per class, the map's mean
    confidence, and one line per warning the prediction gave (a map to trust less)."""
    text = "  ".join(f"{name}: {c['ml']:.0f} mL ({100 * c['fraction']:.0f} %)" for name, c in summary["classes"].items())
    confidence = summary.get("mean_confidence")
    if confidence is not None:
        text += f"  mean confidence: {100 * confidence:.0f} %"
    return "\n".join([text] + [f"Warning: {warning}" for warning in summary.get("warnings", [])])


def show_overlay(fixed_node, segmentation_node) -> None:
    """Fixed volume as background of every slice view; the segmentation is displayed on top."""
    for composite in _nodes_by_class(fixed_node.GetScene(), "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(fixed_node.GetID())
    segmentation_node.GetDisplayNode().SetVisibility(True)


def predict_nodes(fixed_node, moving_node, mask_node=None, transform_node=None, predictor=None, progress=None,
                  probabilities: bool = False) -> dict:
    """Predict the misalignment map of two volume nodes and create (or reuse by name) the output nodes."""
    if predictor is None:
        from .inference import MisalignmentPredictor
        predictor = MisalignmentPredictor.load()
    fixed = image_from_volume_node(fixed_node)
    result = predictor.predict(fixed, moving_image(moving_node, transform_node), mask=mask_image(mask_node, fixed_node),
                               progress=progress)
    return add_result_nodes(fixed_node, result, probabilities)


def start_prediction(fixed_node, moving_node, mask_node=None, transform_node=None, weights=None, device="auto",
                     progress=None, amp: bool = False):
    """Start predicting in a child process (inputs copied to files); finish with add_result_nodes(job.result())."""
    from .background import BackgroundPrediction
    return BackgroundPrediction(image_from_volume_node(fixed_node), moving_image(moving_node, transform_node),
                                mask_image(mask_node, fixed_node), weights=weights, device=device, progress=progress,
                                amp=amp)


def add_result_nodes(fixed_node, result, probabilities: bool = False) -> dict:
    """Create or update the output nodes from a prediction result; on failure, remove what was created."""
    scene = fixed_node.GetScene()
    if scene is None:
        raise InputError(f"the fixed volume {fixed_node.GetName()!r} was removed from the scene while predicting; "
                         "nothing was added: load it again and press Apply")
    names = output_names(fixed_node)
    created = []
    try:
        colors = class_color_table(scene, created)
        labels = _node(scene, "vtkMRMLLabelMapVolumeNode", names["labels"], created)
        _fill_labelmap(labels, result.labels, colors)
        segmentation = _node(scene, "vtkMRMLSegmentationNode", names["segmentation"], created)
        _fill_segmentation(segmentation, labels, fixed_node)
        table = _node(scene, "vtkMRMLTableNode", names["table"], created)
        _fill_table(table, result.summary)
        nodes = {"labels": labels, "colors": colors, "segmentation": segmentation, "table": table}
        if probabilities and result.probabilities is not None:
            for i, value in enumerate(L.CLASS_VALUES):
                key = f"probability_{L.CLASS_NAMES[value]}"
                nodes[key] = _node(scene, "vtkMRMLScalarVolumeNode", names[key], created)
                update_volume_node(nodes[key], sitk.VectorIndexSelectionCast(result.probabilities, i))
            nodes["confidence"] = _node(scene, "vtkMRMLScalarVolumeNode", names["confidence"], created)
            _fill_confidence(nodes["confidence"], result, confidence_color_table(scene, created))
        show_overlay(fixed_node, segmentation)
    except BaseException:
        for node in created:
            scene.RemoveNode(node)
        raise
    nodes["summary"] = result.summary
    return nodes
