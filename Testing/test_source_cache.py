"""cache-sources and train --sources: preprocess once, then train without SimpleITK (as on a GPU machine)."""
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.imageio import write_image
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
