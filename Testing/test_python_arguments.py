"""The Python API's arguments: anything but what is expected is a one-line InputError naming the argument (never an
AttributeError deep inside, nor an abort of the whole process); paths are read as the command line reads them."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.imageio import write_image
from RegistrationMisalignmentLib.inference import MisalignmentPredictor


def _centre(image: sitk.Image) -> tuple:
    return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])


WRONG_VALUES = [(np.zeros((4, 4, 4)), "got numpy.ndarray"), (3, "got int 3"), (None, "got None")]


@pytest.mark.parametrize("argument, value, given", [(argument, value, given) for argument in ("fixed", "moving", "mask",
                                                                                            "transform")
                                                    for value, given in WRONG_VALUES
                                                    if value is not None or argument in ("fixed", "moving")])
def test_a_wrong_type_in_place_of_an_image_or_transform_names_the_argument(small_pair, tiny_predictor, argument,
                                                                           value, given):
    kinds = {"transform": "a SimpleITK transform"}
    arguments = {"fixed": small_pair.fixed, "moving": small_pair.moving, "mask": None, "transform": None}
    arguments[argument] = value
    expected = rf"^{argument} must be {kinds.get(argument, 'a SimpleITK image')} .*, {given}"
    with pytest.raises(InputError, match=expected):
        tiny_predictor.predict(**arguments)
    with pytest.raises(InputError, match=expected):
        tiny_predictor.predict_points(points=[_centre(small_pair.fixed)], **arguments)


@pytest.mark.parametrize("points, given", [(None, "got None"), (5.0, "got float 5.0")])
def test_points_that_are_not_triples_name_what_was_given(small_pair, tiny_predictor, points, given):
    with pytest.raises(InputError, match=f"^points must be x, y, z triples .*, {given}$"):
        tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, points)


def test_paths_are_read_in_place_of_images_and_transforms(small_pair, tiny_predictor, tmp_path):
    write_image(small_pair.fixed, tmp_path / "fixed.nrrd")
    write_image(small_pair.moving, tmp_path / "moving.nrrd")
    shift = sitk.TranslationTransform(3, (1.0, 0.0, 0.0))
    sitk.WriteTransform(shift, str(tmp_path / "shift.tfm"))
    centre = [_centre(small_pair.fixed)]
    from_paths = tiny_predictor.predict_points(str(tmp_path / "fixed.nrrd"), tmp_path / "moving.nrrd", centre,
                                               transform=str(tmp_path / "shift.tfm"))
    from_images = tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, centre, transform=shift)
    assert np.array_equal(from_paths[0], from_images[0]) and np.allclose(from_paths[1], from_images[1])
    with pytest.raises(InputError, match="absent.nrrd: no such file or folder"):
        tiny_predictor.predict(tmp_path / "absent.nrrd", small_pair.moving)


def test_a_label_map_image_is_refused_as_an_image_and_taken_as_a_mask(small_pair, small_phantom, tiny_predictor):
    """ITK aborts the whole process (Slicer with it) when asked for a label map's voxels as an array."""
    label_map = sitk.Cast(small_phantom[1], sitk.sitkLabelUInt8)
    with pytest.raises(InputError, match=r"^fixed: a label map \(label of 8-bit unsigned integer\), not a grey-value "
                                         "image; pass the CT itself"):
        tiny_predictor.predict(label_map, small_pair.moving)
    centre = [_centre(small_pair.fixed)]
    as_label_map = tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, centre, mask=label_map)
    as_labels = tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, centre, mask=small_phantom[1])
    assert np.array_equal(as_label_map[0], as_labels[0])


@pytest.mark.parametrize("budget, message", [(0, "must be more than 0 GiB, got 0.0"),
                                             (-1, "must be more than 0 GiB, got -1.0"),
                                             (float("nan"), "must be more than 0 GiB, got nan"),
                                             ("2", "must be a number of GiB such as 2 or 0.5, got str '2'"),
                                             (True, "must be a number of GiB")])
def test_a_memory_budget_the_command_line_refuses_is_refused_in_python_too(tiny_model, budget, message):
    with pytest.raises(InputError, match=f"^max_memory_gb {message}"):
        MisalignmentPredictor(tiny_model, device="cpu", max_memory_gb=budget)


@pytest.mark.parametrize("device", ["tpu", "meta", "mps", "cuda:x", 0])
def test_a_device_other_than_those_allowed_is_refused_naming_them(tiny_model, device):
    with pytest.raises(InputError, match=r"^device must be 'auto', 'cpu', 'cuda' \(or 'gpu'\) or 'cuda:N'"):
        MisalignmentPredictor(tiny_model, device=device)


def test_a_gpu_number_beyond_those_present_is_refused_naming_those_present(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(InputError, match=r"^device 'cuda:3': there is no such GPU here \(GPUs: cuda:0\)"):
        MisalignmentPredictor(tiny_model, device="cuda:3")
    assert MisalignmentPredictor(tiny_model, device=torch.device("cpu")).device == torch.device("cpu")
