"""Dense tiled prediction equals the paper's per-patch evaluation; predict and predict_points agree; out-of-memory
fallback; probabilities built on demand."""
import copy
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.devices import in_convolution_layout
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.inference import (MisalignmentPredictor, OutputBox, boxes_over, occupied_tiles,
                                                   smaller_tile, sub_boxes)
from RegistrationMisalignmentLib.model import input_size
from RegistrationMisalignmentLib.morphology import box_dilate
from RegistrationMisalignmentLib.preprocessing import crop_to_s1, mask_region_s1, s1_neighbours_of_mask, to_fixed_grid
from RegistrationMisalignmentLib.pyramid import context_margin
from RegistrationMisalignmentLib.regions import wrong_regions


def test_dense_tiles_equal_per_patch_evaluation_at_random_points(small_pair, tiny_predictor):
    pair = to_fixed_grid(small_pair.fixed, small_pair.moving)
    start, stop = mask_region_s1(small_pair.fixed, pair.mask)
    tile = 24
    stop = start + tile * np.ceil((stop - start) / tile).astype(int)
    prepared = crop_to_s1(pair, (start, stop), context_margin(tiny_predictor.model.config, tile))
    dense = tiny_predictor.dense_probabilities(prepared, tile)
    rng = np.random.default_rng(0)
    computed = np.argwhere(dense.sum(0) > 0)  # voxels of tiles that touch the mask
    chosen = computed[rng.choice(len(computed), 150, replace=False)]
    per_patch = tiny_predictor.interpolate_blocks(prepared, chosen[:, ::-1].astype(float))
    from_tiles = dense[:, chosen[:, 0], chosen[:, 1], chosen[:, 2]].T
    assert np.abs(per_patch - from_tiles).max() <= 1e-4
    assert np.allclose(per_patch.sum(1), 1.0, atol=1e-5)


def test_predict_and_predict_points_agree_at_voxel_centres(small_pair, tiny_predictor):
    result = tiny_predictor.predict(small_pair.fixed, small_pair.moving)
    labels = sitk.GetArrayViewFromImage(result.labels)
    probs = sitk.GetArrayViewFromImage(result.probabilities)
    rng = np.random.default_rng(1)
    inside = np.argwhere(labels > 0)
    outside = np.argwhere(labels == 0)
    chosen = np.concatenate([inside[rng.choice(len(inside), 100, replace=False)],
                             outside[rng.choice(len(outside), 20, replace=False)]])
    points = np.array([small_pair.fixed.TransformIndexToPhysicalPoint([int(i) for i in c[::-1]]) for c in chosen])
    classes, point_probs = tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, points)
    assert np.array_equal(classes, labels[tuple(chosen.T)])
    assert np.abs(point_probs[:100] - probs[tuple(chosen[:100].T)]).max() <= 1e-4


@pytest.mark.parametrize("spacing", [(0.7, 0.7, 0.625), (0.4, 1.3, 2.5)])
def test_s1_neighbours_are_the_interpolation_neighbours_of_every_mask_voxel(spacing):
    rng = np.random.default_rng(5)
    mask = rng.random((23, 30, 27)) > 0.995  # zyx, scattered single voxels
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(spacing)
    start, size = np.array([-1, 2, 0]), np.array([40, 40, 64])  # global S1 start and size, xyz
    expected = np.zeros(size[::-1], dtype=bool)
    for z, y, x in np.argwhere(mask):
        below = np.floor(np.array([x, y, z]) * np.array(spacing) - start).astype(int)
        reach = [slice(max(b, 0), max(b + 2, 0)) for b in below[::-1]]
        expected[tuple(reach)] = True
    assert np.array_equal(s1_neighbours_of_mask(image, start, size), expected)
    assert not s1_neighbours_of_mask(image * 0, start, size).any()


