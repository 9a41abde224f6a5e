"""Slicer scene side (no Qt): MRML volume nodes <-> SimpleITK images, prediction outputs as nodes, display."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from . import labels as L
from .errors import InputError
from .regions import regions_text

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
COLOR_TABLE_NAME = "RegistrationMisalignment colours"
OVERLAY_OPACITY = 0.5
CONFIDENCE_TABLE_NAME = "RegistrationMisalignment confidence"
CONFIDENCE_RAMP = ((0.267, 0.005, 0.329), (0.128, 0.567, 0.551), (0.993, 0.906, 0.144))  # viridis: unsure -> sure
CONFIDENCE_RANGE = (1.0 / 3.0, 1.0)  # the largest of three probabilities is at least 1/3
LEGEND_TITLES = {"segmentation": "Registration misalignment", "confidence": "Confidence of the map"}
REGION_POINT_COLOR = (0.3, 0.75, 1.0)  # light blue: seen on the red, yellow and green overlay alike
LEGEND_SIZE = (0.25, 0.4)  # fractions of the view: wide enough for the class names to be read in a 400-pixel view
FIXED_VOLUME_REFERENCE = "RegistrationMisalignmentFixedVolume"  # node reference role on output nodes: whose results
# they hold (a reference, unlike an attribute, follows the volume when a saved scene is imported into another)
OUTPUT_ATTRIBUTE = "RegistrationMisalignment.Output"  # on output nodes: which output (a key of `output_names`)
FIELD_SPACING_MM = 2.0  # a non-linear registration transform is sampled this finely for the engine (smooth at 2 mm)
MAX_FIELD_SAMPLES = 4_000_000  # ... and more coarsely over a larger image (96 MB of float64 vectors at most)


def output_names(fixed_node) -> dict:
    """Names of the nodes a prediction creates or reuses for a fixed volume."""
    base = f"{fixed_node.GetName()} misalignment"
    names = {"labels": base, "segmentation": f"{base} segments", "table": f"{base} statistics"}
    names.update({f"probability_{L.CLASS_NAMES[v]}": f"{base} probability {L.CLASS_NAMES[v]}" for v in L.CLASS_VALUES})
    names["confidence"] = f"{base} confidence"
    names["regions"] = f"{base} wrong regions"
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


def fixed_image(fixed_node) -> sitk.Image:
    """The fixed image; a fixed volume under a transform is refused (the map is made on the fixed volume's grid)."""
    if fixed_node.GetParentTransformNode() is not None:
        raise InputError(f"the fixed volume {fixed_node.GetName()!r} is under a transform; harden it (Data module: "
                         "right-click, Harden transform) or take it out of the transform, then press Apply")
    return image_from_volume_node(fixed_node)


def pair_images(fixed_node, moving_node, transform_node) -> tuple:
    """(fixed image, moving image as stored, fixed-to-moving transform or None) of two different volumes."""
    if moving_node.GetID() == fixed_node.GetID():
        raise InputError(f"the volume {fixed_node.GetName()!r} is chosen as both fixed and moving volume; choose the "
                         "registered moving volume as moving")
    fixed = fixed_image(fixed_node)
    return (fixed, *moving_input(moving_node, transform_node, fixed))


def moving_input(moving_node, transform_node, fixed: sitk.Image) -> tuple:
    """The moving image as stored and the fixed-to-moving transform (LPS) that puts it where the registration does:
    `transform_node`, or else the transform the volume is under (None without either). A linear one is passed on as
    an ITK affine transform; any other as a displacement field sampled over the fixed image, so that the engine
    resamples the image once. The user's node is untouched."""
    parent = moving_node.GetParentTransformNode()
    if transform_node is not None and parent is not None and parent.GetID() != transform_node.GetID():
        raise InputError(f"the moving volume {moving_node.GetName()!r} is under the transform {parent.GetName()!r} but "
                         f"{transform_node.GetName()!r} was chosen; choose that transform or none, or harden it first")
    chosen = transform_node or parent
    image = image_from_volume_node(moving_node)
    if chosen is None:
        return image, None
    if chosen.IsTransformToWorldLinear():
        return image, fixed_to_moving(chosen)
    return image, displacement_over(chosen, fixed)


def displacement_over(transform_node, fixed: sitk.Image) -> sitk.DisplacementFieldTransform:
    """The fixed-to-moving transform (LPS) of a non-linear transform node that maps the moving volume into the world,
    as a displacement field sampled along the fixed image's axes (`field_spacing`), one sample beyond its voxels on
    every side; ITK interpolates it linearly in between. Sampled a plane at a time."""
    from_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformFromWorld(from_world)
    spacing = field_spacing(fixed)
    size = field_size(fixed, spacing)
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    origin = np.asarray(fixed.GetOrigin()) - direction @ spacing
    plane = np.stack(np.meshgrid(np.arange(size[1]), np.arange(size[0]), indexing="ij")[::-1], -1).reshape(-1, 2)
    displacement = np.empty((size[2], size[1], size[0], 3))
    for z in range(size[2]):
        index = np.column_stack([plane, np.full(len(plane), z)])  # x fastest, as the image stores its voxels
        points = origin + (index * spacing) @ direction.T
        displacement[z] = (_transformed(from_world, points) - points).reshape(size[1], size[0], 3)
    field = sitk.GetImageFromArray(displacement, isVector=True)
    field.SetOrigin(tuple(origin))
    field.SetSpacing(tuple(spacing))
    field.SetDirection(fixed.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def field_spacing(fixed: sitk.Image) -> np.ndarray:
    """Sample spacing of a displacement field over the fixed image: FIELD_SPACING_MM (or the voxel size, if
    coarser), widened so that a large image gets at most MAX_FIELD_SAMPLES samples."""
    spacing = np.maximum(np.asarray(fixed.GetSpacing()), FIELD_SPACING_MM)
    while np.prod(field_size(fixed, spacing)) > MAX_FIELD_SAMPLES:
        spacing = spacing * 1.05
    return spacing


def field_size(fixed: sitk.Image, spacing: np.ndarray) -> np.ndarray:
    """Samples along each axis of a displacement field `spacing` apart that reach one sample beyond the fixed
    image's voxels on every side."""
    return np.ceil((np.asarray(fixed.GetSize()) - 1) * np.asarray(fixed.GetSpacing()) / spacing).astype(int) + 3


def _transformed(transform, points_lps: np.ndarray) -> np.ndarray:
    """Points (LPS, N x 3) mapped by a VTK transform that works in RAS."""
    source, moved = vtk.vtkPoints(), vtk.vtkPoints()
    source.SetData(numpy_support.numpy_to_vtk(points_lps @ RAS_FROM_LPS, deep=True))
    transform.TransformPoints(source, moved)
    return numpy_support.vtk_to_numpy(moved.GetData()) @ RAS_FROM_LPS


def fixed_to_moving(transform_node) -> sitk.AffineTransform:
    """The ITK (LPS) transform from fixed (world) points to the stored moving volume's points, for a linear transform
    node that maps the moving volume into the world."""
    to_world = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(to_world)
    matrix = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS
    lps = flip @ np.linalg.inv(matrix) @ flip
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(lps[:3, :3].ravel()))
    transform.SetTranslation(tuple(lps[:3, 3]))
    return transform


def image_in_world(node, transform_node=None) -> sitk.Image:
    """A volume node's image with `transform_node` (if any) hardened on a temporary copy; the node is not changed."""
    if transform_node is None:
        return image_from_volume_node(node)
    scene = node.GetScene()
    with temporary_nodes(scene):
        copy = scene.AddNewNodeByClass(node.GetClassName(), scene.GenerateUniqueName("misalignment input"))
        copy.Copy(node)
        image_data = vtk.vtkImageData()
        image_data.DeepCopy(node.GetImageData())
        copy.SetAndObserveImageData(image_data)
        copy.SetAndObserveTransformNodeID(transform_node.GetID())
        slicer.vtkSlicerTransformLogic().hardenTransform(copy)
        return image_from_volume_node(copy)


@contextmanager
def temporary_nodes(scene):
    """Remove every node added to the scene while the block runs (copies, exports and the display and colour nodes
    that come with them)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)


def remove_with_display_nodes(scene, node) -> None:
    """Remove a node and its display nodes (colour legends included), which the scene would otherwise keep."""
    displays = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
        if node.IsA("vtkMRMLDisplayableNode") else []
    for removed in displays + [node]:
        if removed is not None and scene.IsNodePresent(removed):
            scene.RemoveNode(removed)


def mask_image(mask_node, fixed_node):
    """The mask as a SimpleITK image: a label map volume (with the transform it is under), or all segments of a
    segmentation (hidden ones too) exported on the fixed grid."""
    if mask_node is None:
        return None
    if not mask_node.IsA("vtkMRMLSegmentationNode"):
        return image_in_world(mask_node, mask_node.GetParentTransformNode())
    segment_ids = vtk.vtkStringArray()
    mask_node.GetSegmentation().GetSegmentIDs(segment_ids)
    if segment_ids.GetNumberOfValues() == 0:
        raise InputError(f"the mask segmentation {mask_node.GetName()!r} has no segments; add one or choose no mask")
    scene = fixed_node.GetScene()
    with temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("misalignment mask"))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(mask_node, segment_ids, labelmap,
                                                                                      fixed_node):
            raise InputError(f"the mask segmentation {mask_node.GetName()!r} could not be exported onto the fixed "
                             "volume; check that its segments overlap it")
        return image_from_volume_node(labelmap)


def _node(scene, class_name: str, name: str, created: list):
    """The first node of `class_name` called `name`, or a new one (recorded in `created`)."""
    for node in _nodes_by_class(scene, class_name):
        if node.GetName() == name:
            return node
    node = scene.AddNewNodeByClass(class_name, name)
    created.append(node)
    return node


def _output_node(scene, class_name: str, key: str, fixed_node, created: list):
    """This fixed volume's output `key` (found by its reference to the volume, so that another volume's results or a
    user's node of the same name are never overwritten, and renamed after the volume's current name), or a new one
    (recorded in `created`)."""
    name = output_names(fixed_node)[key]
    node = owned_output(scene, class_name, key, fixed_node)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(OUTPUT_ATTRIBUTE, key)
        node.SetNodeReferenceID(FIXED_VOLUME_REFERENCE, fixed_node.GetID())
        created.append(node)
    node.SetName(name)
    return node


def owned_output(scene, class_name: str, key: str, fixed_node):
    """The node of `class_name` holding output `key` of `fixed_node`, or None."""
    for node in _nodes_by_class(scene, class_name):
        if node.GetAttribute(OUTPUT_ATTRIBUTE) == key and _owner_id(node) == fixed_node.GetID():
            return node
    return None


def _owner_id(node):
    """The ID of the fixed volume whose results a node holds, or None for any other node."""
    return node.GetNodeReferenceID(FIXED_VOLUME_REFERENCE)


def output_segmentation(fixed_node):
    """The segmentation of the latest results for this fixed volume, or None (what the opacity slider acts on)."""
    return owned_output(fixed_node.GetScene(), "vtkMRMLSegmentationNode", "segmentation", fixed_node)


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
    table.SetColorDefined(L.NOT_EVALUATED, False)  # transparent, and left out of the colour legend
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


def _color_confidence(node, colors, created: list) -> None:
    """Display a confidence volume coloured from 1/3 (unsure) to 1 (sure), and nothing where the map is not evaluated
    (0 there, below the threshold), with its colour legend."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(colors.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*CONFIDENCE_RANGE)
    display.AutoThresholdOff()
    display.SetThreshold(CONFIDENCE_RANGE[0] / 2, CONFIDENCE_RANGE[1])
    display.ApplyThresholdOn()
    show_color_legend(display, LEGEND_TITLES["confidence"], created)


