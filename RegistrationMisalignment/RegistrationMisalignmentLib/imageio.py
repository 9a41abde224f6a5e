"""Reading, checking and atomically writing images with SimpleITK."""
from __future__ import annotations

import gzip
import itertools
import logging
import os
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, described, library_reason
from .input_checks import voxel_size_text

log = logging.getLogger("RegistrationMisalignment")

NIFTI_MIN_HEADER = 352
NIFTI2_HEADER = 540  # bytes of a NIfTI-2 header (a NIfTI-1 header has 348)
SUBFOLDERS_SEARCHED = 50  # for a DICOM series when a folder holds none itself (named in the error)
# A DICOM slice step may differ from the series' usual step by this share of it, or MIN_SLICE_STEP_MM, whichever is
# more (positions are rounded when written); more is a missing slice or a gap
SLICE_STEP_TOLERANCE, MIN_SLICE_STEP_MM = 0.1, 0.01
# Peak memory of a prediction per fixed-image voxel, with margin: 19 bytes measured on a 512x512x600 CT, 23 with
# --probabilities (BENCHMARKS.md).
BYTES_PER_VOXEL = 24
# Voxel sizes (mm) a CT can have: 0.2 to 10 mm, with room; outside, the header's spacing is wrong or in other units
VOXEL_MM_RANGE = (0.05, 20.0)
# Pixel types of SimpleITK label maps (run-length objects): ITK cannot give their voxels as an array
LABEL_MAP_TYPES = (sitk.sitkLabelUInt8, sitk.sitkLabelUInt16, sitk.sitkLabelUInt32, sitk.sitkLabelUInt64)
# Single-file formats that hold a 3-D label map and a 3-component probability image (header and data together, so
# the temporary file can be renamed into place).
IMAGE_OUTPUT_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")
# Bytes per voxel component of MetaImage's element types (MetaIO's table; MET_LONG is 4 bytes there)
METAIMAGE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}
METAIMAGE_HEADER_LIMIT = 1 << 16  # bytes searched for a MetaImage header's last line, ElementDataFile
TEMPORARY_RANDOM_CHARS = 8  # of a name tempfile makes
DEFAULT_NAME_MAX = 255  # bytes in a file name, where the file system does not tell
IMAGE_FORMAT_HINT = "not a file format for a 3-D map; end the name with .nrrd, .nii.gz, .nii or .mha (lower case)"


def read_image(path) -> sitk.Image:
    """Read a 3-D image from a file (NRRD, NIfTI, MHA, ...) or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            image = _read_dicom_series(path)
        else:
            check_metaimage_complete(path)
            _check_fits_in_memory(path)
            image = sitk.ReadImage(str(path))
            _check_nifti_complete(path, image)
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot be read as an image ({library_reason(exc)}); check the file is complete") \
            from None
    check_volume(image, str(path))
    return image


def available_memory_bytes() -> int:
    """Memory the system can still give this process (MemAvailable), or a large number where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def _check_fits_in_memory(path: Path, slices: int = None) -> None:
    """Raise InputError before reading when the header describes a volume too large to process in memory (for a
    DICOM series, the first file's header and the number of `slices`)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size = list(reader.GetSize())
    if slices is not None:
        size = size[:2] + [slices]
    needed, available = int(np.prod(size, dtype=np.float64)) * BYTES_PER_VOXEL, available_memory_bytes()
    if needed > available:
        raise InputError(f"{path if slices is None else path.parent}: {'x'.join(str(n) for n in size)} voxels need "
                         f"about {needed / 2 ** 30:.0f} GiB of memory but {available / 2 ** 30:.0f} GiB is available; "
                         "crop or downsample the image first")


def _check_nifti_complete(path: Path, image: sitk.Image) -> None:
    """Raise InputError if a NIfTI file holds fewer bytes than its header promises (ITK pads silently)."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            needed = nifti_data_end(handle.read(NIFTI2_HEADER))
    except (EOFError, OSError, zlib.error):
        needed = None
    if needed is None:  # stored in a way this check does not know: ITK's own reading stands
        needed = NIFTI_MIN_HEADER + image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    if _stored_bytes(path, name.endswith(".gz")) < needed:
        raise InputError(f"{path}: file is truncated (holds less data than its header says); copy it again")