def test_a_mask_thinner_than_1_mm_on_a_fine_grid_is_computed_like_its_points(small_pair, tiny_predictor):
    """One axial slice of a 0.625 mm scan: nearest-neighbour sampling at 1 mm can miss it (all of it was "correct",
    with probabilities 0, before)."""
    reference = sitk.Image([64, 64, 40], sitk.sitkInt16)
    reference.SetSpacing((0.7, 0.7, 0.625))
    centre = small_pair.fixed.TransformContinuousIndexToPhysicalPoint([s / 2 for s in small_pair.fixed.GetSize()])
    reference.SetOrigin(tuple(np.array(centre) - [22.4, 22.4, 12.5]))
    fixed, moving = (sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, -1024, sitk.sitkInt16)
                     for image in (small_pair.fixed, small_pair.moving))
    for z in (20, 21):  # slice 20 lies nearest to no 1 mm point
        thin = np.zeros(fixed.GetSize()[::-1], dtype=np.uint8)
        thin[z, 10:54, 10:54] = 1
        mask = sitk.GetImageFromArray(thin)
        mask.CopyInformation(fixed)
        probabilities = sitk.GetArrayFromImage(tiny_predictor.predict(fixed, moving, mask=mask).probabilities)
        assert np.allclose(probabilities[z, 10:54, 10:54].sum(-1), 1.0, atol=1e-5)
        point = fixed.TransformIndexToPhysicalPoint((30, 30, z))
        _, at_point = tiny_predictor.predict_points(fixed, moving, [point], mask=mask)
        assert np.abs(at_point[0] - probabilities[z, 30, 30]).max() <= 1e-4


def test_result_is_on_the_fixed_grid_with_a_consistent_summary(small_pair, tiny_predictor):
    calls = []
    result = tiny_predictor.predict(small_pair.fixed, small_pair.moving, progress=lambda f, m: calls.append(f))
    for image in (result.labels, result.probabilities):
        assert image.GetSize() == small_pair.fixed.GetSize()
        assert np.allclose(image.GetOrigin(), small_pair.fixed.GetOrigin())
        assert np.allclose(image.GetSpacing(), small_pair.fixed.GetSpacing())
    assert result.labels.GetPixelID() == sitk.sitkUInt8
    assert result.probabilities.GetNumberOfComponentsPerPixel() == 3
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    summary = result.summary
    for value in L.CLASS_VALUES:
        entry = summary["classes"][L.CLASS_NAMES[value]]
        assert entry["voxels"] == int((labels == value).sum())
        assert entry["ml"] == entry["voxels"] * 0.001
    assert summary["mask_voxels"] == int((labels > 0).sum())
    largest = sitk.GetArrayViewFromImage(result.probabilities).max(-1)
    assert summary["mean_confidence"] == pytest.approx(float(largest[labels > 0].mean()), abs=1e-6)
    assert sum(c["fraction"] for c in summary["classes"].values()) == 1.0 or abs(
        sum(c["fraction"] for c in summary["classes"].values()) - 1.0) < 1e-9
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)
    assert summary["timings_s"]["total"] >= summary["timings_s"]["network"] > 0
    regions = wrong_regions(result.labels)
    assert summary["wrong_region_count"] == regions["wrong_region_count"]
    assert summary["wrong_regions"] == regions["wrong_regions"]
    assert sum(r["voxels"] for r in regions["wrong_regions"]) <= summary["classes"]["wrong"]["voxels"]


def test_a_user_mask_limits_the_evaluated_region(small_pair, tiny_predictor):
    box = sitk.Image(small_pair.fixed.GetSize(), sitk.sitkUInt8)
    box.CopyInformation(small_pair.fixed)
    box[20:40, 30:50, 40:60] = 1
    result = tiny_predictor.predict(small_pair.fixed, small_pair.moving, mask=box)
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert np.array_equal(labels > 0, sitk.GetArrayViewFromImage(box) > 0)