def show_color_legend(display_node, title: str, created: list):
    """Slicer's colour legend of a displayed output (its colour table's names or range), in the slice views that show
    the output (not in 3-D views, where the overlay is not drawn); reused on later runs, a new one recorded in
    `created`."""
    legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(display_node)
    if legend is None:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(display_node)
        created.append(legend)
    legend.SetTitleText(title)
    legend.SetSize(*LEGEND_SIZE)
    legend.SetVisibility3D(False)
    return legend


def _fill_labelmap(node, labels: sitk.Image, colors) -> None:
    """Put the label image in a label map node that displays with the class colours."""
    update_volume_node(node, labels)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())


def _fill_segmentation(segmentation_node, labelmap_node, fixed_node, colors, created: list) -> None:
    """Three named, coloured segments in class order, with the class names as IDs (empty ones included), from the
    label map, shown as a 2-D overlay with a colour legend of the classes."""
    segmentation = segmentation_node.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(fixed_node)
    segment_ids = vtk.vtkStringArray()  # label value v goes to the v-th of these
    for value in L.CLASS_VALUES:
        segmentation.AddEmptySegment(L.CLASS_NAMES[value], L.display_name(value), L.CLASS_COLORS[value])
        segment_ids.InsertNextValue(L.CLASS_NAMES[value])
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap_node, segmentation_node,
                                                                            segment_ids)
    if segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    display = segmentation_node.GetDisplayNode()
    display.SetVisibility2DFill(True)
    display.SetOpacity2DFill(OVERLAY_OPACITY)
    display.SetAndObserveColorNodeID(colors.GetID())  # the segments' colours and names, for the legend to show
    show_color_legend(display, LEGEND_TITLES["segmentation"], created)


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
    confidence, the regions called wrong (RAS, as Slicer shows coordinates), and one line per warning the prediction
    gave (a map to trust less)."""
    text = "  ".join(f"{name}: {_millilitres(c['ml'])} mL ({_percent(c['fraction'])} %)"
                     for name, c in summary["classes"].items())
    confidence = summary.get("mean_confidence")
    if confidence is not None:
        text += f"  mean confidence: {100 * confidence:.0f} %"
    lines = [text]
    if "wrong_regions" in summary:
        lines.append(regions_text(summary, ras=True))
    return "\n".join(lines + [f"Warning: {warning}" for warning in summary.get("warnings") or []])


def _fill_region_points(node, summary: dict) -> None:
    """One locked control point at the centre of each of the largest regions called wrong, named with its rank and
    volume, so that a click in the Markups module's list jumps the slice views there."""
    node.RemoveAllControlPoints()
    for rank, region in enumerate(summary.get("wrong_regions") or [], start=1):
        ras = RAS_FROM_LPS @ np.asarray(region["centre_lps_mm"])
        node.AddControlPoint(vtk.vtkVector3d(*ras), f"wrong {rank}: {_millilitres(region['ml'])} mL")
    node.SetLocked(True)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetSelectedColor(*REGION_POINT_COLOR)