def check_metaimage_complete(path: Path) -> None:
    """Raise InputError, before ITK reads it (MetaIO would print its own lines and ITK report "No such file or
    directory"), when a MetaImage (.mha, .mhd) header's data file is missing or holds fewer bytes than it promises."""
    if not path.name.lower().endswith((".mha", ".mhd")):
        return
    header, data_offset = _metaimage_header(path)
    name = header.get("ElementDataFile", "LIST")
    if name.startswith("LIST") or "%" in name:  # voxels in several files: left to ITK
        return
    local = name == "LOCAL"
    data = path if local else path.parent / name
    if not data.is_file():
        raise InputError(f"{path}: its voxel data file {data} (ElementDataFile in the header) is missing; copy it "
                         "beside the header, or pass a single-file image (.mha, .nrrd, .nii.gz)")
    try:
        skip = data_offset if local else int(header.get("HeaderSize", "0"))
    except ValueError:
        return
    needed = _metaimage_data_bytes(header)
    if needed is None or skip < 0:  # a size this check does not know, or data at the end of a longer file
        return
    stored = data.stat().st_size - skip
    if stored < needed:
        raise InputError(f"{path}: data truncated: {stored} of {needed} bytes"
                         f"{'' if local else f' in {data}'}; copy the file again")


def _metaimage_header(path: Path) -> tuple:
    """({key: value} of a MetaImage header up to its ElementDataFile line, the byte offset after that line); an
    empty header when no such line comes within METAIMAGE_HEADER_LIMIT bytes."""
    with open(path, "rb") as handle:
        head = handle.read(METAIMAGE_HEADER_LIMIT)
    header, offset = {}, 0
    for line in head.split(b"\n")[:-1]:
        offset += len(line) + 1
        key, _, value = line.decode("latin-1").partition("=")
        header[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            return header, offset
    return {}, 0


def _metaimage_data_bytes(header: dict):
    """The bytes a MetaImage header promises (stored, so compressed when it is); None when it does not say or
    this check does not know its element type."""
    try:
        if header.get("CompressedData", "False").lower() == "true":
            return int(header["CompressedDataSize"]) if "CompressedDataSize" in header else None
        voxels = int(np.prod([int(n) for n in header["DimSize"].split()], dtype=np.float64))
        channels = int(header.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return None
    size = METAIMAGE_BYTES.get(header.get("ElementType"))
    return voxels * channels * size if size else None


def nifti_data_end(header: bytes):
    """The bytes a NIfTI-1 or NIfTI-2 file needs up to its last voxel, from its header (the voxels' offset, count and
    stored size, before any rescaling); None for a header that is neither."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bits, offset = struct.unpack(order + "h", header[72:74])[0], struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) >= NIFTI2_HEADER and struct.unpack(order + "i", header[:4])[0] == NIFTI2_HEADER:
            dims = struct.unpack(order + "8q", header[16:80])
            bits, offset = struct.unpack(order + "h", header[14:16])[0], struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7:
        return None
    return int(offset) + int(np.prod(dims[1:1 + dims[0]], dtype=np.int64)) * bits // 8


def _stored_bytes(path: Path, compressed: bool) -> int:
    """The bytes a file holds, uncompressed (-1 for a damaged compressed file)."""
    if not compressed:
        return path.stat().st_size
    stored = 0
    try:
        with gzip.open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                stored += len(chunk)
    except (EOFError, OSError, zlib.error):
        return -1
    return stored


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the largest DICOM series in a folder (with a warning naming it when there are several)."""
    series = _series_ids(folder)
    if not series:
        raise _no_series_error(folder)
    files, uid = max(((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s), s) for s in series),
                     key=lambda found: len(found[0]))
    if len(series) > 1:
        log.warning(f"{folder}: holds {len(series)} DICOM series; reading the largest ({len(files)} files, series "
                    f"instance UID {uid}); put each series in its own folder to choose another")
    _check_fits_in_memory(Path(files[0]), slices=len(files))
    with itk_warnings_off():  # ITK's own multi-line warning on uneven slices: `_check_even_slices` says it in one
        _check_even_slices(folder, files)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        return reader.Execute()


def _check_even_slices(folder: Path, files) -> None:
    """Raise InputError when the series' slices (in reading order) do not lie evenly spaced along the slice normal
    (missing slices, a gap): ITK would read them with one spacing, stretching part of the volume."""
    positions = _slice_positions(files) if len(files) > 2 else None
    if positions is None:
        return
    steps = np.diff(positions)
    usual = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - usual) > max(SLICE_STEP_TOLERANCE * abs(usual), MIN_SLICE_STEP_MM))
    if not uneven.size:
        return
    worst = int(uneven[np.argmax(np.abs(steps[uneven] - usual))])
    missing = int(round(steps[worst] / usual)) - 1 if usual else 0
    raise InputError(
        f"{folder}: the DICOM series has uneven slices: {Path(files[worst]).name} and {Path(files[worst + 1]).name} "
        f"lie {abs(steps[worst]):.2f} mm apart (at {positions[worst]:.1f} and {positions[worst + 1]:.1f} mm along the "
        f"slice normal{f', about {missing} slices missing' if missing > 0 else ''}), the others {abs(usual):.2f} mm"
        f"{f' ({uneven.size - 1} more uneven steps)' if uneven.size > 1 else ''}; read as it is, the volume would be "
        "stretched. Export the complete series again, or load it in 3D Slicer (its DICOM module can regularise "
        "uneven slices) and save it as NRRD")


