"""MisalignmentPredictor: dense tiled inference over the mask and point queries (the paper's per-patch way)."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import numbers
import time
from typing import NamedTuple, Optional

import numpy as np
import SimpleITK as sitk
import torch

from . import labels as L
from .beside_masks import WorkBesideMasks
from .checkpoint import load_model, released_weights_path, sha256_of
from .devices import CONVOLUTION_LAYOUT, in_convolution_layout, resolve_device, synchronize
from .errors import CapturedWarnings, InputError, described
from .fixed_grid import MaskedProbabilities
from .imageio import image_argument, mask_like
from .landmarks import check_inside, physical_points
from .masks import air_in_torso, bounding_box
from .model import MisalignmentNet, check_output_size, folded_for_inference, input_size
from .morphology import box_dilate, box_erode
from .orientation import in_network_orientation
from .preprocessing import (BLOCK, PairOnFixedGrid, PreparedPair, crop_to_s1, points_region_s1, mask_region_s1,
                            s1_neighbours_of_mask, to_fixed_grid)
from .pyramid import batch_tiles, build_pyramid, context_margin
from .regions import wrong_regions
from .transforms import transform_argument

DEFAULT_MAX_MEMORY_GB = 2.0
MAX_TILE = 128
MAX_TILE_CUDA = 256  # a GPU pays per tile launched, not per voxel: fewer, larger tiles
CUDA_MEMORY_SHARE = 0.5  # of the GPU memory free at the start of a prediction, for the tiles' activations
MIN_TILE = 8
PER_PATCH_BATCH = 16  # blocks evaluated together the per-patch way


class PredictionResult:
    """Dense result on the fixed grid: labels, class probabilities and the summary."""

    def __init__(self, labels: sitk.Image, probabilities, summary: dict):
        """`probabilities`: the image, None, or a function that builds it on first access (saves its memory)."""
        self.labels = labels
        self._probabilities = probabilities
        self.summary = summary

    @property
    def probabilities(self) -> sitk.Image:
        """Class probabilities (sitk vector float32, 3 components) on the fixed grid, 0 outside the mask."""
        if callable(self._probabilities):
            self._probabilities = self._probabilities()
        return self._probabilities


def _grid_of(image: sitk.Image) -> tuple:
    """(size, origin, spacing, direction) of an image's grid."""
    return image.GetSize(), image.GetOrigin(), image.GetSpacing(), image.GetDirection()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is the device running out of memory."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)


