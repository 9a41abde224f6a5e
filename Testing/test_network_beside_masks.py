"""On a GPU the network starts over the air inside the torso while the CPU still makes the lung mask. The map is the
same as when the network waits for the mask, whatever that early work covers and however it fails. The code is the
same on every device, so it runs here on the CPU."""
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

import RegistrationMisalignmentLib.inference as inference
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.inference import MisalignmentPredictor


def predictor(model, beside: bool) -> MisalignmentPredictor:
    """A CPU predictor with several tiles, with the network beside the masks as on CUDA, or after them."""
    made = MisalignmentPredictor(model, "cpu", max_memory_gb=0.05)
    made.network_beside_masks = beside
    return made


@pytest.fixture(scope="module")
def map_after_masks(small_pair, tiny_model):
    """The map computed after the masks, as on the CPU."""
    return predictor(tiny_model, False).predict(small_pair.fixed, small_pair.moving)


def assert_same_map(result, expected) -> None:
    """Same labels, same probabilities."""
    assert np.array_equal(sitk.GetArrayViewFromImage(result.labels), sitk.GetArrayViewFromImage(expected.labels))
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(result.probabilities),
                               sitk.GetArrayViewFromImage(expected.probabilities), atol=1e-6)


def test_the_network_starts_in_a_thread_before_the_lung_mask_and_gives_the_same_map(small_pair, tiny_model,
                                                                                     map_after_masks):
    beside = predictor(tiny_model, True)
    handed_over = []
    network_over_air = beside._network_over_air

    def recorded(pair):
        handed_over.append((threading.current_thread(), pair.mask))
        return network_over_air(pair)

    beside._network_over_air = recorded
    result = beside.predict(small_pair.fixed, small_pair.moving)
    assert_same_map(result, map_after_masks)
    [(thread, mask)] = handed_over
    assert thread is not threading.main_thread() and mask is None  # started before the lung mask existed
    timings = result.summary["timings_s"]
    assert timings["network_beside_masks"] > 0 and map_after_masks.summary["timings_s"]["network_beside_masks"] is None


def test_tiles_the_lungs_need_beyond_the_early_ones_are_computed_after_the_masks(small_pair, tiny_model,
                                                                                  map_after_masks, monkeypatch):
    monkeypatch.setattr(inference, "box_erode", lambda mask, radius: np.zeros_like(mask))  # no tile computed early
    result = predictor(tiny_model, True).predict(small_pair.fixed, small_pair.moving)
    assert result.summary["timings_s"]["network_beside_masks"] is not None  # the early region was used
    assert_same_map(result, map_after_masks)


def test_an_early_region_that_does_not_hold_the_lungs_is_dropped(small_pair, tiny_model, map_after_masks,
                                                                 monkeypatch):
    def one_corner_voxel(ct, torso):
        corner = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
        corner.CopyInformation(ct)
        corner[0, 0, 0] = 1
        return corner

    monkeypatch.setattr(inference, "air_in_torso", one_corner_voxel)
    result = predictor(tiny_model, True).predict(small_pair.fixed, small_pair.moving)
    assert result.summary["timings_s"]["network_beside_masks"] is None
    assert_same_map(result, map_after_masks)


def test_a_failure_beside_the_masks_leaves_the_map_to_be_computed_after_them(small_pair, tiny_model, map_after_masks,
                                                                            monkeypatch):
    def failing(ct, torso):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(inference, "air_in_torso", failing)
    result = predictor(tiny_model, True).predict(small_pair.fixed, small_pair.moving)
    assert result.summary["timings_s"]["network_beside_masks"] is None
    assert_same_map(result, map_after_masks)


def test_with_a_given_mask_there_is_no_lung_mask_to_wait_for_and_no_early_network(small_pair, small_phantom,
                                                                                     tiny_model):
    beside = predictor(tiny_model, True)
    beside._network_over_air = lambda pair: pytest.fail("no network beside the masks when the mask is given")
    result = beside.predict(small_pair.fixed, small_pair.moving, mask=small_phantom[1])
    assert result.summary["timings_s"]["network_beside_masks"] is None and result.summary["mask_voxels"] > 0


def test_when_the_checks_fail_after_the_torso_masks_the_early_work_ends_before_the_error_is_raised(small_pair,
                                                                                                   tiny_model):
    air = sitk.Image(small_pair.fixed.GetSize(), sitk.sitkInt16) - 1000  # no body, found after the torso masks
    air.CopyInformation(small_pair.fixed)
    beside = predictor(tiny_model, True)
    finished = []
    beside._network_over_air = lambda pair: time.sleep(0.5) or finished.append(pair.mask)
    with pytest.raises(InputError, match="no body found in the fixed image"):
        beside.predict(air, small_pair.moving)
    assert finished == [None]  # handed the pair before the checks failed, done before the error came out