def _slice_positions(files) -> np.ndarray:
    """Each file's position (ImagePositionPatient) along the first file's slice normal, mm; None when a file has
    none."""
    reader = sitk.ImageFileReader()
    normal, positions = None, []
    for name in files:
        reader.SetFileName(str(name))
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032"):
            return None
        if normal is None:
            normal = np.asarray(reader.GetDirection()).reshape(3, 3)[:, 2]
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    return np.asarray(positions)


def _no_series_error(folder: Path) -> InputError:
    """The error for a folder without a DICOM series, naming a subfolder that holds one."""
    below = _first_series_folder_below(folder)
    return InputError(f"{folder}: folder holds no DICOM series; pass an image file or a DICOM folder" + (
        f" (its subfolder {below} holds one: pass that folder)" if below else ""))


def check_image_input(option: str, path) -> None:
    """Raise InputError, before any work, unless `path` is a file that opens or a folder with a DICOM series."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path}: no such file or folder")
    if path.is_dir():
        if not _series_ids(path):
            raise _no_series_error(path)
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot be opened ({exc.strerror}); check its permissions") from None


def _series_ids(folder) -> tuple:
    """The DICOM series instance UIDs of the files directly in a folder."""
    with itk_warnings_off():  # ITK prints its own warning for a folder without series
        return sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))


@contextmanager
def itk_warnings_off():
    """While the block runs, ITK prints no warnings of its own (multi-line, on stderr); restored after."""
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)


def _first_series_folder_below(folder: Path, limit: int = SUBFOLDERS_SEARCHED):
    """The first of a folder's first `limit` subfolders (walked top-down) that holds a DICOM series, or None."""
    for root, _, _ in itertools.islice(os.walk(folder), 1, limit + 1):
        if _series_ids(root):
            return Path(root)
    return None


def image_argument(value, name: str, label_map_ok: bool = False) -> sitk.Image:
    """A Python caller's image argument: a SimpleITK image, or one read from a path (file or DICOM folder); a label
    map (LabelMap pixel type) made a label image when `label_map_ok`. An InputError naming `name` for anything else."""
    if isinstance(value, (str, os.PathLike)):
        return read_image(value)
    if not isinstance(value, sitk.Image):
        hint = ("; make one with sitk.GetImageFromArray(array) and set its spacing, origin and direction"
                if isinstance(value, np.ndarray) else "")
        raise InputError(f"{name} must be a SimpleITK image or the path of an image file or DICOM folder, got "
                         f"{described(value)}{hint}")
    if label_map_ok and value.GetPixelID() in LABEL_MAP_TYPES:
        return sitk.LabelMapToLabel(value)
    check_not_label_map(value, name)
    return value


def check_not_label_map(image: sitk.Image, name: str) -> None:
    """Raise InputError for a label map (LabelMap pixel type), before ITK is asked for its voxels: that aborts the
    whole process (Slicer too)."""
    if image.GetPixelID() in LABEL_MAP_TYPES:
        raise InputError(f"{name}: a label map ({image.GetPixelIDTypeAsString()}), not a grey-value image; pass "
                         "the CT itself (a mask as a label map: convert it with sitk.LabelMapToLabel)")


