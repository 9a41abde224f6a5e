"""Transforms that would silently give a wrong map: a displacement field or B-spline grid that does not cover the
region to evaluate (ITK takes no displacement outside it), NaN in a field."""
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.preprocessing import to_fixed_grid
from RegistrationMisalignmentLib.transforms import read_transform


def _field(reference: sitk.Image, shift_mm=(0.0, 0.0, 0.0), size=None, spacing=2.0, vector=(0.0, 0.0, 0.0)):
    """A constant displacement field over the reference's extent (or `size` samples), its grid moved by `shift_mm`."""
    size = size or [int(np.ceil(n / spacing)) for n in reference.GetSize()]
    field = sitk.Image([int(n) for n in size], sitk.sitkVectorFloat64, 3)
    field.SetSpacing((spacing,) * 3)
    field.SetOrigin(tuple(np.asarray(reference.GetOrigin()) + shift_mm))
    field.SetDirection(reference.GetDirection())
    array = sitk.GetArrayFromImage(field)
    array[:] = vector
    filled = sitk.GetImageFromArray(array, isVector=True)
    filled.CopyInformation(field)
    return filled


def _mask_voxels(pair) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(pair.mask)))


def test_a_field_on_another_grid_far_away_is_refused_not_taken_as_no_transform(small_pair):
    far = sitk.DisplacementFieldTransform(_field(small_pair.fixed, shift_mm=(9000.0, 9000.0, 9000.0)))
    with pytest.raises(InputError, match=r"displacement field does not reach the fixed image \(its displacement "
                                         r"field spans x 8\d\d\d..9\d\d\d.*the same as no transform; write it on "
                                         "the fixed image's grid, in LPS"):
        to_fixed_grid(small_pair.fixed, small_pair.moving, transform=far)


def test_a_field_over_the_fixed_image_is_taken_everywhere_without_a_warning(small_pair, caplog):
    whole = sitk.DisplacementFieldTransform(_field(small_pair.fixed))
    with caplog.at_level(logging.WARNING, "RegistrationMisalignment"):
        pair = to_fixed_grid(small_pair.fixed, small_pair.moving, transform=whole)
    assert not caplog.records
    assert _mask_voxels(pair) == _mask_voxels(to_fixed_grid(small_pair.fixed, small_pair.moving))


def test_a_field_over_part_of_the_region_warns_with_its_share_and_leaves_the_rest_unevaluated(small_pair, caplog):
    fixed = small_pair.fixed
    half = [n // 4 for n in fixed.GetSize()[:1]] + [n // 2 + 1 for n in fixed.GetSize()[1:]]  # 2 mm: half along x
    with caplog.at_level(logging.WARNING, "RegistrationMisalignment"):
        pair = to_fixed_grid(fixed, small_pair.moving, transform=sitk.DisplacementFieldTransform(_field(fixed,
                                                                                                       size=half)))
    assert "the transform's displacement field covers only" in caplog.text and "the rest is labelled 0" in caplog.text
    mask = sitk.GetArrayViewFromImage(pair.mask)
    assert mask.any() and not mask[:, :, fixed.GetSize()[0] // 2 + 2:].any()  # nothing beyond the field
    assert not sitk.GetArrayViewFromImage(pair.inside)[:, :, fixed.GetSize()[0] // 2 + 2:].any()


def test_a_field_over_a_corner_of_the_region_only_is_refused(small_pair):
    corner = sitk.DisplacementFieldTransform(_field(small_pair.fixed, size=(4, 4, 4)))
    with pytest.raises(InputError, match=r"displacement field covers \d % of the region to evaluate"):
        to_fixed_grid(small_pair.fixed, small_pair.moving, transform=corner)


def test_a_b_spline_grid_elsewhere_is_refused(small_pair):
    far = sitk.BSplineTransformInitializer(sitk.Image(small_pair.fixed) * 0, [4, 4, 4])
    far.SetTransformDomainOrigin(tuple(np.asarray(far.GetTransformDomainOrigin()) + 5000.0))
    with pytest.raises(InputError, match="B-spline grid does not reach the fixed image"):
        to_fixed_grid(small_pair.fixed, small_pair.moving, transform=far)


def test_a_field_applied_after_a_translation_is_checked_where_the_translation_takes_the_points(small_pair, caplog):
    fixed = small_pair.fixed
    shifted = sitk.DisplacementFieldTransform(_field(fixed, shift_mm=(60.0, 0.0, 0.0)))
    # ITK applies a composite's last added transform first: the translation, which takes fixed points into the field
    composite = sitk.CompositeTransform([shifted, sitk.TranslationTransform(3, (60.0, 0.0, 0.0))])
    with caplog.at_level(logging.WARNING, "RegistrationMisalignment"):
        to_fixed_grid(fixed, small_pair.moving, transform=composite)
    assert "displacement field" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, "RegistrationMisalignment"):
        to_fixed_grid(fixed, small_pair.moving, transform=sitk.CompositeTransform([shifted]))
    assert "the transform's displacement field covers only" in caplog.text


def test_a_field_holding_nan_is_refused_from_its_file_and_in_python(small_pair, tmp_path):
    array = sitk.GetArrayFromImage(_field(small_pair.fixed))
    array[10, 10, 10, 0] = np.nan
    field = sitk.GetImageFromArray(array, isVector=True)
    field.CopyInformation(_field(small_pair.fixed))
    path = tmp_path / "field.nrrd"
    sitk.WriteImage(field, str(path))
    with pytest.raises(InputError, match=f"^{path}: the displacement field holds NaN or infinite values"):
        read_transform(path)
    with pytest.raises(InputError, match="^the transform's displacement field holds NaN or infinite values"):
        to_fixed_grid(small_pair.fixed, small_pair.moving, transform=sitk.DisplacementFieldTransform(field))
    with pytest.raises(InputError, match="^the transform's TranslationTransform holds NaN"):
        to_fixed_grid(small_pair.fixed, small_pair.moving, transform=sitk.TranslationTransform(3, (np.inf, 0, 0)))
