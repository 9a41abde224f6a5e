"""The robustness check: a CT against itself, changed without misalignment or shifted by a known residual."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, released_weights_path
from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.inference import MisalignmentPredictor
from RegistrationMisalignmentLib.robustness import condition_pair, evaluate_robustness, score_condition
from RegistrationMisalignmentLib.robustness_conditions import CONDITIONS

from conftest import image_like

BY_NAME = {c.name: c for c in CONDITIONS}


@pytest.fixture(scope="module")
def ct(small_phantom):
    return sitk.Cast(small_phantom[0], sitk.sitkFloat32)


def test_each_condition_changes_only_what_it_says(ct):
    hu = sitk.GetArrayFromImage(ct)
    body = hu > -500
    for name in ("identical", "smoothed_1mm", "slices_3mm", "lungs_density_1.6", "shift_4.5mm"):
        fixed, moving = condition_pair(ct, body, BY_NAME[name])
        assert np.array_equal(sitk.GetArrayViewFromImage(fixed), hu)  # the fixed image is the CT itself
        assert (np.array_equal(sitk.GetArrayViewFromImage(moving), hu)) == (name == "identical")
    assert np.array_equal(sitk.GetArrayViewFromImage(ct), hu)  # the input is never modified
    fixed, moving = (sitk.GetArrayFromImage(i) for i in condition_pair(ct, body, BY_NAME["noise_40hu"]))
    difference = (fixed - moving)[body]
    assert abs(difference.std() - 40.0 * np.sqrt(2.0)) < 2.0 and np.array_equal(fixed[~body], hu[~body])


def test_shift_moves_the_anatomy_by_the_true_residual(ct):
    _, moving = condition_pair(ct, None, BY_NAME["shift_9mm"])
    hu, shifted = sitk.GetArrayFromImage(ct), sitk.GetArrayFromImage(moving)
    assert np.allclose(shifted[40:-40], hu[49:-31], atol=1.0)  # moving(z) = CT(z + 9 mm) on the 1 mm grid


@pytest.mark.parametrize("name, axis", [("shift_4.5mm_lr", 2), ("shift_4.5mm_ap", 1)])  # numpy axes of x, y
def test_shifts_along_the_other_axes_move_the_anatomy_there(ct, name, axis):
    hu = sitk.GetArrayFromImage(ct)
    shifted = sitk.GetArrayFromImage(condition_pair(ct, None, BY_NAME[name])[1])
    inner = (slice(10, -10),) * 3
    expected = (np.roll(hu, -4, axis) + np.roll(hu, -5, axis)) / 2.0  # CT(x + 4.5 mm), about, on the 1 mm grid
    error, unshifted = (np.abs(a[inner] - expected[inner]).mean() for a in (shifted, hu))
    assert error < 0.25 * unshifted


def test_score_counts_lung_voxels_per_predicted_class(ct):
    labels = np.full(sitk.GetArrayViewFromImage(ct).shape, L.CORRECT, dtype=np.uint8)
    lungs = np.zeros(labels.shape, dtype=bool)
    lungs[:10] = True
    labels[:2] = L.POOR
    labels[2:5] = L.WRONG
    labels[20:] = L.WRONG  # outside the lungs: not counted
    result = score_condition(image_like(labels, ct), lungs, BY_NAME["shift_4.5mm"])
    assert result["true_class"] == "poor" and result["accuracy"] == pytest.approx(0.2)
    assert result["shares"] == pytest.approx({"correct": 0.5, "poor": 0.2, "wrong": 0.3})


def test_released_model_tells_identical_images_from_a_9mm_shift(small_phantom):
    predictor = MisalignmentPredictor.load(device="cpu")
    result = evaluate_robustness(predictor, small_phantom[0], [BY_NAME["identical"], BY_NAME["shift_9mm"]])
    identical, shifted = result["conditions"]
    assert result["lung_voxels"] > 10000
    assert identical["true_class"] == "correct" and identical["accuracy"] > 0.99
    # release: 59 % wrong, 7 % correct on this small phantom (88 slices: the shift moves a tenth of it out of view)
    assert shifted["true_class"] == "wrong" and shifted["accuracy"] > 0.5 and shifted["shares"]["correct"] < 0.15
    assert result["mean_accuracy_without_misalignment"] == identical["accuracy"]


def test_command_reports_the_chosen_conditions_as_json(small_phantom, tmp_path, capsys):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(small_phantom[0], str(path))
    assert main(["evaluate-robustness", "--ct", str(path), "--condition", "lungs_density_1.3", "--json",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in result["conditions"]] == ["lungs_density_1.3"]
    assert result["mean_accuracy_shifted"] is None and len(result["weights_sha256"]) == 64
    with pytest.raises(SystemExit):
        main(["evaluate-robustness", "--ct", str(path), "--condition", "no_such_condition"])
    capsys.readouterr()
    block = tmp_path / "no_lungs.nrrd"  # soft tissue only
    sitk.WriteImage(image_like(np.full((40, 48, 48), 40, dtype=np.int16), small_phantom[0][:48, :48, :40]), str(block))
    assert main(["evaluate-robustness", "--ct", str(block), "--device", "cpu"]) == 2
    assert "no lungs found" in capsys.readouterr().err


def test_card_option_adds_the_results_to_a_released_models_card(small_phantom, tiny_model, tmp_path, capsys):
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(small_phantom[0], str(path))
    common = ["evaluate-robustness", "--ct", str(path), "--condition", "identical", "--device", "cpu", "--json"]
    bare = tmp_path / "bare.safetensors"
    export_weights(tiny_model, bare)
    assert main([*common, "--weights", str(bare), "--card"]) == 2
    assert "has no model card" in capsys.readouterr().err
    released = tmp_path / released_weights_path().name
    shutil.copyfile(released_weights_path(), released)
    shutil.copyfile(card_path(released_weights_path()), card_path(released))
    assert main([*common, "--weights", str(released), "--card"]) == 0
    assert "it now holds this run's 1 (the section is one run" in capsys.readouterr().err  # had 14
    card = json.loads(card_path(released).read_text())
    assert [c["name"] for c in card["robustness"]["conditions"]] == ["identical"]
    assert card["robustness"]["command"].endswith(f"--condition identical --weights {released}")
    markdown = released.with_name(card["name"] + ".md").read_text()
    assert "## Robustness to how real pairs differ" in markdown and "| moving = fixed | correct | 100.0 % |" in markdown


def test_card_option_refuses_a_ct_the_weights_were_trained_on(small_phantom, tmp_path, capsys):
    from RegistrationMisalignmentLib.sources import ct_fingerprint
    path = tmp_path / "renamed_training_ct.nrrd"
    sitk.WriteImage(small_phantom[0], str(path))
    released = tmp_path / released_weights_path().name
    shutil.copyfile(released_weights_path(), released)
    card = json.loads(card_path(released_weights_path()).read_text())
    card["training_ct_fingerprints"] = [ct_fingerprint(small_phantom[0])]  # as if trained on this CT
    card_path(released).write_text(json.dumps(card))
    before = card_path(released).read_text()
    assert main(["evaluate-robustness", "--ct", str(path), "--condition", "identical", "--device", "cpu",
                 "--weights", str(released), "--card"]) == 2
    assert "is a training CT of this run or of the weights it started from" in capsys.readouterr().err
    assert card_path(released).read_text() == before