def check_volume(image: sitk.Image, name: str) -> None:
    """Raise InputError unless `image` is a finite, scalar 3-D volume with voxels of a plausible size."""
    check_not_label_map(image, name)
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        raise InputError(f"{name}: expected a 3-D volume, got size {image.GetSize()}; pass a 3-D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a scalar (grey-value) image, got "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    spacing = np.asarray(image.GetSpacing())
    if spacing.min() < VOXEL_MM_RANGE[0] or spacing.max() > VOXEL_MM_RANGE[1]:
        raise InputError(f"{name}: voxel size {voxel_size_text(image)} is not a CT's (expected {VOXEL_MM_RANGE[0]} to "
                         f"{VOXEL_MM_RANGE[1]:.0f} mm along each axis); the spacing in its header is wrong or in other "
                         "units (m, cm): set it right (e.g. in 3D Slicer's Volumes module) and save the image again")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"{name}: contains NaN or infinite voxels; fix or mask them before prediction")


def paste(destination: sitk.Image, source: sitk.Image, index) -> None:
    """Copy `source` into `destination` at the xyz voxel `index`, in place (same pixel type)."""
    destination[tuple(slice(int(i), int(i) + n) for i, n in zip(index, source.GetSize()))] = source


def write_image(image: sitk.Image, path, compress: bool = True) -> None:
    """Write an image atomically: a temporary file in the same folder is renamed into place."""
    write_images([(image, path)], compress)


def write_images(images, compress: bool = True) -> None:
    """Write (image, path) pairs all or none: every path checked, each image written to a temporary file beside its
    path, then all renamed into place (a rename that still fails removes the files not yet in place, and says which
    are)."""
    images = [(image, Path(path)) for image, path in images]
    for _, path in images:
        check_output_path(path)
    staged = []
    try:
        for image, path in images:
            staged.append((_staged_image(image, path, compress), path))
    except BaseException:
        _remove_staged(staged)
        raise
    for i, (tmp, path) in enumerate(staged):
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _remove_staged(staged[i:])
            written = ", ".join(str(p) for _, p in staged[:i])
            raise InputError(f"{_write_error(path, exc)}{f'; already written: {written}' if written else ''}") \
                from None


def _remove_staged(staged: list) -> None:
    """Remove staged temporary files (tmp, path) that were not renamed into place."""
    for tmp, _ in staged:
        Path(tmp).unlink(missing_ok=True)


