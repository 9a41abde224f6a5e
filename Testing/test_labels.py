"""Class thresholds and label values."""
import numpy as np

from RegistrationMisalignmentLib import labels as L


def test_thresholds_are_inclusive_upper_bounds():
    mm = np.array([0.0, 2.99, 3.0, 3.01, 6.0, 6.01, 40.0])
    assert L.label_value(mm).tolist() == [1, 1, 1, 2, 2, 3, 3]


def test_every_class_has_name_range_and_colour():
    for value in L.CLASS_VALUES:
        assert L.display_name(value).startswith(L.CLASS_NAMES[value])
        assert len(L.CLASS_COLORS[value]) == 3
    assert L.display_name(L.WRONG) == "wrong (> 6 mm)"


def test_coarse_classes_group_the_fine_ones():
    assert L.class_index([2.0, 5.0, 9.0], L.COARSE_THRESHOLDS_MM[4]).tolist() == [0, 0, 1]
    assert L.class_index([2.0, 5.0, 9.0], L.COARSE_THRESHOLDS_MM[2]).tolist() == [0, 1, 1]