def test_anisotropic_fixed_and_moving_on_another_grid(small_pair, tiny_predictor):
    fixed = small_pair.fixed
    thick = sitk.Resample(fixed, [fixed.GetSize()[0], fixed.GetSize()[1], fixed.GetSize()[2] // 2],
                          sitk.Transform(), sitk.sitkLinear, fixed.GetOrigin(), (1.0, 1.0, 2.0),
                          fixed.GetDirection(), -1024, fixed.GetPixelID())
    result = tiny_predictor.predict(thick, small_pair.moving)
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert result.labels.GetSize() == thick.GetSize() and (labels > 0).sum() > 1000
    assert len(result.summary["warnings"]) == 1 and "another grid" in result.summary["warnings"][0]
    assert tiny_predictor.predict(small_pair.fixed, small_pair.moving).summary["warnings"] == []
    chosen = np.argwhere(labels > 0)[::97][:40]
    points = np.array([thick.TransformIndexToPhysicalPoint([int(i) for i in c[::-1]]) for c in chosen])
    classes, _ = tiny_predictor.predict_points(thick, small_pair.moving, points)
    assert np.array_equal(classes, labels[tuple(chosen.T)])


def test_device_out_of_memory_halves_the_tile_and_gives_the_same_result(small_pair, tiny_model, monkeypatch):
    predictor = MisalignmentPredictor(tiny_model, device="cpu", max_memory_gb=0.2)
    normal = predictor.predict(small_pair.fixed, small_pair.moving)
    assert normal.summary["tile_size"] > 16
    largest = input_size(tiny_model.config, 1, 16)
    forward, seen = predictor.model.forward, []

    def limited(inputs):
        seen.append(inputs[1].shape[-1])
        if inputs[1].shape[-1] > largest:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(inputs)

    monkeypatch.setattr(predictor.model, "forward", limited)
    fallback = predictor.predict(small_pair.fixed, small_pair.moving)
    assert max(seen) > largest and seen[-1] <= largest  # it failed once, then went on with smaller tiles
    assert np.array_equal(sitk.GetArrayViewFromImage(fallback.labels), sitk.GetArrayViewFromImage(normal.labels))
    difference = np.abs(sitk.GetArrayViewFromImage(fallback.probabilities)
                        - sitk.GetArrayViewFromImage(normal.probabilities)).max()
    assert difference <= 1e-5

    def always_out_of_memory(inputs):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(predictor.model, "forward", always_out_of_memory)
    with pytest.raises(InputError, match="ran out of memory even with 8"):
        predictor.predict(small_pair.fixed, small_pair.moving)


def test_a_gpu_without_room_for_the_1mm_volume_gets_it_from_host_memory(small_pair, tiny_model, monkeypatch):
    from RegistrationMisalignmentLib import inference
    pair = to_fixed_grid(small_pair.fixed, small_pair.moving)
    region = mask_region_s1(small_pair.fixed, pair.mask)
    expected = crop_to_s1(pair, region, 16).volume
    devices = []

    def crop_without_gpu_memory(pair, region, margin, device="cpu"):
        devices.append(torch.device(device).type)
        if torch.device(device).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return crop_to_s1(pair, region, margin, device)

    monkeypatch.setattr(inference, "crop_to_s1", crop_without_gpu_memory)
    predictor = MisalignmentPredictor(tiny_model, device="cpu")
    predictor.device = torch.device("cuda")  # as the predictor of a GPU machine sees it; no GPU work follows
    prepared = predictor._on_s1(pair, region, 16)
    assert devices == ["cuda", "cpu"] and prepared.volume.device.type == "cpu"
    assert torch.equal(prepared.volume, expected)


def test_sub_boxes_cover_a_box_once_with_corners_on_the_pyramid_grid():
    for size, limit in (((72, 72, 72), 32), ((40, 16, 24), 16), ((24, 8, 64), 8), ((32, 32, 32), 32)):
        covered = np.zeros(size, dtype=int)
        for piece in sub_boxes(OutputBox(np.zeros(3, dtype=int), size), limit):
            assert np.all(piece.corner % 8 == 0) and max(piece.size) <= limit and all(n % 8 == 0 for n in piece.size)
            covered[piece.slices()] += 1
        assert np.all(covered == 1)
    assert [smaller_tile(t) for t in (128, 72, 24, 16, 8)] == [64, 32, 8, 8, 8]


def test_boxes_are_tiles_shrunk_to_the_blocks_of_their_needed_voxels():
    needed = np.zeros((48, 48, 24), dtype=bool)
    needed[3, 30, 5] = needed[17, 40, 20] = True  # in the tile at (0, 24, 0): blocks 0-2, 3-5 (of 8 voxels), 0-2
    needed[40, 2:4, 9] = True  # in the tile at (24, 0, 0)
    boxes = boxes_over(needed, 24)
    assert [(b.corner.tolist(), b.size) for b in boxes] == [([0, 24, 0], (24, 24, 24)), ([40, 0, 8], (8, 8, 8))]
    needed[3, 30, 5] = False
    assert [(b.corner.tolist(), b.size) for b in boxes_over(needed, 24)][0] == ([16, 40, 16], (8, 8, 8))
    whole = [(b.corner.tolist(), b.size) for b in boxes_over(needed, 24, shrink=False)]  # as on CUDA: one shape
    assert whole == [([0, 24, 0], (24, 24, 24)), ([24, 0, 0], (24, 24, 24))]


def test_the_cpu_shrinks_boxes_and_cuda_keeps_whole_tiles(tiny_model):
    needed = np.zeros((48, 48, 24), dtype=bool)
    needed[40, 2:4, 9] = True
    on_cpu = MisalignmentPredictor(tiny_model, "cpu")
    assert [b.size for b in on_cpu.boxes_over_needed(needed, 24)] == [(8, 8, 8)]
    on_cpu.device = torch.device("cuda")  # the choice reads only the device type: no GPU needed to check it
    assert [b.size for b in on_cpu.boxes_over_needed(needed, 24)] == [(24, 24, 24)]


def test_a_box_gives_the_probabilities_of_the_tile_around_it(small_pair, tiny_predictor):
    """The network reads each axis on its own: the probabilities of a box equal those of the same voxels computed
    as part of a whole tile (float32 summation order aside)."""
    from RegistrationMisalignmentLib.pyramid import build_pyramid
    prepared, tile = tiny_predictor.prepare(small_pair.fixed, small_pair.moving)
    pyramid = build_pyramid(prepared.volume)
    start = prepared.region_start[::-1]
    whole = tiny_predictor.tile_probabilities(pyramid, start, tile)
    part = tiny_predictor.tile_probabilities(pyramid, start + np.array([8, 0, 8]), (8, tile, tile - 8))
    assert part.shape == (3, 8, tile, tile - 8)
    assert torch.allclose(part, whole[:, 8:16, :, 8:], atol=1e-5)


def test_probabilities_are_built_only_when_asked_for(small_pair, tiny_predictor):
    result = tiny_predictor.predict(small_pair.fixed, small_pair.moving)
    assert callable(result._probabilities)
    probabilities = result.probabilities
    assert result.probabilities is probabilities and probabilities.GetNumberOfComponentsPerPixel() == 3
    assert probabilities.GetPixelID() == sitk.sitkVectorFloat32
    inside = sitk.GetArrayViewFromImage(result.labels) > 0
    array = sitk.GetArrayViewFromImage(probabilities)
    assert np.all(array[~inside] == 0.0) and np.allclose(array[inside].sum(-1), 1.0, atol=1e-5)


def test_mixed_precision_stays_within_the_stated_tolerance(small_pair, tiny_model):
    exact = MisalignmentPredictor(tiny_model, device="cpu").predict(small_pair.fixed, small_pair.moving)
    amp = MisalignmentPredictor(tiny_model, device="cpu", amp=True).predict(small_pair.fixed, small_pair.moving)
    assert (exact.summary["precision"], amp.summary["precision"]) == ("float32", "bfloat16 autocast")
    difference = np.abs(sitk.GetArrayViewFromImage(amp.probabilities) - sitk.GetArrayViewFromImage(exact.probabilities))
    labels = sitk.GetArrayViewFromImage(exact.labels)
    same = sitk.GetArrayViewFromImage(amp.labels)[labels > 0] == labels[labels > 0]
    print(f"bfloat16 autocast: max probability difference {difference.max():.3g}, same class {same.mean():.4f}")
    assert 0 < difference.max() <= 0.05
    assert same.mean() >= 0.98


def test_cpu_predictor_convolves_channels_last_with_the_default_layouts_result(tiny_model):
    torch.manual_seed(1)
    inputs = {lv: torch.randn(2, 3, *(input_size(tiny_model.config, lv, 16),) * 3) for lv in (4, 2, 1)}
    reference = copy.deepcopy(tiny_model).to(memory_format=torch.contiguous_format)
    predictor = MisalignmentPredictor(copy.deepcopy(tiny_model), device="cpu")
    assert all(w.is_contiguous(memory_format=torch.channels_last_3d)
               for w in predictor.model.parameters() if w.dim() == 5)
    with torch.no_grad():
        expected = reference(inputs)[1]
        got = predictor.model(in_convolution_layout(inputs))[1]
    assert got.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(got, expected, atol=1e-5)


def test_tiles_touching_the_mask_are_those_a_max_pooling_finds():
    """The cheap boolean dilation and tile test choose the same tiles as 5^3 and tile-sized max pooling."""
    rng = np.random.default_rng(3)
    mask = rng.random((40, 33, 48)) > 0.997
    pooled = F.max_pool3d(torch.from_numpy(mask.astype(np.float32))[None, None], 5, stride=1, padding=2)[0, 0]
    assert np.array_equal(box_dilate(mask, 2), pooled.numpy() > 0)
    tiles = F.max_pool3d(pooled[None, None], 8, stride=8)[0, 0] > 0
    assert np.array_equal(occupied_tiles(box_dilate(mask, 2), 8), tiles.numpy())
    assert 0 < occupied_tiles(box_dilate(mask, 2), 8).sum() < tiles.numel()


def test_the_difference_to_the_cpu_is_read_over_the_right_box(small_pair, tiny_predictor):
    """The GPU benchmark's check against the CPU: 0 for the CPU's own map, the change when that box is altered."""
    from RegistrationMisalignmentLib.benchmark import difference_to_cpu
    from RegistrationMisalignmentLib.pyramid import build_pyramid
    prepared, tile = tiny_predictor.prepare(small_pair.fixed, small_pair.moving)
    pyramid = build_pyramid(prepared.volume)
    probs = tiny_predictor.dense_probabilities(prepared, tile, pyramid=pyramid)
    box = tiny_predictor.boxes_touching_mask(prepared, tile)[-1]
    assert difference_to_cpu(tiny_predictor, prepared, pyramid, box, probs) <= 1e-6
    z, y, x = box.corner
    probs[1, z + box.size[0] - 1, y, x + 3] += 0.25
    assert difference_to_cpu(tiny_predictor, prepared, pyramid, box, probs) == pytest.approx(0.25, abs=1e-5)


def test_voxels_without_moving_data_are_not_evaluated(small_pair, tiny_predictor):
    fixed = small_pair.fixed
    cut = fixed.GetSize()[2] // 2  # the moving image keeps the slices from here on
    full = sitk.GetArrayFromImage(tiny_predictor.predict(fixed, small_pair.moving).labels)
    result = tiny_predictor.predict(fixed, small_pair.moving[:, :, cut:])
    labels = sitk.GetArrayViewFromImage(result.labels)
    assert (full[:cut] > 0).any() and (full[cut:] > 0).any()
    assert not labels[:cut].any()
    assert np.array_equal(labels[cut:] > 0, full[cut:] > 0)
    assert result.summary["mask_voxels"] == int((labels > 0).sum())
    covered = 100 * (full[cut:] > 0).sum() / (full > 0).sum()
    assert [w for w in result.summary["warnings"] if "covers only" in w] == [
        f"the moving image covers only {covered:.0f} % of the region to evaluate (the lungs, or the mask); the rest is "
        "labelled 0, not evaluated"]
    uncovered = np.argwhere(full[:cut] > 0)[0]
    point = fixed.TransformIndexToPhysicalPoint([int(i) for i in uncovered[::-1]])
    classes, _ = tiny_predictor.predict_points(fixed, small_pair.moving[:, :, cut:], [point])
    assert classes.tolist() == [L.NOT_EVALUATED]
    lower_box = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    lower_box.CopyInformation(fixed)
    lower_box[:, :, :cut] = 1
    with pytest.raises(InputError, match="does not cover the region to evaluate"):
        tiny_predictor.predict(fixed, small_pair.moving[:, :, cut:], mask=lower_box)


def test_point_queries_check_their_points(small_pair, tiny_predictor):
    fixed, moving = small_pair.fixed, small_pair.moving
    classes, probabilities = tiny_predictor.predict_points(fixed, moving, [])
    assert classes.shape == (0,) and probabilities.shape == (0, 3)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    classes, probabilities = tiny_predictor.predict_points(fixed, moving, centre)  # one flat x, y, z triple
    assert classes.shape == (1,) and probabilities.shape == (1, 3)
    for points, message in [([centre, (5000.0, 5000.0, 5000.0)], r"point 2 at \(5000.0, 5000.0, 5000.0\) mm lies "
                                                                  "outside the image"),
                            ([centre, (np.nan, 0.0, 0.0)], "NaN"),
                            ([(1.0, 2.0)], "x, y, z triples"),
                            ([("a", "b", "c")], "x, y, z triples")]:
        with pytest.raises(InputError, match=message):
            tiny_predictor.predict_points(fixed, moving, points)


def test_a_transform_of_another_dimension_is_refused(small_pair, tiny_predictor):
    with pytest.raises(InputError, match="the transform is 2-D"):
        tiny_predictor.predict(small_pair.fixed, small_pair.moving, transform=sitk.TranslationTransform(2, (1.0, 1.0)))


def test_the_first_prediction_on_a_gpu_warms_up_in_a_thread_without_changing_the_map(small_pair, tiny_model,
                                                                                      monkeypatch):
    import RegistrationMisalignmentLib.inference as inference
    plain = MisalignmentPredictor(tiny_model, "cpu").predict(small_pair.fixed, small_pair.moving)
    threads = []
    real_warm_up = inference.warm_up

    def recorded(*args):
        threads.append(threading.current_thread())
        real_warm_up(*args)

    monkeypatch.setattr(inference, "warm_up", recorded)
    warming = MisalignmentPredictor(tiny_model, "cpu")
    warming._before_first_map = warming._warm_up  # as on CUDA (the thread runs the same code on any device)
    first = warming.predict(small_pair.fixed, small_pair.moving)
    warming.predict(small_pair.fixed, small_pair.moving)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()  # once, beside the masks
    assert np.array_equal(sitk.GetArrayViewFromImage(first.labels), sitk.GetArrayViewFromImage(plain.labels))


def test_a_warm_up_started_early_runs_once_in_a_thread_and_the_first_map_waits_for_it(small_pair, tiny_model,
                                                                                       monkeypatch):
    import RegistrationMisalignmentLib.inference as inference
    warm_ups = []

    def slow(*args):
        time.sleep(0.3)
        warm_ups.append(threading.current_thread())

    monkeypatch.setattr(inference, "warm_up", slow)
    predictor = MisalignmentPredictor(tiny_model, "cpu")
    predictor.start_warming_up()
    assert not warm_ups and predictor._before_first_map is None  # the CPU has nothing to warm up
    predictor._before_first_map = predictor._warm_up  # as on CUDA
    predictor.start_warming_up()
    predictor.start_warming_up()  # once started, nothing more
    predictor.predict(small_pair.fixed, small_pair.moving, mask=small_pair.fixed > -400)  # no network beside
    assert len(warm_ups) == 1 and warm_ups[0] is not threading.main_thread()  # once, in a thread
    predictor.predict(small_pair.fixed, small_pair.moving)
    assert len(warm_ups) == 1


def test_a_failed_warm_up_leaves_the_map_to_report_or_succeed(small_pair, tiny_model, monkeypatch):
    import RegistrationMisalignmentLib.inference as inference

    def failing(*args):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(inference, "warm_up", failing)
    predictor = MisalignmentPredictor(tiny_model, "cpu")
    predictor._before_first_map = predictor._warm_up
    assert predictor.predict(small_pair.fixed, small_pair.moving).summary["mask_voxels"] > 0


def test_a_voxels_probabilities_do_not_depend_on_the_region_or_the_tiles_it_is_computed_in(small_pair, tiny_model):
    """A map computed over a region larger than the lungs, in other tiles, gives the lungs the same probabilities:
    what would let a GPU start the network before the lung mask is finished."""
    import dataclasses
    pair = to_fixed_grid(small_pair.fixed, small_pair.moving)
    wider = dataclasses.replace(pair, mask=sitk.BinaryDilate(pair.mask, [6, 6, 6]))
    runs = []
    for grid, memory_gb in ((pair, 2.0), (wider, 0.02)):
        predictor = MisalignmentPredictor(tiny_model, "cpu", max_memory_gb=memory_gb)
        prepared, tile = predictor.prepare_on_s1(grid)
        runs.append((prepared, tile, predictor.dense_probabilities(prepared, tile)))
    (lungs, lungs_tile, expected), (region, region_tile, probs) = runs
    offset = (lungs.crop_start + lungs.region_start) - (region.crop_start + region.region_start)  # xyz
    assert lungs_tile != region_tile and np.all(offset >= 0) and np.any(offset > 0)
    common = [min(n, m - o) for n, m, o in zip(expected.shape[1:], probs.shape[1:], offset[::-1])]  # tile padding
    same_voxels = probs[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset[::-1], common))]
    inside = tuple(slice(0, n) for n in common)
    needed = MisalignmentPredictor(tiny_model, "cpu").needed_voxels(lungs)[inside]
    assert needed.sum() == MisalignmentPredictor(tiny_model, "cpu").needed_voxels(lungs).sum()  # all compared
    np.testing.assert_allclose(same_voxels[:, needed], expected[(slice(None),) + inside][:, needed], atol=1e-6)