def _staged_image(image: sitk.Image, path: Path, compress: bool) -> str:
    """Write an image to a new temporary file in `path`'s folder (checked by `write_images`), with `path`'s format;
    returns the temporary name."""
    prefix, suffix = _temporary_affixes(path, image=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, compress)
        _usual_permissions(tmp)
    except (RuntimeError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_bytes(data: bytes, path) -> None:
    """Write bytes atomically (temporary file renamed into place)."""
    path = Path(path)
    _check_writable(path.parent)
    prefix, suffix = _temporary_affixes(path, image=False)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _usual_permissions(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temporary_affixes(path: Path, image: bool) -> tuple:
    """Prefix and suffix of the temporary file written beside `path` (tempfile puts TEMPORARY_RANDOM_CHARS between
    them); an image's keeps its format's suffix, by which ITK writes it."""
    return (f".{path.stem}.", "".join(path.suffixes) or ".nrrd") if image else (f".{path.name}.", "")


def _write_error(path: Path, exc: Exception) -> InputError:
    """A one-line error for a failed write (disk full, file too large, no permission); nothing was left behind."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else library_reason(exc)
    return InputError(f"{path}: could not be written ({reason}); free disk space or choose another folder, "
                      "then run again (no partial file was left)")


def _usual_permissions(path) -> None:
    """Give a temporary file the permissions a normally created file would have (mkstemp makes it private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def check_output_path(path) -> None:
    """Raise InputError unless `path` can be written (checked before any work starts)."""
    path = Path(path)
    _check_writable(path.parent)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name")


def check_output_files(outputs: dict, inputs: dict, suffixes: tuple, format_hint: str) -> None:
    """Raise InputError unless each output (option -> path; None = not asked for) is a writable file whose name ends
    with one of `suffixes` (else `format_hint` says what to do) after a name of its own that is short enough, and none
    is the same file as another output or as an input (given as 'what it is' -> path, e.g. 'the same file as
    --fixed')."""
    given = {option: path for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        if not str(path):
            raise InputError(f"{option} is empty; give a file name")
        _check_name_fits(option, path)
        check_output_path(path)
        if not str(path).endswith(suffixes):  # in lower case: ITK reads and writes by the exact suffix
            raise InputError(f"{option} {path}: {format_hint}")
        if Path(path).name in suffixes:
            raise InputError(f"{option} {path}: the name is only an extension; put a name before it")
    named = list(given.items())
    for i, (option, path) in enumerate(named):
        others = [(f"the same file as {name}", other) for name, other in named[:i]] + list(inputs.items())
        for what, other_path in others:
            if other_path and same_file(path, other_path):
                raise InputError(f"{option} {path} is {what}; choose another output name (inputs are never "
                                 "overwritten)")


def _check_name_fits(option: str, path) -> None:
    """Raise InputError when the temporary file written beside an output first would have a name longer than the
    folder's file system allows (found only after the work otherwise)."""
    path = Path(path)
    name = len(os.fsencode(path.name))
    needed = TEMPORARY_RANDOM_CHARS + max(len(os.fsencode("".join(_temporary_affixes(path, image))))
                                          for image in (True, False))
    limit = _name_max(path.parent)
    if needed > limit:
        raise InputError(f"{option} {path}: file name too long ({name} bytes; the temporary file written beside it "
                         f"first takes {needed - name} more and the folder allows {limit}); choose a name of at most "
                         f"{limit - (needed - name)} bytes")


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that `folder`'s file system allows (DEFAULT_NAME_MAX where it does not tell)."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        return DEFAULT_NAME_MAX
    return limit if limit > 0 else DEFAULT_NAME_MAX


def check_new_files(option: str, value, paths=()) -> None:
    """Raise InputError when a file that an output option writes (default: its value) exists: none is replaced."""
    for path in paths or [value]:
        if os.path.lexists(path):
            where = "" if same_file(path, value) else f": {path}"
            raise InputError(f"{option} {value}{where} exists already; remove it or choose another {option} (an "
                             "existing file is never replaced)")


def same_file(a, b) -> bool:
    """Whether two paths name the same file (also through links), existing or not."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_writable(folder: Path) -> None:
    """Raise InputError unless `folder` exists and is writable."""
    if not folder.is_dir():
        raise InputError(f"{folder}: output folder does not exist; create it first")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{folder}: output folder is not writable (creating a file there failed: {exc.strerror}); "
                         "choose another folder") from None


def corner_points(image: sitk.Image) -> np.ndarray:
    """The physical points (8 x 3) of a 3-D image's corner voxel centres."""
    size = np.asarray(image.GetSize()) - 1
    return np.asarray([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                       for corner in np.array(np.meshgrid(*[[0, s] for s in size])).reshape(3, -1).T])


def physical_bounds(image: sitk.Image) -> tuple:
    """Axis-aligned physical bounding box (min, max corners) of an image's voxel centres."""
    corners = corner_points(image)
    return corners.min(0), corners.max(0)


def image_on_grid(grid: tuple, pixel_type: int, components: int = 1) -> sitk.Image:
    """A zero image with the given (size, origin, spacing, direction)."""
    size, origin, spacing, direction = grid
    image = sitk.Image(size, pixel_type, components)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def mask_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """A UInt8 image of a boolean or integer array (zyx) with the reference's geometry."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def grid_over_same_extent(image: sitk.Image, spacing, size) -> tuple:
    """(size, origin, spacing, direction) of a grid of `size` voxels `spacing` apart along the image's axes whose
    voxel edges start where the image's do (so it spans the image's extent when size x spacing matches it)."""
    spacing = np.asarray(spacing, dtype=float)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin()) + direction @ ((spacing - np.asarray(image.GetSpacing())) / 2)
    return [int(n) for n in size], tuple(origin), tuple(spacing), image.GetDirection()
