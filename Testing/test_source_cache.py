"""cache-sources and train --sources: preprocess once, then train without SimpleITK (as on a GPU machine)."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.imageio import read_image, write_image
from RegistrationMisalignmentLib.source_cache import load_cached_sources
from RegistrationMisalignmentLib.sources import load_sources

ENGINE = str(Path(__file__).resolve().parents[1] / "RegistrationMisalignment")
NO_SIMPLEITK = ("import sys; sys.modules['SimpleITK'] = None; sys.path.insert(0, {engine!r}); "
                "from RegistrationMisalignmentLib.cli import main; sys.exit(main({args!r}))")


def test_cached_sources_round_trip_and_train_without_simpleitk(tmp_path, capsys):
    cache = tmp_path / "sources.npz"
    assert main(["cache-sources", "--phantoms", "1", "--out", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sources"] == {"phantom-0": [176, 160, 192]}
    (cached,), (original,) = load_cached_sources(cache), load_sources((), [0])
    assert cached.name == original.name and cached.lung_z_range == original.lung_z_range
    assert np.abs(cached.hu.numpy() - original.hu.numpy()).max() <= 0.5  # HU rounded to integers
    assert (cached.lungs == original.lungs).all() and (cached.torso == original.torso).all()

    args = ["train", "--sources", str(cache), "--phantoms", "0", "--out", str(tmp_path / "run"), "--steps", "2",
            "--batch-size", "1", "--out-size", "8", "--features", "4", "--hidden", "4", "--validate-every", "2",
            "--device", "cpu", "--json"]
    run = subprocess.run([sys.executable, "-c", NO_SIMPLEITK.format(engine=ENGINE, args=args)],
                         capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["steps"] == 2 and (tmp_path / "run" / "weights.safetensors").is_file()


def test_a_file_that_is_not_a_sources_file_is_refused(tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, names=np.array("[]"), filler=np.arange(100000))
    (tmp_path / "truncated.npz").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    for name in ("bad.npz", "truncated.npz"):
        assert main(["train", "--sources", str(tmp_path / name), "--phantoms", "0", "--out", str(tmp_path / "r"),
                     "--steps", "1", "--device", "cpu"]) == 2
        error = capsys.readouterr().err
        assert "not a complete sources file written by cache-sources" in error and "pickle" not in error, name


def test_cache_sources_never_overwrites_an_input_or_an_existing_file(small_pair, tmp_path, capsys):
    ct, sources = tmp_path / "mine.nii.gz", tmp_path / "sources.npz"
    write_image(small_pair.fixed, ct)
    sources.write_bytes(b"an earlier sources file")
    (tmp_path / "link.npz").symlink_to(ct)
    before = {path: path.read_bytes() for path in (ct, sources)}
    cases = [(ct, "mine.nii.gz: a sources file is a NumPy archive; end the name with .npz"),
             (tmp_path / "link.npz", f"--out {tmp_path / 'link.npz'} is the same file as --ct {ct}"),
             (sources, f"--out {sources} exists already; remove it or choose another --out")]
    for out, message in cases:
        assert main(["cache-sources", "--ct", str(ct), "--phantoms", "0", "--out", str(out)]) == 2, out
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], (out, error)
    assert main(["cache-sources", "--ct", str(ct), "--ct", str(tmp_path / "nothere.nii.gz"), "--phantoms", "0",
                 "--out", str(tmp_path / "new.npz")]) == 2
    assert f"--ct {tmp_path / 'nothere.nii.gz'}: no such file or folder" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in (ct, sources)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.npz", "mine.nii.gz", "sources.npz"]


def _slab(ct, slices: int):
    """`slices` 1 mm slices from the middle of a CT: a CT cropped to a slab of that many mm."""
    middle = ct.GetSize()[2] // 2
    return ct[:, :, middle - slices // 2:middle - slices // 2 + slices]


def test_a_slab_too_thin_for_a_training_tile_is_refused_by_cache_sources_and_train(small_phantom, tmp_path, capsys):
    """A CT of a few slices holds no whole training tile: refused before anything is written, naming its extent, the
    tile it is smaller than and what to use instead."""
    from RegistrationMisalignmentLib.errors import InputError
    from RegistrationMisalignmentLib.model import ModelConfig
    from RegistrationMisalignmentLib.sources import source_from_image
    from RegistrationMisalignmentLib.source_cache import save_sources
    from RegistrationMisalignmentLib.synthesis import check_source_extent
    from RegistrationMisalignmentLib.training import TrainConfig, train
    slab = tmp_path / "slab.nii.gz"
    write_image(_slab(small_phantom[0], 24), slab)
    assert main(["cache-sources", "--ct", str(slab), "--phantoms", "0", "--out", str(tmp_path / "s.npz")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {slab}: its lungs span "), error
    assert error[0].endswith(" x 24 mm (x y z; the CT 96 x 80 x 24 mm on the 1 mm training grid), less than one "
                             "32 mm training tile (--out-size 32) along z: too small to train on; use a whole-chest "
                             "CT"), error
    command = ["train", "--phantoms", "0", "--features", "4", "--hidden", "4", "--steps", "1", "--batch-size", "1",
             "--validate-every", "1", "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main([*command, "--ct", str(slab)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "less than one 32 mm training tile (--out-size 32) along z" in error[0], error
    older = tmp_path / "older.npz"  # a sources file written before cache-sources refused such CTs
    source = source_from_image(str(slab), read_image(slab))
    save_sources([source], older)
    assert main([*command, "--sources", str(older)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {slab} (in --sources {older}): its lungs span "), error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["older.npz", "slab.nii.gz"]
    check_source_extent(source, 16)  # tiles of 16 mm fit in it
    with pytest.raises(InputError, match="less than one 32 mm training tile"):  # the Python API checks too
        train(load_cached_sources(older), ModelConfig(features=4, hidden=4), TrainConfig(steps=1), tmp_path / "api",
              device="cpu", progress=False, log=lambda m: None)
    assert not (tmp_path / "api").exists()


def test_the_shared_cts_and_the_phantoms_hold_the_default_training_tiles():
    """The released model's training CT, the other shared CT, the training phantoms and the demo's phantom."""
    from conftest import shared_ct
    from RegistrationMisalignmentLib.phantom import make_chest_phantom
    from RegistrationMisalignmentLib.sources import source_from_image, training_sources
    from RegistrationMisalignmentLib.synthesis import check_source_extent, lung_extent_xyz
    cts = [shared_ct("thorax_philips_00.nii.gz"), shared_ct("thorax_nsclc_r01-001.nii.gz")]
    sources, fingerprints = training_sources(cts, [0, 1], 32)  # each refused when too small: none is
    demo = source_from_image("the demo phantom", *make_chest_phantom(0))
    for source in sources + [demo]:
        check_source_extent(source, 64)  # and tiles twice the default
        assert min(lung_extent_xyz(source)) >= 90, source.name
    assert len(fingerprints) == 2 and all(fingerprints)


def test_a_scan_given_twice_is_refused_before_it_counts_twice(small_pair, tmp_path, capsys):
    """The same CT under two names (here NRRD and NIfTI) would weigh double in training: one line naming both."""
    write_image(small_pair.fixed, tmp_path / "ct.nrrd")
    write_image(small_pair.fixed, tmp_path / "copy.nii.gz")
    write_image(small_pair.moving, tmp_path / "other.nrrd")
    out = tmp_path / "s.npz"
    assert main(["cache-sources", "--ct", str(tmp_path / "ct.nrrd"), "--ct", str(tmp_path / "other.nrrd"),
                 "--ct", str(tmp_path / "copy.nii.gz"), "--phantoms", "0", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: {tmp_path / 'copy.nii.gz'} holds the same scan as {tmp_path / 'ct.nrrd'} (same voxels, "
                     "size and spacing): it would count twice in training; give each CT once"]
    assert not out.exists()
