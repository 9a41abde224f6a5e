"""Training sources saved as one compressed file: CTs preprocessed once, and training without SimpleITK (e.g. on a
GPU machine that has only PyTorch)."""
from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError
from .synthesis import source_from_arrays

SOURCES_SUFFIXES = (".npz",)
SOURCES_FORMAT_HINT = "a sources file is a NumPy archive; end the name with .npz"


def save_sources(sources: list, path, fingerprints=()) -> None:
    """Write sources (1 mm HU as int16, masks) and the first ones' (the CTs') fingerprints to an .npz, atomically."""
    from .imageio import write_bytes
    fingerprints = list(fingerprints) + [None] * (len(sources) - len(fingerprints))
    arrays = {"names": np.array(json.dumps([s.name for s in sources])),
              "fingerprints": np.array(json.dumps(fingerprints))}
    for i, source in enumerate(sources):
        arrays[f"hu_{i}"] = np.clip(np.rint(source.hu.numpy()), -1024, 3071).astype(np.int16)
        arrays[f"torso_{i}"] = source.torso.numpy()
        arrays[f"lungs_{i}"] = source.lungs.numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes(buffer.getvalue(), path)


def load_cached_sources(path) -> list:
    """Sources from a file written by save_sources."""
    with _opened(path) as data:
        names = json.loads(str(data["names"]))
        return [source_from_arrays(name, data[f"hu_{i}"], data[f"torso_{i}"], data[f"lungs_{i}"])
                for i, name in enumerate(names)]


def cached_source_cts(path) -> list:
    """(name, fingerprint) of each CT in a sources file (no phantoms); None in files of cache-sources <= 0.5.1."""
    with _opened(path) as data:
        names = json.loads(str(data["names"]))
        fingerprints = json.loads(str(data["fingerprints"])) if "fingerprints" in data.files else [None] * len(names)
    return [(name, fingerprint) for name, fingerprint in zip(names, fingerprints) if not name.startswith("phantom")]


@contextlib.contextmanager
def _opened(path):
    """The arrays of a sources file, or an InputError saying how to write it again."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such sources file; write one with 'registration-misalignment cache-sources'")
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        raise InputError(f"{path}: not a complete sources file written by cache-sources; write it again with "
                         "'registration-misalignment cache-sources'") from None
