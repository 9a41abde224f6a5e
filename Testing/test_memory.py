"""`predict` needs a few bytes per fixed-grid voxel: no full-size float copies of the pair, masks labelled slab by
slab, probabilities resampled over the mask's bounding box only (on the whole grid only when asked for)."""

import numpy as np

from RegistrationMisalignmentLib.benchmark import on_grid_of_size, predict_peak_rss
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