def smaller_tile(tile: int) -> int:
    """Half a tile edge, rounded down to a multiple of 8 (at least 8)."""
    return max(MIN_TILE, tile // 2 // 8 * 8)


class OutputBox(NamedTuple):
    """A box of the dense map computed in one forward pass: corner and edges (zyx, region voxels, multiples of 8)."""

    corner: np.ndarray
    size: tuple

    def slices(self) -> tuple:
        """The box's index slices (zyx) in the region's arrays."""
        return tuple(slice(int(c), int(c) + n) for c, n in zip(self.corner, self.size))


def sub_boxes(box: OutputBox, limit: int) -> list:
    """Boxes with edges of at most `limit` (a multiple of 8) that cover a box without overlapping."""
    pieces = [[(start, min(limit, n - start)) for start in range(0, n, limit)] for n in box.size]
    return [OutputBox(box.corner + np.array([start for start, _ in parts]), tuple(n for _, n in parts))
            for parts in itertools.product(*pieces)]


def boxes_over(needed: np.ndarray, tile: int, shrink: bool = True) -> list:
    """The tiles of edge `tile` (from index 0) that hold needed voxels; with `shrink`, each shrunk to the blocks of 8
    around its needed voxels: where the mask fills a tile only in part, less is computed, with the same values
    (float32 rounding aside)."""
    boxes = []
    for index in np.argwhere(occupied_tiles(needed, tile)):
        corner = index * tile
        if not shrink:
            boxes.append(OutputBox(corner, (tile,) * 3))
            continue
        part = needed[tuple(slice(c, c + tile) for c in corner)]
        low, high = [], []
        for axis in range(3):
            along = np.flatnonzero(part.any(axis=tuple(other for other in range(3) if other != axis)))
            low.append(along[0] // BLOCK * BLOCK)
            high.append(-(-(along[-1] + 1) // BLOCK) * BLOCK)
        boxes.append(OutputBox(corner + np.array(low), tuple(int(h - l) for h, l in zip(high, low))))
    return boxes


@contextlib.contextmanager
def exact_float32(device: torch.device):
    """Run CUDA matrix products and convolutions in full float32 (no TF32), so results match the CPU's."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def amp_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type of `--amp`: float16 on CUDA (tensor cores), bfloat16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def network_precision(device: torch.device, amp: bool):
    """Context for the forward pass: autocast to `amp_dtype` with `amp`, else exact float32."""
    return torch.autocast(device.type, dtype=amp_dtype(device)) if amp else exact_float32(device)


def warm_up(model: MisalignmentNet, device: torch.device, amp: bool) -> None:
    """One forward pass of an 8^3 output tile on the device, in the predictor's precision: on CUDA it creates the
    context and cuDNN's handle and loads kernels, which a fresh process would otherwise pay within the map."""
    batch = in_convolution_layout({lv: torch.zeros((1, 3) + (input_size(model.config, lv, MIN_TILE),) * 3,
                                                   device=device) for lv in model.config.levels})
    with torch.no_grad(), network_precision(device, amp):
        model(batch)
    synchronize(device)


def tile_bytes(model: MisalignmentNet, tile: int) -> float:
    """Rough peak bytes of one tile's forward pass (largest activations, float32)."""
    cfg = model.config
    s1 = input_size(cfg, 1, tile) ** 3
    return 4.0 * s1 * (2 * cfg.features + 6 * cfg.hidden + 12)


def tile_size_for_memory(model: MisalignmentNet, max_memory_gb: float, cap: int = MAX_TILE) -> int:
    """Largest tile edge (multiple of 8, <= cap) whose forward pass fits in a quarter of the budget."""
    budget = max_memory_gb * 2 ** 30 / 4
    tile = 8
    while tile + 8 <= cap and tile_bytes(model, tile + 8) <= budget:
        tile += 8
    return tile


def occupied_tiles(mask: np.ndarray, tile: int) -> np.ndarray:
    """Which whole tiles of edge `tile` (from index 0) hold any voxel of a boolean volume."""
    counts = [n // tile for n in mask.shape]
    whole = mask[tuple(slice(0, n * tile) for n in counts)]
    return whole.reshape(counts[0], tile, counts[1], tile, counts[2], tile).any(axis=(1, 3, 5))


def best_tile(model: MisalignmentNet, region_size, largest: int) -> int:
    """Tile edge (multiple of 8, <= largest) that minimises the S1 input volume computed over the region."""
    def cost(t):
        return np.prod([math.ceil(n / t) for n in region_size]) * input_size(model.config, 1, t) ** 3
    return min(range(8, largest + 1, 8), key=lambda t: (cost(t), -t))


def _to_device(batch: dict, device: torch.device) -> dict:
    """A batch of level patches on the device (on CUDA through pinned memory, asynchronously, unless they are there
    already), in its faster convolution layout."""
    if device.type == "cuda":
        batch = {lv: x if x.is_cuda else x.pin_memory().to(device, non_blocking=True) for lv, x in batch.items()}
    else:
        batch = {lv: x.to(device) for lv, x in batch.items()}
    return in_convolution_layout(batch)


def largest_tile(model: MisalignmentNet, device: torch.device, max_memory_gb: float) -> int:
    """The largest tile edge the device's memory allows: the RAM budget on the CPU, free GPU memory on CUDA."""
    if device.type != "cuda":
        return tile_size_for_memory(model, max_memory_gb)
    free_bytes = torch.cuda.mem_get_info(device)[0]
    return tile_size_for_memory(model, CUDA_MEMORY_SHARE * free_bytes / 2 ** 30, MAX_TILE_CUDA)


def memory_budget(value) -> float:
    """`max_memory_gb` as the command line takes --max-memory (a number of GiB, more than 0); an InputError naming it
    for anything else."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"max_memory_gb must be a number of GiB such as 2 or 0.5, got {described(value)}")
    if not 0.0 < float(value) < float("inf"):
        raise InputError(f"max_memory_gb must be more than 0 GiB, got {float(value)}")
    return float(value)


def arguments(fixed, moving, mask, transform) -> tuple:
    """The images and transform of `predict` and `predict_points` as SimpleITK objects (paths are read; a mask that is
    a label map becomes a label image), or an InputError naming the argument."""
    return (image_argument(fixed, "fixed"), image_argument(moving, "moving"),
            None if mask is None else image_argument(mask, "mask", label_map_ok=True),
            None if transform is None else transform_argument(transform))


class MisalignmentPredictor:
    """Predicts the correct / poor / wrong map of a registered chest-CT pair."""

    def __init__(self, model: MisalignmentNet, device="auto", max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
                 weights_sha256: str = None, amp: bool = False):
        self.max_memory_gb = memory_budget(max_memory_gb)
        self.device = resolve_device(device)
        self.model = folded_for_inference(model).to(self.device, memory_format=CONVOLUTION_LAYOUT)
        self.weights_sha256 = weights_sha256
        self.amp = amp
        # what the first map does before using the device: warm it up (CUDA; the CPU has nothing to set up), or wait
        # for the warm-up that `start_warming_up` began
        self._before_first_map = self._warm_up if self.device.type == "cuda" else None
        # on 2 CPU cores a network beside the masks would slow them down; a GPU runs it while they are made
        self.network_beside_masks = self.device.type == "cuda"

    @classmethod
    def load(cls, weights=None, device="auto", max_memory_gb: float = DEFAULT_MAX_MEMORY_GB, amp: bool = False):
        """Load released (weights=None) or given weights, checking the sha256 against the model card."""
        path = weights if weights is not None else released_weights_path()
        model = load_model(path)
        return cls(model, device=device, max_memory_gb=max_memory_gb, weights_sha256=sha256_of(path), amp=amp)

    @property
    def precision(self) -> str:
        """The arithmetic of the forward pass, as reported in summaries."""
        return f"{amp_dtype(self.device)} autocast".replace("torch.", "") if self.amp else "float32"

    # ----- dense prediction -------------------------------------------------------------------------------
    def predict(self, fixed: sitk.Image, moving: sitk.Image, mask=None, progress=None,
                transform: sitk.Transform = None) -> PredictionResult:
        """Dense map on the fixed grid: labels (0 outside the mask) and class probabilities.

        `transform` (fixed-to-moving, ITK convention) is applied to the moving image first, if given. The images
        may store their axes in any order and sense: the network sees them in its own orientation (`orientation.py`)
        and the results come back on the fixed image's grid. Images and the transform may also be given as paths
        (read as the command line reads them)."""
        fixed, moving, mask, transform = arguments(fixed, moving, mask, transform)
        t0 = time.perf_counter()
        report = progress or (lambda fraction, message: None)
        report(0.0, "preparing images")
        with CapturedWarnings() as warnings:
            prepared, tile, probs_s1, beside_s = self._prepared_and_any_map_beside(
                *(in_network_orientation(image) for image in (fixed, moving, mask)), transform)
        t1 = time.perf_counter()
        if probs_s1 is None:
            probs_s1 = self.dense_probabilities_where_computed(prepared, tile,
                                                              lambda f: report(0.05 + 0.85 * f, "predicting"))
        synchronize(self.device)
        t2 = time.perf_counter()
        report(0.9, "resampling to the fixed grid")
        result = self.result_on_fixed_grid(prepared, probs_s1, output_grid=fixed)
        t3 = time.perf_counter()
        result.summary["timings_s"] = {"preprocessing": t1 - t0, "network": t2 - t1, "resampling": t3 - t2,
                                       "total": t3 - t0, "network_beside_masks": beside_s}
        result.summary["tile_size"] = tile
        result.summary["warnings"] = list(warnings)
        report(1.0, "done")
        return result

    def _prepared_and_any_map_beside(self, fixed, moving, mask, transform) -> tuple:
        """(prepared, tile, probabilities, seconds of the work beside the masks): the checks, the masks and the S1 crop,
        with the map the GPU computed beside the masks when there is one (else the last two are None). The pair on
        the fixed grid (both images in HU and their masks) is released on return, before the network runs."""
        pair, beside = self._on_fixed_grid_with_work_beside(fixed, moving, mask, transform)
        computed = self._completed_map(beside.result(), pair) if beside else None
        if computed is not None:
            return (*computed, beside.seconds)
        return (*self.prepare_on_s1(pair), None, None)

    def _on_fixed_grid_with_work_beside(self, fixed, moving, mask, transform) -> tuple:
        """`to_fixed_grid` (checks and masks, on the CPU) and, on CUDA, the GPU's work beside it: the first call warms
        the device up (context, cuDNN, kernels, which a fresh process would otherwise pay within the map) or waits for
        `start_warming_up`'s warm-up, and a call without a mask starts the network where the lungs can lie as soon as
        the torso masks exist.

        Returns (pair, the work beside it, whose `result()` the caller awaits; None when there is none)."""
        warm_up_first, self._before_first_map = self._before_first_map, None
        network = self.network_beside_masks and mask is None
        if not (warm_up_first or network):
            return to_fixed_grid(fixed, moving, mask, transform), None
        beside = WorkBesideMasks(warm_up_first, self._network_over_air if network else None)
        try:
            return to_fixed_grid(fixed, moving, mask, transform, beside.torsos_ready if network else None), beside
        except BaseException:
            beside.result()  # the GPU is idle again before the error is reported
            raise

    def _warm_up(self) -> None:
        """`warm_up` of this predictor's model, device and precision."""
        warm_up(self.model, self.device, self.amp)

    def start_warming_up(self) -> None:
        """On CUDA, start warming the device up in a thread now, e.g. while the caller reads the images; the first map
        then waits for it instead of warming up beside its masks. Nothing to do on the CPU, or once started."""
        if self._before_first_map == self._warm_up:
            self._before_first_map = WorkBesideMasks(self._warm_up, None).result

    def _network_over_air(self, pair: PairOnFixedGrid) -> Optional[tuple]:
        """The network over the air inside the torso where the moving image has data, where the lungs must lie,
        computed while the CPU outlines them: (prepared, tile, pyramid, probabilities, voxels covered).

        The region spans all that air; the tiles computed are those that hold it once eroded by a voxel, which drops
        the skin's partial-volume shell (it would add many tiles; `_completed_map` adds any a lung needs)."""
        air = sitk.And(air_in_torso(pair.fixed_hu, pair.fixed_torso), pair.inside)
        if not sitk.GetArrayViewFromImage(air).any():
            return None
        prepared, tile = self.prepare_on_s1(dataclasses.replace(pair, mask=air))
        inner_air = mask_like(box_erode(sitk.GetArrayViewFromImage(air) > 0, 1), air)
        needed = self.needed_voxels(dataclasses.replace(prepared, mask=inner_air))
        boxes = self.boxes_over_needed(needed, tile)
        pyramid, probs = self._working_set(build_pyramid(prepared.volume), needed.shape)
        self.fill_boxes(probs, pyramid, prepared, boxes, tile)
        synchronize(self.device)
        covered = np.zeros(needed.shape, dtype=bool)
        for box in boxes:
            covered[box.slices()] = True
        return prepared, tile, pyramid, probs, covered

    def _completed_map(self, beside, pair: PairOnFixedGrid):
        """(prepared, tile, probabilities) of the map the GPU computed beside the masks, with any boxes the evaluation
        mask needs beyond it computed now; None when there is none or the mask reaches outside its region."""
        if beside is None:
            return None
        prepared, tile, pyramid, probs, covered = beside
        start, stop = mask_region_s1(pair.fixed, pair.mask)
        low = prepared.crop_start + prepared.region_start
        if np.any(start < low) or np.any(stop > low + prepared.region_size):
            return None
        prepared = dataclasses.replace(prepared, mask=pair.mask)
        missing = self.needed_voxels(prepared) & ~covered
        self.fill_boxes(probs, pyramid, prepared, self.boxes_over_needed(missing, tile), tile)
        return prepared, tile, probs

    def prepare(self, fixed: sitk.Image, moving: sitk.Image, mask=None, transform=None) -> tuple:
        """Checks, masks and the S1 crop over the mask's region, padded to whole tiles; returns (prepared, tile)."""
        return self.prepare_on_s1(to_fixed_grid(fixed, moving, mask, transform))

    def prepare_on_s1(self, pair: PairOnFixedGrid) -> tuple:
        """The S1 crop of a checked, masked pair over the mask's region, padded to whole tiles; returns (prepared,
        tile)."""
        fixed = pair.fixed
        region = mask_region_s1(fixed, pair.mask)
        tile = best_tile(self.model, region[1] - region[0], largest_tile(self.model, self.device, self.max_memory_gb))
        stop = region[0] + tile * np.ceil((region[1] - region[0]) / tile).astype(int)
        return self._on_s1(pair, (region[0], stop), context_margin(self.model.config, tile)), tile

    def _on_s1(self, pair: PairOnFixedGrid, region: tuple, margin: int) -> PreparedPair:
        """The pair on the S1 grid, resampled on the GPU when the network runs there (its pyramid is then built
        there too), or in host memory when the GPU has no room for it."""
        if self.device.type == "cuda":
            try:
                return crop_to_s1(pair, region, margin, self.device)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            torch.cuda.empty_cache()  # outside the handler, so that a partial volume is released
        return crop_to_s1(pair, region, margin)

    def dense_probabilities(self, prepared: PreparedPair, tile: int, progress=None, pyramid=None) -> np.ndarray:
        """Class probabilities (3, D, H, W; zyx) over the prepared region, in host memory."""
        return self.dense_probabilities_where_computed(prepared, tile, progress, pyramid).cpu().numpy()

    def dense_probabilities_where_computed(self, prepared: PreparedPair, tile: int, progress=None,
                                           pyramid=None) -> torch.Tensor:
        """Class probabilities (3, D, H, W; zyx) over the prepared region, computed tile by tile; on CUDA they stay
        in GPU memory (with the pyramid, sent there once) when they fit, else in host memory.

        When the device runs out of memory, the remaining work is done in tiles of half the edge (down to 8)."""
        check_output_size(tile)
        pyramid = pyramid or build_pyramid(prepared.volume)
        boxes = self.boxes_touching_mask(prepared, tile)
        pyramid, probs = self._working_set(pyramid, tuple(int(n) for n in prepared.region_size[::-1]))
        self.fill_boxes(probs, pyramid, prepared, boxes, tile, progress)
        return probs

    def fill_boxes(self, probs: torch.Tensor, pyramid: dict, prepared: PreparedPair, boxes: list, tile: int,
                   progress=None) -> None:
        """Write the boxes' probabilities into `probs` (3, D, H, W over the prepared region), in pieces of edge `tile`
        at most, halved for the rest of the boxes when the device runs out of memory."""
        start = prepared.region_start[::-1]
        limit = tile
        for i, box in enumerate(boxes):
            limit = self._fill_box(probs, pyramid, start, box, limit)
            if progress:  # on CUDA: boxes queued, not yet finished
                progress((i + 1) / len(boxes))

    def _working_set(self, pyramid: dict, size: tuple) -> tuple:
        """(pyramid, zero probabilities (3, *size)) on the GPU if both fit there, else in host memory."""
        if self.device.type == "cuda":
            try:
                on_gpu = {lv: v if v.is_cuda else v.pin_memory().to(self.device, non_blocking=True)
                          for lv, v in pyramid.items()}
                return on_gpu, torch.zeros((3,) + size, dtype=torch.float32, device=self.device)
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            torch.cuda.empty_cache()  # outside the handler, so that a partial upload is released
        return {lv: v.cpu() for lv, v in pyramid.items()}, torch.zeros((3,) + size, dtype=torch.float32)

    def _fill_box(self, probs: torch.Tensor, pyramid: dict, start, box: OutputBox, limit: int) -> int:
        """Write one box's probabilities in pieces of edge `limit` at most (halved on out-of-memory); return the
        edge."""
        while True:
            try:
                for piece in sub_boxes(box, limit):
                    probs[(slice(None),) + piece.slices()] = self.tile_probabilities(pyramid, start + piece.corner,
                                                                                     piece.size)
                return limit
            except RuntimeError as exc:
                if not is_out_of_memory(exc):
                    raise
            # outside the handler, so that the failed tile's tensors are released before retrying
            if limit <= MIN_TILE:
                raise InputError(f"the {self.device.type} device ran out of memory even with {MIN_TILE}^3 tiles; "
                                 "free GPU memory or run on the CPU (--device cpu; in Slicer, Device: CPU)")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            limit = smaller_tile(limit)

    def tile_probabilities(self, pyramid: dict, corner, size) -> torch.Tensor:
        """Softmax probabilities (3, d, h, w) of the output box of edge `size` (one, or zyx) at a pyramid S1 corner
        (zyx), on the device; no synchronisation with the host."""
        batch = _to_device(batch_tiles(pyramid, self.model.config, [corner], size), self.device)
        with torch.no_grad(), network_precision(self.device, self.amp):
            return torch.softmax(self.model(batch)[1].float(), 1)[0]

    def needed_voxels(self, prepared: PreparedPair) -> np.ndarray:
        """The region's voxels (zyx, boolean) whose probabilities the map needs: the interpolation neighbours of every
        mask voxel, even of a mask thinner than 1 mm, and a voxel around them."""
        neighbours = s1_neighbours_of_mask(prepared.mask, prepared.crop_start + prepared.region_start,
                                           prepared.region_size)
        return box_dilate(neighbours, 1)

    def boxes_touching_mask(self, prepared: PreparedPair, tile: int) -> list:
        """The output boxes the dense map computes: tiles that hold needed voxels (see `boxes_over_needed`)."""
        return self.boxes_over_needed(self.needed_voxels(prepared), tile)

    def boxes_over_needed(self, needed: np.ndarray, tile: int) -> list:
        """Tiles that hold needed voxels, on the CPU shrunk around them. On CUDA they stay whole: there every new box
        shape costs cuDNN a choice of kernels, more than the voxels saved (BENCHMARKS.md)."""
        return boxes_over(needed, tile, shrink=self.device.type != "cuda")

    def result_on_fixed_grid(self, prepared: PreparedPair, probs_s1, output_grid: sitk.Image = None
                             ) -> PredictionResult:
        """Interpolate S1 probabilities linearly onto the fixed grid, take the arg-max and apply the mask; the summary
        lists the largest regions called wrong.

        `probs_s1` (3, D, H, W), a numpy array or a tensor on any device (interpolated there). Only the mask's
        bounding box is interpolated, slab by slab; the full-size probabilities image is built on
        first access of `PredictionResult.probabilities`. The images are made on `output_grid`'s grid when given: the
        fixed grid with its axes stored in another order (the caller's fixed image)."""
        fixed = prepared.fixed
        index, size = bounding_box(prepared.mask)
        grid = _grid_of(fixed)
        output = None if output_grid is None or output_grid.GetDirection() == fixed.GetDirection() else \
            _grid_of(output_grid)
        masked = MaskedProbabilities(torch.as_tensor(probs_s1), prepared.crop_start + prepared.region_start,
                                     sitk.RegionOfInterest(prepared.mask, size, index), index, grid, output)
        labels, counts, confidence_sum = masked.labels()
        summary = dict(self._summary(counts, confidence_sum, fixed), **wrong_regions(labels))
        return PredictionResult(labels, masked.on_fixed_grid, summary)

    def _summary(self, counts: np.ndarray, confidence_sum: float, fixed: sitk.Image) -> dict:
        """Voxels, mL and fractions per class inside the mask, mean confidence, device and model."""
        voxel_ml = float(np.prod(fixed.GetSpacing())) / 1000.0
        total = int(counts[L.CORRECT:].sum())
        classes = {L.CLASS_NAMES[v]: {"voxels": int(counts[v]), "ml": float(counts[v] * voxel_ml),
                                      "fraction": float(counts[v] / total) if total else 0.0}
                   for v in L.CLASS_VALUES}
        return {"classes": classes, "mask_voxels": total, "mask_ml": total * voxel_ml,
                "mean_confidence": confidence_sum / total if total else None,
                "calibrated": self.model.config != self.model.config.uncalibrated(), "device": str(self.device),
                "precision": self.precision, "architecture": self.model.config.architecture,
                "weights_sha256": self.weights_sha256}

    # ----- point queries (the paper's way: one patch per output block) -----------------------------------
    def predict_points(self, fixed: sitk.Image, moving: sitk.Image, points, mask=None, transform=None) -> tuple:
        """Classes (N,, 0 outside the mask or the moving image's field of view) and probabilities (N, 3) at physical
        points (LPS, mm) inside the fixed image."""
        fixed, moving, mask, transform = arguments(fixed, moving, mask, transform)
        points = physical_points(points)
        check_inside(points, fixed, "fixed image", noun="point")
        fixed, moving, mask = (in_network_orientation(image) for image in (fixed, moving, mask))
        pair = to_fixed_grid(fixed, moving, mask, transform)
        if len(points) == 0:
            return np.zeros(0, dtype=np.uint8), np.zeros((0, len(L.CLASS_VALUES)))
        s1 = self._points_to_s1(fixed, points)
        region = points_region_s1(fixed, s1)
        prepared = self._on_s1(pair, region, context_margin(self.model.config, BLOCK))
        local = s1 - region[0]  # xyz continuous index inside the region
        probs = self.interpolate_blocks(prepared, local)
        inside = self._mask_at(pair.mask, points)
        classes = np.where(inside, probs.argmax(1) + L.CORRECT, L.NOT_EVALUATED).astype(np.uint8)
        return classes, probs

    @staticmethod
    def _points_to_s1(fixed: sitk.Image, points: np.ndarray) -> np.ndarray:
        """Continuous global S1 indices (xyz) of physical points."""
        spacing = np.asarray(fixed.GetSpacing())
        return np.array([np.asarray(fixed.TransformPhysicalPointToContinuousIndex(tuple(p))) * spacing
                         for p in points])

    @staticmethod
    def _mask_at(mask: sitk.Image, points: np.ndarray) -> np.ndarray:
        """Whether each physical point's nearest fixed voxel is inside the mask."""
        array = sitk.GetArrayViewFromImage(mask)
        size = np.asarray(mask.GetSize())
        result = np.zeros(len(points), dtype=bool)
        for i, p in enumerate(points):
            idx = np.floor(np.asarray(mask.TransformPhysicalPointToContinuousIndex(tuple(p))) + 0.5).astype(int)
            if np.all(idx >= 0) and np.all(idx < size):
                result[i] = array[idx[2], idx[1], idx[0]] > 0
        return result

    def interpolate_blocks(self, prepared: PreparedPair, local_xyz: np.ndarray,
                           batch_size: int = PER_PATCH_BATCH) -> np.ndarray:
        """Trilinear probabilities at region-local S1 points, evaluating only the 8^3 blocks they touch."""
        base = np.floor(local_xyz).astype(int)
        frac = local_xyz - base
        corners = [np.array(c) for c in np.ndindex(2, 2, 2)]
        voxels = np.concatenate([base + c for c in corners])
        blocks = {tuple(b) for b in (voxels // BLOCK).tolist()}
        values = self.block_probabilities(prepared, sorted(blocks), batch_size)
        result = np.zeros((len(local_xyz), 3))
        for c in corners:
            v = base + c
            weight = np.prod(np.where(c == 1, frac, 1.0 - frac), axis=1)
            vals = np.stack([values[tuple(b)][:, z, y, x] for b, (x, y, z) in zip(v // BLOCK, v % BLOCK)])
            result += weight[:, None] * vals
        return result

    def block_probabilities(self, prepared: PreparedPair, blocks_xyz, batch_size: int = PER_PATCH_BATCH,
                            pyramid=None) -> dict:
        """Per-block evaluation: one input patch per level for each 8^3 output block (xyz block index)."""
        pyramid = pyramid or build_pyramid(prepared.volume)
        start = prepared.region_start
        out = {}
        for i in range(0, len(blocks_xyz), batch_size):
            chunk = blocks_xyz[i:i + batch_size]
            corners = [tuple((start + np.asarray(b) * BLOCK)[::-1]) for b in chunk]
            batch = _to_device(batch_tiles(pyramid, self.model.config, corners, BLOCK), self.device)
            with torch.no_grad(), network_precision(self.device, self.amp):
                probs = torch.softmax(self.model(batch)[1].float(), 1).cpu().numpy()
            out.update({b: p for b, p in zip(chunk, probs)})
        return out
