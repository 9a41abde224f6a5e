"""The landmark protocol: file formats, residuals, metrics on a known field, elastix setups, bad input."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

from RegistrationMisalignmentLib import labels as L
from RegistrationMisalignmentLib.checkpoint import card_path, export_weights, load_model, released_weights_path
from RegistrationMisalignmentLib.cli import main
from RegistrationMisalignmentLib.errors import InputError
from RegistrationMisalignmentLib.imageio import write_image
from RegistrationMisalignmentLib.landmark_evaluation import register, residuals, warn_if_outside_mask
from RegistrationMisalignmentLib.metrics import expected_calibration_error
from RegistrationMisalignmentLib.landmarks import check_inside, read_landmarks

from conftest import save_weights_with_card

POINTS = np.array([[-10.5, 4.0, 2.25], [12.0, -6.5, 0.0], [3.0, 3.0, -8.0]])


def _write_all_formats(folder, points):
    ras = points * [-1, -1, 1]
    (folder / "p.txt").write_text("point\n3\n" + "\n".join(" ".join(map(str, p)) for p in points))
    (folder / "p.csv").write_text("x,y,z\n" + "\n".join(",".join(map(str, p)) for p in points))
    (folder / "p.mrk.json").write_text(json.dumps({"markups": [{"coordinateSystem": "RAS", "controlPoints": [
        {"position": list(p)} for p in ras]}]}))
    (folder / "p.fcsv").write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
                                   "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
                                   + "\n".join(f"{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,F-{i},," for i, p in
                                               enumerate(ras)))
    return ["p.txt", "p.csv", "p.mrk.json", "p.fcsv"]


def test_every_landmark_format_gives_the_same_lps_points(tmp_path, small_phantom):
    for name in _write_all_formats(tmp_path, POINTS):
        assert np.allclose(read_landmarks(tmp_path / name), POINTS), name
    ct, _ = small_phantom
    index = [ct.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in POINTS]
    (tmp_path / "i.txt").write_text("index\n3\n" + "\n".join(" ".join(map(str, p)) for p in index))
    assert np.allclose(read_landmarks(tmp_path / "i.txt", ct), POINTS)


def test_bad_landmark_files_give_clear_errors(tmp_path, small_phantom):
    (tmp_path / "bad.csv").write_text("x,y,z\n1,2,3\n4,five,6\n")
    with pytest.raises(InputError, match=r"bad.csv:3: cannot parse"):  # the file's line
        read_landmarks(tmp_path / "bad.csv")
    (tmp_path / "count.txt").write_text("point\n3\n1 2 3\n4 5 6\n")
    with pytest.raises(InputError, match="header says 3 points but the file has 2"):
        read_landmarks(tmp_path / "count.txt")
    ct, _ = small_phantom
    with pytest.raises(InputError, match="landmark 2 .* outside the image"):
        check_inside(np.array([[0.0, 0.0, 0.0], [500.0, 0.0, 0.0]]), ct, "fixed landmarks")


def test_empty_unplaced_and_unfinite_landmarks_are_named_with_their_file_line(tmp_path):
    empty = {"e.csv": "x,y,z\n", "e.txt": "point\n0\n", "e.fcsv": "# CoordinateSystem = LPS\n",
             "e.mrk.json": json.dumps({"markups": [{"coordinateSystem": "LPS", "controlPoints": []}]})}
    for name, text in empty.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=f"{name}: holds no landmarks"):
            read_landmarks(tmp_path / name)
    (tmp_path / "gaps.csv").write_text("x,y,z\n1,2,3\n\n4,5,6\n7,eight,9\n")
    with pytest.raises(InputError, match=r"gaps.csv:5: cannot parse"):
        read_landmarks(tmp_path / "gaps.csv")
    (tmp_path / "gaps.txt").write_text("point\n2\n\n1 2 3\n4 5\n")
    with pytest.raises(InputError, match=r"gaps.txt:5: expected three coordinates"):
        read_landmarks(tmp_path / "gaps.txt")
    (tmp_path / "nan.csv").write_text("1,2,3\nnan,2,3\n")
    with pytest.raises(InputError, match=r"nan.csv:2: coordinates 'nan 2 3' are not all finite"):
        read_landmarks(tmp_path / "nan.csv")
    unplaced = {"coordinateSystem": "LPS", "controlPoints": [{"label": "F-1", "position": [1, 2, 3]},
                                                             {"label": "F-2", "positionStatus": "undefined"}]}
    (tmp_path / "u.mrk.json").write_text(json.dumps({"markups": [unplaced]}))
    with pytest.raises(InputError, match=r"control point 2 \(F-2\) has no position"):
        read_landmarks(tmp_path / "u.mrk.json")
    (tmp_path / "ijk.mrk.json").write_text(json.dumps({"markups": [dict(unplaced, coordinateSystem="IJK",
                                                                        controlPoints=[{"position": [1, 2, 3]}])]}))
    with pytest.raises(InputError, match="coordinate system 'IJK' is not supported"):
        read_landmarks(tmp_path / "ijk.mrk.json")


def test_residuals_are_distances(tmp_path):
    from RegistrationMisalignmentLib.cli_evaluation import read_residuals
    (tmp_path / "r.csv").write_text("residual_mm\n1.5\n0\n")
    assert read_residuals(tmp_path / "r.csv") == [1.5, 0.0]
    for bad in ("-0.5", "nan", "inf"):
        (tmp_path / "bad.csv").write_text(f"residual_mm\n1.5\n{bad}\n")
        with pytest.raises(InputError, match="bad.csv:3: a residual is a distance"):
            read_residuals(tmp_path / "bad.csv")


def test_residuals_come_from_the_named_column_and_other_layouts_are_refused(tmp_path):
    """A landmark number beside the residual is never read as the residual."""
    from RegistrationMisalignmentLib.cli_evaluation import read_residuals
    layouts = {"id_first.csv": "landmark,residual_mm\n1,8.5\n2,0.25\n",
               "x_y_z.csv": "x,y,z,Residual (mm)\n-10,5,3,8.5\n4,4,4,0.25\n",
               "plain.csv": "8.5\n\n0.25\n"}
    for name, text in layouts.items():
        (tmp_path / name).write_text(text)
        assert read_residuals(tmp_path / name) == [8.5, 0.25], name
    refused = {"unnamed.csv": ("landmark,distance\n1,8.5\n", "name exactly one of them residual_mm"),
               "two.csv": ("residual_a,residual_b\n1,2\n", "name exactly one of them residual_mm"),
               "no_header.csv": ("1,8.5\n2,0.25\n", "2 columns and no header row"),
               "text.csv": ("residual_mm\n1.5\nabout 2\n", "text.csv:3: cannot parse 'about 2'")}
    for name, (text, message) in refused.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=message):
            read_residuals(tmp_path / name)
    with pytest.raises(InputError, match="absent.csv: no such file"):
        read_residuals(tmp_path / "absent.csv")
    (tmp_path / "excel.csv").write_bytes("\ufeff8.5\n0.25\n".encode())  # "CSV UTF-8" starts with a byte-order mark
    assert read_residuals(tmp_path / "excel.csv") == [8.5, 0.25]
    (tmp_path / "latin1.csv").write_bytes("r\xe9sidu_mm\n8.5\n".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.csv: not UTF-8 text"):
        read_residuals(tmp_path / "latin1.csv")


def test_residual_uses_the_fixed_to_moving_displacement():
    field = sitk.Image([10, 10, 10], sitk.sitkVectorFloat64, 3)
    field.SetOrigin((-5.0, -5.0, -5.0))
    field += 0  # zero field
    array = sitk.GetArrayFromImage(field)
    array[...] = (2.0, 0.0, 0.0)
    shifted = sitk.GetImageFromArray(array, isVector=True)
    shifted.CopyInformation(field)
    fixed = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    moving = fixed + [2.0, 0.0, 0.0] + [[0.0, 0.0, 0.0], [0.0, 3.0, 4.0]]
    assert np.allclose(residuals(shifted, fixed, moving), [0.0, 5.0])


@pytest.fixture(scope="module")
def weights(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights_with_card(tiny_model, path)
    return path


def _evaluate_known_field(small_pair, weights, folder, extra=()) -> tuple:
    """Run `evaluate` on the pair with its exact residuals at 60 random voxels; returns (exit code, points, truth)."""
    rng = np.random.default_rng(0)
    magnitude = small_pair.magnitude_mm
    voxels = np.argwhere(magnitude > -1)[rng.choice(magnitude.size, 60, replace=False)]
    voxels = voxels[(voxels > 10).all(1) & (voxels < np.array(magnitude.shape) - 10).all(1)]
    points = np.array([small_pair.fixed.TransformIndexToPhysicalPoint([int(v) for v in c[::-1]]) for c in voxels])
    folder.mkdir(parents=True, exist_ok=True)
    write_image(small_pair.fixed, folder / "fixed.nrrd")
    write_image(small_pair.moving, folder / "moving.nrrd")
    np.savetxt(folder / "fixed.csv", points, delimiter=",")
    np.savetxt(folder / "residuals.csv", magnitude[tuple(voxels.T)], delimiter=",")
    code = main(["evaluate", "--fixed", str(folder / "fixed.nrrd"), "--fixed-landmarks", str(folder / "fixed.csv"),
                 "--registered-moving", str(folder / "moving.nrrd"), "--residuals", str(folder / "residuals.csv"),
                 "--weights", str(weights), "--device", "cpu", "--out", str(folder / "out"), "--json", *extra])
    return code, points, L.class_index(magnitude[tuple(voxels.T)])


def test_known_field_gives_exactly_known_truth_and_the_predicted_classes(small_pair, tiny_predictor, weights,
                                                                         tmp_path, capsys):
    code, points, truth = _evaluate_known_field(small_pair, weights, tmp_path, ["--compare", f"same={weights}"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    classes, probabilities = tiny_predictor.predict_points(small_pair.fixed, small_pair.moving, points)
    inside = [m["inside_mask"] for m in result["setups"]["given"]["landmarks"]]
    assert inside == (classes != L.NOT_EVALUATED).tolist() and 0 < sum(inside) < len(points)
    expected = np.zeros((3, 3), dtype=int)
    np.add.at(expected, (truth, probabilities.argmax(1)), 1)
    assert result["setups"]["given"]["confusion_matrix"] == expected.tolist()
    assert result["total"]["confusion_matrix"] == expected.tolist()
    assert result["compared"]["same"]["total"]["confusion_matrix"] == expected.tolist()
    assert "| given |" in (tmp_path / "out" / "evaluation.md").read_text()
    assert "### Compared: same" in (tmp_path / "out" / "evaluation.md").read_text()
    bands = result["total"]["by_residual"]["bands"]
    assert sum(b["n"] for b in bands) == len(points)
    right = sum(round(b["accuracy"] * b["n"]) for b in bands if b["n"])
    assert right == int(np.trace(expected))
    assert "Accuracy by true residual, all setups" in (tmp_path / "out" / "evaluation.md").read_text()
    ece = expected_calibration_error(probabilities, truth)  # of the landmarks' own probabilities
    assert result["setups"]["given"]["expected_calibration_error"] == pytest.approx(ece, abs=1e-6)
    assert result["total"]["expected_calibration_error"] == pytest.approx(ece, abs=1e-6)


def test_many_landmarks_outside_the_mask_get_a_warning_naming_the_likely_causes(caplog):
    def result(outside, n=20):
        return {"setups": {"affine": {"landmarks": [{"inside_mask": i >= outside} for i in range(n)]}}}
    warn_if_outside_mask(result(2), given_mask=False)  # 10 %: a few landmarks at the lungs' edge are normal
    assert not caplog.records
    warn_if_outside_mask(result(3), given_mask=False)
    assert "3 of 20 fixed landmarks lie outside the automatic lung mask" in caplog.text
    assert "negate x and y of RAS ones" in caplog.text
    warn_if_outside_mask(result(20), given_mask=True)
    assert "20 of 20 fixed landmarks lie outside the given mask" in caplog.text


def test_card_landmarks_puts_the_pooled_results_into_the_model_card(small_pair, tiny_model, tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    card = json.loads(card_path(released_weights_path()).read_text())
    card.update(name="model", weights=weights.name, sha256=export_weights(tiny_model, weights))
    card.pop("landmark_protocol", None)
    card_path(weights).write_text(json.dumps(card))
    pair = {"ct": "data/chest.nii.gz", "field": "respiratory", "max_mm": 20.0, "seed": 4, "points": 60, "note": "x"}
    (tmp_path / "landmark_pair.json").write_text(json.dumps(pair))
    assert _evaluate_known_field(small_pair, weights, tmp_path)[0] == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert main(["card-landmarks", "--weights", str(weights), "--evaluation", str(tmp_path / "out"), "--json"]) == 0
    entry = json.loads(card_path(weights).read_text())["landmark_protocol"][0]
    assert (entry["accuracy"], entry["confusion_matrix"], entry["pair"], entry["synthetic"]) == \
        (total["accuracy"], total["confusion_matrix"], pair, True)
    assert entry["expected_calibration_error"] == pytest.approx(total["expected_calibration_error"])
    markdown = (tmp_path / "model.md").read_text()
    assert "## Landmark protocol" in markdown
    assert "chest warped by a known respiratory field <= 20 mm, seed 4" in markdown
    assert f"| {100 * total['accuracy']:.1f} % |" in markdown
    assert load_model(weights)  # the card still matches the weights
    assert "registered pairs with given residuals; the residual" in markdown and "elastix in the setups" not in markdown
    assert (entry["registered_by"], entry["setups"]) == ("given residuals", None)
    (tmp_path / "landmark_pair.json").write_text(json.dumps(dict(pair, seed=5)))  # another pair: added beside
    assert _evaluate_known_field(small_pair, weights, tmp_path)[0] == 0
    assert main(["card-landmarks", "--weights", str(weights), "--evaluation", str(tmp_path / "out")]) == 0
    assert [e["pair"]["seed"] for e in json.loads(card_path(weights).read_text())["landmark_protocol"]] == [4, 5]
    assert main(["card-landmarks", "--weights", str(weights), "--evaluation", str(tmp_path / "out")]) == 0
    assert len(json.loads(card_path(weights).read_text())["landmark_protocol"]) == 2  # the same pair: replaced
    capsys.readouterr()
    assert main(["card-landmarks", "--weights", str(weights), "--evaluation", str(tmp_path / "missing")]) == 2
    assert "evaluation.json" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    card_path(other).write_text(json.dumps(dict(card, name="other", weights=other.name, sha256="0" * 64)))
    assert main(["card-landmarks", "--weights", str(other), "--evaluation", str(tmp_path / "out")]) == 2
    assert "scores other weights" in capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    del result["provenance"]  # as an evaluate before 0.5.0 wrote it
    (tmp_path / "out" / "evaluation.json").write_text(json.dumps(result))
    assert main(["card-landmarks", "--weights", str(weights), "--evaluation", str(tmp_path / "out")]) == 2
    assert "did not record the weights it scored" in capsys.readouterr().err


def test_a_landmark_pair_from_a_known_field_has_exact_correspondences(small_phantom, tmp_path, capsys):
    ct, _ = small_phantom
    write_image(ct, tmp_path / "ct.nrrd")
    assert main(["make-landmark-pair", "--ct", str(tmp_path / "ct.nrrd"), "--out", str(tmp_path / "pair"),
                 "--points", "80", "--field", "single_frequency", "--max-mm", "10", "--seed", "3"]) == 0
    fixed, moving = (sitk.ReadImage(str(tmp_path / "pair" / f"{n}.nrrd")) for n in ("fixed", "moving"))
    fixed_points, moving_points = (read_landmarks(tmp_path / "pair" / f"{n}_landmarks.csv")
                                   for n in ("fixed", "moving"))
    assert fixed_points.shape == moving_points.shape == (80, 3)
    shift = np.linalg.norm(moving_points - fixed_points, axis=1)
    assert shift.max() <= 10.0 + 1e-3 and shift.max() > 3.0

    def values(image, points):
        return np.array([image.EvaluateAtPhysicalPoint(tuple(p), sitk.sitkLinear) for p in points])
    matched = np.abs(values(fixed, fixed_points) - values(moving, moving_points))
    unmatched = np.abs(values(fixed, fixed_points) - values(moving, fixed_points))
    assert np.median(matched) < 2.0 and np.median(unmatched) > 5 * np.median(matched) + 10
    assert (values(fixed, fixed_points) > -500).mean() > 0.9  # landmarks sit on lung structures


def test_affine_elastix_recovers_a_translation(small_phantom, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ct, _ = small_phantom
    shift = np.array([4.0, -3.0, 2.0])
    moving = sitk.Resample(ct, ct, sitk.TranslationTransform(3, tuple(-shift)), sitk.sitkLinear, -1024)
    points = np.array([[-15.0, 0.0, 0.0], [15.0, 5.0, -5.0], [0.0, -10.0, 10.0]])
    registered, displacement = register(ct, moving, "affine")
    assert registered.GetSize() == ct.GetSize()
    assert np.all(residuals(displacement, points, points + shift) < 1.5)
    assert np.linalg.norm(shift) > 5.0  # what the error would be without registration
    assert list(tmp_path.iterdir()) == []  # elastix/transformix leave nothing in the working folder


def test_protocol_runs_every_setup_and_rejects_mismatched_landmarks(small_pair, weights, tmp_path, capsys):
    write_image(small_pair.fixed, tmp_path / "fixed.nrrd")
    write_image(small_pair.moving, tmp_path / "moving.nrrd")
    np.savetxt(tmp_path / "f.csv", POINTS, delimiter=",")
    np.savetxt(tmp_path / "m.csv", POINTS + 1.0, delimiter=",")
    np.savetxt(tmp_path / "m2.csv", POINTS[:2], delimiter=",")
    base = ["evaluate", "--fixed", str(tmp_path / "fixed.nrrd"), "--moving", str(tmp_path / "moving.nrrd"),
            "--fixed-landmarks", str(tmp_path / "f.csv"), "--weights", str(weights), "--device", "cpu"]
    assert main(base + ["--moving-landmarks", str(tmp_path / "m2.csv")]) == 2
    assert "3 fixed landmarks but 2 moving landmarks" in capsys.readouterr().err
    (tmp_path / "none.csv").write_text("x,y,z\n")
    assert main(base + ["--moving-landmarks", str(tmp_path / "none.csv")]) == 2  # refused before any registration
    assert "none.csv: holds no landmarks" in capsys.readouterr().err
    assert main(base + ["--moving-landmarks", str(tmp_path / "m.csv"),
                        "--setups", "affine,bspline_poor", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["setups"]) == {"affine", "bspline_poor"} and result["total"]["n"] == 6


def test_evaluate_without_elastix_says_so_before_making_its_out_folder(tmp_path, capsys, monkeypatch):
    from RegistrationMisalignmentLib import landmark_evaluation

    def missing():
        raise InputError("the landmark protocol needs elastix: pip install itk-elastix")

    monkeypatch.setattr(landmark_evaluation, "elastix_module", missing)
    args = ["evaluate", "--fixed", "f.nrrd", "--moving", "m.nrrd", "--fixed-landmarks", "f.csv", "--moving-landmarks",
            "m.csv", "--out", str(tmp_path / "evaluation")]
    assert main(args) == 2 and "needs elastix" in capsys.readouterr().err
    assert not (tmp_path / "evaluation").exists()


def test_a_damaged_landmark_pair_description_is_refused_before_any_work(small_pair, weights, tmp_path, capsys):
    write_image(small_pair.fixed, tmp_path / "fixed.nrrd")
    np.savetxt(tmp_path / "fixed.csv", [[0.0, 0.0, 0.0]], delimiter=",")
    (tmp_path / "landmark_pair.json").write_text('{"ct": "chest.nii.gz", ')
    assert main(["evaluate", "--fixed", str(tmp_path / "fixed.nrrd"), "--fixed-landmarks", str(tmp_path / "fixed.csv"),
                 "--registered-moving", str(tmp_path / "missing.nrrd"), "--residuals", str(tmp_path / "r.csv"),
                 "--weights", str(weights)]) == 2
    assert "landmark_pair.json: not a readable landmark pair description" in capsys.readouterr().err


def test_evaluate_and_make_landmark_pair_refuse_bad_options_before_any_work(small_pair, tmp_path, capsys):
    """An --out that is a file or holds a folder named like an output, no setup, a negative field: one line, exit 2."""
    write_image(small_pair.fixed, tmp_path / "fixed.nrrd")
    write_image(small_pair.moving, tmp_path / "moving.nrrd")
    (tmp_path / "points.csv").write_text("0,0,0\n")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "taken" / "evaluation.md").mkdir(parents=True)
    evaluate = ["evaluate", "--fixed", str(tmp_path / "fixed.nrrd"), "--moving", str(tmp_path / "moving.nrrd"),
                "--fixed-landmarks", str(tmp_path / "points.csv"), "--moving-landmarks", str(tmp_path / "points.csv")]
    cases = [(evaluate + ["--out", str(tmp_path / "a_file")], "is a file; give a folder"),
             (evaluate + ["--out", str(tmp_path / "taken")], "evaluation.md: is a folder"),
             (evaluate + ["--setups", ","], "names no setup; choose from affine"),
             (["make-landmark-pair", "--ct", str(tmp_path / "fixed.nrrd"), "--out", str(tmp_path / "a_file")],
              "is a file; give a folder"),
             (["make-landmark-pair", "--ct", str(tmp_path / "fixed.nrrd"), "--out", str(tmp_path / "p"),
               "--max-mm", "-5"], "--max-mm must be more than 0"),
             (["make-landmark-pair", "--ct", str(tmp_path / "fixed.nrrd"), "--out", str(tmp_path / "p"),
               "--seed", "-1"], "--seed must be at least 0, got -1"),
             (["demo", "--out", str(tmp_path / "d"), "--max-mm", "-3"], "--max-mm must be more than 0"),
             (["demo", "--out", str(tmp_path / "d"), "--max-mm", "nan"], "--max-mm must be more than 0"),
             (["demo", "--out", str(tmp_path / "d"), "--seed", "-1"], "--seed must be at least 0, got -1"),
             (["demo", "--out", str(tmp_path / "a_file")], "is a file; give a folder")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert main(["make-landmark-pair", "--ct", str(tmp_path / "absent.nii.gz"), "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.count("absent.nii.gz") == 1
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["evaluation.md"]