def _millilitres(ml: float) -> str:
    """A volume with one decimal below 10 mL, and "< 0.1" below 0.05 mL (a small region marked wrong must not read
    as 0)."""
    if 0 < ml < 0.05:
        return "< 0.1"
    return f"{ml:.1f}" if ml < 10 else f"{ml:.0f}"


def _percent(fraction: float) -> str:
    """A share in percent with one decimal below 1 % and above 99 % (0.4 % is not 0, 99.6 % is not 100)."""
    if 0 < fraction < 0.001:
        return "< 0.1"
    return f"{100 * fraction:.1f}" if 0 < fraction < 0.01 or 0.99 < fraction < 1 else f"{100 * fraction:.0f}"


def show_overlay(fixed_node, segmentation_node) -> None:
    """Fixed volume as background of every slice view; the segmentation is displayed on top, and the maps of other
    fixed volumes are hidden (they would lie over this volume)."""
    scene = fixed_node.GetScene()
    for composite in _nodes_by_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(fixed_node.GetID())
    for other in _nodes_by_class(scene, "vtkMRMLSegmentationNode"):
        owner = _owner_id(other)
        if owner and owner != fixed_node.GetID() and other.GetDisplayNode() is not None:
            other.GetDisplayNode().SetVisibility(False)
    segmentation_node.GetDisplayNode().SetVisibility(True)


