"""Reading every supported format, rejecting bad images, writing atomically, preparing pairs."""
import logging
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib import imageio
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.imageio import read_image, write_image, write_images
from RegistrationMisalignmentLib.preprocessing import moving_on_fixed_grid, to_fixed_grid


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_files_round_trip_with_geometry(small_phantom, tmp_path, suffix):
    ct, _ = small_phantom
    path = tmp_path / f"ct{suffix}"
    write_image(ct, path)
    back = read_image(path)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(ct))
    assert np.allclose(back.GetOrigin(), ct.GetOrigin(), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def _write_dicom_series(volume, folder, series_uid: str, prefix: str = "slice") -> None:
    """One DICOM file per slice of `volume`, all of one series."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetDepth()):
        slice_k = volume[:, :, k]
        slice_k.SetMetaData("0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, k)))))
        slice_k.SetMetaData("0020|0013", str(k))
        slice_k.SetMetaData("0020|000e", series_uid)
        slice_k.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_k)


def test_dicom_folder_is_read_as_a_volume(small_phantom, tmp_path):
    ct, _ = small_phantom
    sub = ct[:, :, 20:30]
    _write_dicom_series(sub, tmp_path, "1.2.826.0.1.3680043.2.1125.1")
    volume = read_image(tmp_path)
    assert volume.GetSize() == sub.GetSize()
    assert np.array_equal(sitk.GetArrayViewFromImage(volume), sitk.GetArrayViewFromImage(sub))


def test_a_dicom_series_too_large_for_memory_is_refused_before_it_is_read(small_phantom, tmp_path, monkeypatch):
    ct, _ = small_phantom
    sub = ct[:, :, 20:30]
    _write_dicom_series(sub, tmp_path, "1.2.826.0.1.3680043.2.1125.4")
    voxels = sub.GetNumberOfPixels()
    monkeypatch.setattr(imageio, "available_memory_bytes", lambda: voxels * imageio.BYTES_PER_VOXEL - 1)
    size = "x".join(str(n) for n in sub.GetSize())
    with pytest.raises(InputError, match=f"{tmp_path}: {size} voxels need about"):
        read_image(tmp_path)


def test_a_folder_with_several_dicom_series_reads_the_largest_with_a_warning(small_phantom, tmp_path, caplog):
    ct, _ = small_phantom
    _write_dicom_series(ct[:, :, 20:24], tmp_path, "1.2.826.0.1.3680043.2.1125.2", "scout")
    _write_dicom_series(ct[:, :, 20:30], tmp_path, "1.2.826.0.1.3680043.2.1125.3")
    with caplog.at_level(logging.WARNING, logger="RegistrationMisalignment"):
        volume = read_image(tmp_path)
    assert volume.GetDepth() == 10
    assert "holds 2 DICOM series; reading the largest (10 files" in caplog.text


def test_a_folder_whose_series_lies_in_a_subfolder_names_it(small_phantom, tmp_path):
    """A study folder (STUDY/SERIES/*.dcm) is not read, but the error names the series folder to pass."""
    ct, _ = small_phantom
    series = tmp_path / "study" / "empty" / "series"
    series.mkdir(parents=True)
    _write_dicom_series(ct[:, :, 20:24], series, "1.2.826.0.1.3680043.2.1125.4")
    with pytest.raises(InputError, match=f"no DICOM series.*its subfolder {series} holds one: pass that folder"):
        read_image(tmp_path / "study")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="no DICOM series; pass an image file or a DICOM folder$"):
        read_image(tmp_path / "nothing")


def test_a_dicom_series_with_missing_slices_is_refused_in_one_line_naming_the_gap(small_phantom, tmp_path, capfd):
    ct, _ = small_phantom
    _write_dicom_series(ct[:, :, 20:30], tmp_path, "1.2.826.0.1.3680043.2.1125.5", "a")
    _write_dicom_series(ct[:, :, 33:40], tmp_path, "1.2.826.0.1.3680043.2.1125.5", "b")  # slices 30 to 32 missing
    with pytest.raises(InputError, match=rf"^{tmp_path}: the DICOM series has uneven slices: a009.dcm and b000.dcm "
                                         r"lie 4.00 mm apart \(at -14.5 and -10.5 mm along the slice normal, about 3 "
                                         r"slices missing\), the others 1.00 mm; .*Export the complete series again"):
        read_image(tmp_path)
    assert capfd.readouterr().err == ""  # not ITK's own warning either


def test_a_dicom_series_whose_slice_positions_are_rounded_is_read_without_itk_warnings(small_phantom, tmp_path, capfd):
    ct, _ = small_phantom
    sub = ct[:, :, 20:30]
    _write_dicom_series(sub, tmp_path, "1.2.826.0.1.3680043.2.1125.6")
    moved = tmp_path / "slice005.dcm"  # one slice 0.05 mm off, as positions written with few digits are
    image = sitk.ReadImage(str(moved))
    x, y, z = sub.TransformIndexToPhysicalPoint((0, 0, 5))
    image.SetMetaData("0020|0032", f"{x}\\{y}\\{z + 0.05}")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(moved))
    writer.Execute(image)
    assert read_image(tmp_path).GetSize() == sub.GetSize()
    assert capfd.readouterr().err == ""


def test_images_are_written_all_or_none(small_phantom, tmp_path):
    ct, _ = small_phantom
    with pytest.raises(InputError, match="could not be written"):
        write_images([(ct, tmp_path / "first.nrrd"), (ct, tmp_path / "second.unknown")])
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_a_folder_stops_the_writing_before_any_file_is_replaced(small_phantom, tmp_path):
    ct, _ = small_phantom
    (tmp_path / "labels.nrrd").write_bytes(b"earlier labels")
    (tmp_path / "probabilities.nrrd").mkdir()
    with pytest.raises(InputError, match="probabilities.nrrd: is a folder"):
        write_images([(ct, tmp_path / "labels.nrrd"), (ct, tmp_path / "probabilities.nrrd")])
    assert (tmp_path / "labels.nrrd").read_bytes() == b"earlier labels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nrrd", "probabilities.nrrd"]


def test_a_rename_that_fails_leaves_no_temporary_file_and_names_what_was_written(small_phantom, tmp_path,
                                                                               monkeypatch):
    ct, _ = small_phantom
    replace, calls = imageio.os.replace, []

    def second_fails(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        replace(source, destination)

    monkeypatch.setattr(imageio.os, "replace", second_fails)
    with pytest.raises(InputError) as error:
        write_images([(ct, tmp_path / "a.nrrd"), (ct, tmp_path / "b.nrrd"), (ct, tmp_path / "c.nrrd")])
    assert "b.nrrd: could not be written (No space left on device)" in str(error.value)
    assert str(error.value).endswith(f"already written: {tmp_path / 'a.nrrd'}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.nrrd"]


def test_a_nifti_of_unsigned_values_with_a_rescale_is_read_in_hounsfield_units(tmp_path):
    """dcm2niix and others store CT as unsigned 16-bit with an intercept of -1024: 2 bytes a voxel on disk, 4 once
    rescaled (the completeness check once counted 4 and called such files truncated)."""
    hu = np.random.default_rng(0).integers(-1024, 2000, (12, 16, 20)).astype(np.int16)
    path = tmp_path / "ct.nii"
    sitk.WriteImage(sitk.GetImageFromArray((hu.astype(np.int32) + 1024).astype(np.uint16)), str(path))
    header = bytearray(path.read_bytes())
    header[112:120] = struct.pack("<2f", 1.0, -1024.0)  # scl_slope, scl_inter
    path.write_bytes(bytes(header))
    assert np.array_equal(sitk.GetArrayFromImage(read_image(path)), hu.astype(np.float32))
    path.write_bytes(bytes(header)[:-100])
    with pytest.raises(InputError, match="file is truncated"):
        read_image(path)


def test_the_bytes_a_nifti_needs_come_from_its_header_offset_and_stored_size():
    header = bytearray(348)
    header[0:4] = struct.pack("<i", 348)
    header[40:56] = struct.pack("<8h", 3, 10, 20, 30, 1, 1, 1, 1)
    header[72:74] = struct.pack("<h", 16)
    header[108:112] = struct.pack("<f", 4448.0)  # an extension before the voxels
    assert imageio.nifti_data_end(bytes(header)) == 4448 + 10 * 20 * 30 * 2
    assert imageio.nifti_data_end(b"not a nifti header") is None


def test_unreadable_truncated_and_missing_files_give_one_line_errors(small_phantom, tmp_path):
    garbage = tmp_path / "garbage.nrrd"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot be read") as err:
        read_image(garbage)
    assert "\n" not in str(err.value)
    ct, _ = small_phantom
    full = tmp_path / "full.nii.gz"
    write_image(ct, full)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        read_image(truncated)
    for suffix in (".nii", ".nrrd", ".mha"):
        whole = tmp_path / f"whole{suffix}"
        write_image(ct, whole, compress=suffix != ".nii")
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        with pytest.raises(InputError, match="truncated|cannot be read"):
            read_image(cut)
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "absent.nrrd")
    with pytest.raises(InputError, match="no DICOM series"):
        (tmp_path / "d").mkdir()
        read_image(tmp_path / "d")


def test_metaimage_files_missing_their_data_or_truncated_name_the_problem_in_one_line(small_phantom, tmp_path, capfd):
    ct, _ = small_phantom
    needed = ct.GetNumberOfPixels() * 2  # Int16
    sitk.WriteImage(ct, str(tmp_path / "split.mhd"))
    raw = tmp_path / "split.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(InputError, match=rf"^{tmp_path}/split.mhd: data truncated: 1000 of {needed} bytes in {raw}; "
                                         "copy the file again$"):
        read_image(tmp_path / "split.mhd")
    raw.unlink()
    with pytest.raises(InputError, match=rf"^{tmp_path}/split.mhd: its voxel data file {raw} \(ElementDataFile in "
                                         r"the header\) is missing"):
        read_image(tmp_path / "split.mhd")
    for compress in (False, True):
        whole = tmp_path / f"whole_{compress}.mha"
        sitk.WriteImage(ct, str(whole), compress)
        cut = tmp_path / f"cut_{compress}.mha"
        cut.write_bytes(whole.read_bytes()[:-1000])
        with pytest.raises(InputError, match=rf"^{cut}: data truncated: \d+ of \d+ bytes; copy the file again$"):
            read_image(cut)
        assert read_image(whole).GetSize() == ct.GetSize()
    assert capfd.readouterr().err == ""  # not MetaIO's own lines either


def test_two_dimensional_and_non_finite_images_are_rejected(tmp_path):
    flat = sitk.Image([32, 32], sitk.sitkInt16)
    write_image(flat, tmp_path / "flat.nrrd")
    with pytest.raises(InputError, match="3-D"):
        read_image(tmp_path / "flat.nrrd")
    nan = sitk.GetImageFromArray(np.full((8, 8, 8), np.nan, dtype=np.float32))
    write_image(nan, tmp_path / "nan.nrrd")
    with pytest.raises(InputError, match="NaN or infinite"):
        read_image(tmp_path / "nan.nrrd")


@pytest.mark.parametrize("spacing", [(0.001, 0.001, 0.001), (0.7, 0.7, 25.0)])
def test_voxel_sizes_no_ct_has_are_refused_naming_them(small_phantom, tmp_path, spacing):
    """A spacing in metres (a units mistake) or far too coarse: from a file and in Python."""
    ct = sitk.Image(small_phantom[0])
    ct.SetSpacing(spacing)
    write_image(ct, tmp_path / "ct.nrrd")
    shown = "x".join(f"{s:.2g}" for s in spacing)
    with pytest.raises(InputError, match=rf"ct.nrrd: voxel size {shown} mm is not a CT's \(expected 0.05 to 20 mm "
                                         r"along each axis\); the spacing in its header is wrong or in other units"):
        read_image(tmp_path / "ct.nrrd")
    with pytest.raises(InputError, match=rf"^fixed image: voxel size {shown} mm is not a CT's"):
        to_fixed_grid(ct, ct)


def test_thick_slices_and_fine_voxels_are_read(small_phantom, tmp_path):
    for spacing in [(0.7, 0.7, 5.0), (0.3, 0.3, 0.3), (0.05, 0.05, 20.0)]:
        ct = sitk.Image(small_phantom[0])
        ct.SetSpacing(spacing)
        write_image(ct, tmp_path / "ct.nrrd")
        assert read_image(tmp_path / "ct.nrrd").GetSpacing() == pytest.approx(spacing)


def test_writing_into_a_missing_folder_fails_before_touching_anything(small_phantom, tmp_path):
    ct, _ = small_phantom
    with pytest.raises(InputError, match="does not exist"):
        write_image(ct, tmp_path / "missing" / "out.nrrd")


def test_images_that_do_not_overlap_are_rejected(small_phantom):
    ct, _ = small_phantom
    far = sitk.Image(ct)
    far.SetOrigin(tuple(np.asarray(ct.GetOrigin()) + 1000.0))
    with pytest.raises(InputError, match="do not overlap"):
        to_fixed_grid(ct, far)


def test_moving_on_another_grid_is_resampled_with_a_warning(small_phantom, caplog):
    ct, _ = small_phantom
    coarse = sitk.Resample(ct, [n // 2 for n in ct.GetSize()], sitk.Transform(), sitk.sitkLinear, ct.GetOrigin(),
                           [2.0] * 3, ct.GetDirection(), -1024, ct.GetPixelID())
    with caplog.at_level(logging.WARNING, logger="RegistrationMisalignment"):
        moving, inside = moving_on_fixed_grid(ct, coarse)
    assert "resampling" in caplog.text
    assert moving.GetSize() == ct.GetSize() and inside.GetSize() == ct.GetSize()
    assert 0.7 < sitk.GetArrayViewFromImage(inside).mean() <= 1.0


def test_user_mask_overrides_the_automatic_lung_mask_and_empty_masks_are_rejected(small_phantom):
    ct, lungs = small_phantom
    box = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
    box.CopyInformation(ct)
    box[30:40, 30:40, 30:40] = 1
    pair = to_fixed_grid(ct, ct, mask=box)
    assert sitk.GetArrayViewFromImage(pair.mask).sum() == 1000
    with pytest.raises(InputError, match="mask is empty"):
        to_fixed_grid(ct, ct, mask=box * 0)
    auto = to_fixed_grid(ct, ct).mask
    overlap = (sitk.GetArrayViewFromImage(auto) & sitk.GetArrayViewFromImage(lungs)).sum()
    assert overlap / sitk.GetArrayViewFromImage(lungs).sum() > 0.9


def test_a_fixed_image_without_a_body_is_refused(small_phantom):
    ct, _ = small_phantom
    air = sitk.Image(ct.GetSize(), sitk.sitkInt16) - 1000
    air.CopyInformation(ct)
    with pytest.raises(InputError, match="no body found in the fixed image"):
        to_fixed_grid(air, ct)


def test_library_messages_lose_itk_memory_addresses():
    from RegistrationMisalignmentLib.errors import library_reason
    error = RuntimeError("Exception thrown in SimpleITK ReadTransform\nITK ERROR: TxtTransformIOTemplate(0x55b5c5ad06b0): "
                         "Tags must be delimited by :")
    assert library_reason(error) == "ITK ERROR: TxtTransformIOTemplate: Tags must be delimited by :"
    assert library_reason(RuntimeError("")) == "unknown reason"
