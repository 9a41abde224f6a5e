"""`predict` needs a few bytes per fixed-grid voxel: no full-size float copies of the pair, masks labelled slab by
slab, probabilities resampled over the mask's bounding box only (on the whole grid only when asked for); a 1 mm working
grid larger than any chest or than memory is refused before it is made."""

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib import preprocessing
from RegistrationMisalignmentLib.benchmark import on_grid_of_size, predict_peak_rss
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.imageio import write_image

from conftest import save_weights_with_card

BYTES_PER_FIXED_VOXEL = 18  # Int16 inputs take 4, masks and labels 5; full-size float32 copies would add 12 or more


def test_peak_memory_of_predict_grows_by_few_bytes_per_fixed_voxel(small_pair, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(1 << 20))  # freed buffers of any size go back to the system
    weights = tmp_path / "tiny.safetensors"
    save_weights_with_card(tiny_model, weights)
    options = ["--weights", str(weights), "--device", "cpu", "--max-memory", "0.05", "--threads", "1"]
    voxels, peaks = [], []
    for scale in (1.0, 2.5):  # the same case on a finer fixed grid: the network's work stays the same
        size = [int(round(n * scale)) for n in small_pair.fixed.GetSize()]
        for name, image in (("fixed", small_pair.fixed), ("moving", small_pair.moving)):
            write_image(on_grid_of_size(image, size), tmp_path / f"{name}.mha", compress=False)
        run = predict_peak_rss(tmp_path / "fixed.mha", tmp_path / "moving.mha", tmp_path, options)
        voxels.append(int(np.prod(size)))
        peaks.append(run["peak_rss_bytes"])
    per_voxel = (peaks[1] - peaks[0]) / (voxels[1] - voxels[0])
    assert 0 < per_voxel < BYTES_PER_FIXED_VOXEL, f"{per_voxel:.1f} bytes per fixed-grid voxel"


def _with_voxel_size(image: sitk.Image, mm: float) -> sitk.Image:
    """The image with its voxels said to be `mm` across (a wrong spacing in a header), about the same centre."""
    copy = sitk.Image(image)
    copy.SetSpacing((mm,) * 3)
    copy.SetOrigin(tuple(np.asarray(image.GetOrigin()) * mm))
    return copy


def test_a_region_larger_than_any_chest_is_refused_before_the_1mm_grid_is_made(small_pair, tiny_predictor,
                                                                                monkeypatch):
    """8 mm voxels in the header of a 1 mm CT: the lungs span 70 cm, whose 1 mm grid would take gigabytes."""
    def made(*args, **kwargs):
        raise AssertionError("the 1 mm working grid was made")
    monkeypatch.setattr(preprocessing, "resample_onto_s1_", made)
    fixed, moving = (_with_voxel_size(image, 8.0) for image in (small_pair.fixed, small_pair.moving))
    with pytest.raises(InputError, match=r"^the 1 mm working grid over the region to evaluate \(the lungs, or the "
                                         r"mask\) spans \d+ x \d+ x \d+ mm, more than any chest \(the fixed image "
                                         r"has 8x8x8 mm voxels over 768 x 640 x 704 mm\); a wrong voxel size in its "
                                         "header"):
        tiny_predictor.predict(fixed, moving)


def test_a_1mm_grid_beyond_the_memory_available_is_refused_before_it_is_made(small_pair, tiny_predictor, monkeypatch):
    monkeypatch.setattr(preprocessing, "available_memory_bytes", lambda: 2 ** 26)
    with pytest.raises(InputError, match=r"spans \d+ x \d+ x \d+ mm and needs about 0.2 GiB of memory but 0.1 GiB is "
                                         r"available \(the fixed image has 1x1x1 mm voxels over 96 x 80 x 88 mm\)"):
        tiny_predictor.predict(small_pair.fixed, small_pair.moving)