def predict_nodes(fixed_node, moving_node, mask_node=None, transform_node=None, predictor=None, progress=None,
                  probabilities: bool = False) -> dict:
    """Predict the misalignment map of two volume nodes and create the output nodes (or update this volume's)."""
    if predictor is None:
        from .inference import MisalignmentPredictor
        predictor = MisalignmentPredictor.load()
    fixed, moving, transform = pair_images(fixed_node, moving_node, transform_node)
    result = predictor.predict(fixed, moving, mask=mask_image(mask_node, fixed_node), progress=progress,
                               transform=transform)
    return add_result_nodes(fixed_node, result, probabilities)


def start_prediction(fixed_node, moving_node, mask_node=None, transform_node=None, weights=None, device="auto",
                     progress=None, amp: bool = False, probabilities: bool = False):
    """Start predicting in a child process (inputs copied to files); finish with add_result_nodes(job.result())."""
    from .background import BackgroundPrediction
    fixed, moving, transform = pair_images(fixed_node, moving_node, transform_node)
    return BackgroundPrediction(fixed, moving, mask_image(mask_node, fixed_node), weights=weights, device=device,
                                progress=progress, amp=amp, transform=transform, probabilities=probabilities)


def add_result_nodes(fixed_node, result, probabilities: bool = False) -> dict:
    """Create or update the output nodes from a prediction result; on failure, remove what was created. The images
    are all made before any node is touched, so that a failure there (e.g. out of memory) leaves earlier results
    whole."""
    scene = fixed_node.GetScene()
    if scene is None:
        raise InputError(f"the fixed volume {fixed_node.GetName()!r} was removed from the scene while predicting; "
                         "nothing was added: load it again and press Apply")
    uncertainty = [f"probability_{L.CLASS_NAMES[value]}" for value in L.CLASS_VALUES] + ["confidence"]
    images = {}
    if probabilities and result.probabilities is not None:
        images = {key: sitk.VectorIndexSelectionCast(result.probabilities, i) for i, key in enumerate(uncertainty[:-1])}
        images["confidence"] = confidence_image(result)
    created = []
    try:
        colors = class_color_table(scene, created)
        labels = _output_node(scene, "vtkMRMLLabelMapVolumeNode", "labels", fixed_node, created)
        _fill_labelmap(labels, result.labels, colors)
        segmentation = _output_node(scene, "vtkMRMLSegmentationNode", "segmentation", fixed_node, created)
        _fill_segmentation(segmentation, labels, fixed_node, colors, created)
        table = _output_node(scene, "vtkMRMLTableNode", "table", fixed_node, created)
        _fill_table(table, result.summary)
        regions = _output_node(scene, "vtkMRMLMarkupsFiducialNode", "regions", fixed_node, created)
        _fill_region_points(regions, result.summary)
        nodes = {"labels": labels, "colors": colors, "segmentation": segmentation, "table": table, "regions": regions}
        for key, image in images.items():
            nodes[key] = _output_node(scene, "vtkMRMLScalarVolumeNode", key, fixed_node, created)
            update_volume_node(nodes[key], image)
        if images:
            _color_confidence(nodes["confidence"], confidence_color_table(scene, created), created)
        show_overlay(fixed_node, segmentation)
    except BaseException:
        for node in created:
            remove_with_display_nodes(scene, node)
        raise
    if not images:  # an earlier run's uncertainty volumes would no longer match this map
        for key in uncertainty:
            stale = owned_output(scene, "vtkMRMLScalarVolumeNode", key, fixed_node)
            if stale is not None:
                remove_with_display_nodes(scene, stale)
    nodes["summary"] = result.summary
    return nodes
