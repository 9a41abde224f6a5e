"""The paper's landmark protocol: register with elastix in three setups, bin the residual at each fixed landmark,
compare with the predicted class there, and report per setup and pooled."""
from __future__ import annotations

import logging
import tempfile

import numpy as np
import SimpleITK as sitk

from . import labels as L
from .errors import InputError
from .metrics import (accuracy_by_residual, band_name, classification_report, confusion_matrix,
                      errors_near_boundary_text, expected_calibration_error, f1_text)

SETUPS = ("affine", "bspline_poor", "bspline_tuned")
OUTSIDE_MASK_SHARE = 0.1  # more fixed landmarks than this share outside the mask get a warning
log = logging.getLogger("RegistrationMisalignment")


def _maps(setup: str) -> list:
    """elastix parameter maps (as plain dicts of overrides on elastix's defaults) for one setup."""
    affine = ("affine", 3, {"MaximumNumberOfIterations": "250"})
    if setup == "affine":
        return [affine]
    if setup == "bspline_poor":
        return [("bspline", 1, {"MaximumNumberOfIterations": "20", "FinalGridSpacingInPhysicalUnits": "40"})]
    if setup == "bspline_tuned":
        return [affine, ("bspline", 4, {"MaximumNumberOfIterations": "500", "FinalGridSpacingInPhysicalUnits": "10",
                                         "NumberOfSpatialSamples": "5000"})]
    raise ValueError(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")


def elastix_module():
    """The itk module with elastix, or a clear error saying how to install it."""
    try:
        import itk
        itk.ElastixRegistrationMethod  # noqa: B018 - fails early when only plain ITK is installed
    except (ImportError, AttributeError):
        raise InputError("the landmark protocol needs elastix: pip install itk-elastix") from None
    return itk


def _to_itk(image: sitk.Image):
    """SimpleITK image -> float32 ITK image with the same geometry."""
    itk = elastix_module()
    out = itk.GetImageFromArray(sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32)))
    out.SetOrigin(image.GetOrigin())
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(3, 3)))
    return out


def _from_itk(array: np.ndarray, reference: sitk.Image, vector: bool = False) -> sitk.Image:
    """SimpleITK image from an ITK result array on the reference grid."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float64 if vector else np.float32), isVector=vector)
    image.CopyInformation(reference)
    return image


def register(fixed: sitk.Image, moving: sitk.Image, setup: str) -> tuple:
    """Register moving to fixed with elastix; return (moving resampled onto the fixed grid, displacement field)."""
    itk = elastix_module()
    parameters = itk.ParameterObject.New()
    for kind, resolutions, overrides in _maps(setup):
        parameter_map = parameters.GetDefaultParameterMap(kind, resolutions)
        for key, value in overrides.items():
            parameter_map[key] = [value]
        parameter_map["DefaultPixelValue"] = ["-1024"]
        parameters.AddParameterMap(parameter_map)
    fixed_itk, moving_itk = _to_itk(fixed), _to_itk(moving)
    result, transform = itk.elastix_registration_method(fixed_itk, moving_itk, parameter_object=parameters,
                                                        log_to_console=False)
    with tempfile.TemporaryDirectory(prefix="transformix-") as scratch:  # transformix writes its field to disk
        field = itk.transformix_deformation_field(moving_itk, transform, output_directory=scratch)
    return (_from_itk(itk.GetArrayFromImage(result), fixed),
            _from_itk(itk.GetArrayFromImage(field), fixed, vector=True))


def residuals(displacement: sitk.Image, fixed_points: np.ndarray, moving_points: np.ndarray) -> np.ndarray:
    """|T(p_fixed) - p_moving| in mm, T(p) = p + u(p) with u linearly interpolated."""
    mapped = np.array([np.asarray(p) + np.asarray(displacement.EvaluateAtPhysicalPoint(tuple(float(v) for v in p),
                                                                                      sitk.sitkLinear))
                       for p in fixed_points])
    return np.linalg.norm(mapped - moving_points, axis=1)


def score(predictor, fixed: sitk.Image, registered: sitk.Image, fixed_points: np.ndarray, residual_mm: np.ndarray,
          mask=None) -> dict:
    """Truth (binned residual) against the predicted class at each fixed landmark (arg-max, mask or not)."""
    classes, probabilities = predictor.predict_points(fixed, registered, fixed_points, mask=mask)
    truth = L.class_index(residual_mm)
    predicted = probabilities.argmax(1)
    report = classification_report(confusion_matrix(truth, predicted))
    report["landmarks"] = [{"residual_mm": float(r), "truth": L.CLASS_NAMES[int(t) + 1],
                            "predicted": L.CLASS_NAMES[int(p) + 1], "probabilities": [float(v) for v in pr],
                            "inside_mask": bool(c != L.NOT_EVALUATED)}
                           for r, t, p, pr, c in zip(residual_mm, truth, predicted, probabilities, classes)]
    return {**report, **landmark_summary(report["landmarks"])}


def warn_if_outside_mask(result: dict, given_mask: bool) -> None:
    """Warn when many fixed landmarks lie outside the mask: another image's landmarks, or RAS read as LPS."""
    landmarks = next(iter(result["setups"].values()))["landmarks"]
    outside = sum(not m["inside_mask"] for m in landmarks)
    if outside > OUTSIDE_MASK_SHARE * len(landmarks):
        log.warning(f"{outside} of {len(landmarks)} fixed landmarks lie outside the "
                    f"{'given mask' if given_mask else 'automatic lung mask'}; the protocol expects landmarks in the "
                    "lungs: check that they belong to the fixed image and that CSV coordinates are LPS (negate x "
                    "and y of RAS ones)")


def landmark_summary(landmarks: list) -> dict:
    """Accuracy by band of true residual and the ECE over landmark records (classes by name, probabilities)."""
    index = {L.CLASS_NAMES[v]: i for i, v in enumerate(L.CLASS_VALUES)}
    truth = [index[m["truth"]] for m in landmarks]
    probabilities = np.array([m["probabilities"] for m in landmarks], dtype=np.float64).reshape(-1, len(index))
    return {"by_residual": accuracy_by_residual(truth, [index[m["predicted"]] for m in landmarks],
                                                [m["residual_mm"] for m in landmarks]),
            "expected_calibration_error": expected_calibration_error(probabilities, truth)}


def pooled(setups: dict) -> dict:
    """The 'Total' report over all setups' landmarks."""
    cm = sum(np.asarray(r["confusion_matrix"]) for r in setups.values())
    return {**classification_report(cm), **landmark_summary([m for r in setups.values() for m in r["landmarks"]])}


def evaluate_landmarks(predictor, fixed, moving, fixed_points, moving_points, setups=SETUPS, mask=None,
                       progress=None, compared: dict = None) -> dict:
    """Run the protocol for every setup and pool the results; `compared` models are scored on the same registrations."""
    report = progress or (lambda fraction, message: None)
    models = dict({None: predictor}, **(compared or {}))
    results = {name: {} for name in models}
    for i, setup in enumerate(setups):
        report(i / len(setups), f"registering ({setup})")
        registered, displacement = register(fixed, moving, setup)
        residual = residuals(displacement, fixed_points, moving_points)
        report((i + 0.7) / len(setups), f"predicting ({setup})")
        for name, model in models.items():
            results[name][setup] = score(model, fixed, registered, fixed_points, residual, mask)
    report(1.0, "done")
    return with_comparisons(results)


def with_comparisons(results: dict) -> dict:
    """{model name (None = the main model): {setup: report}} -> the main result, with 'compared' models if any."""
    pooled_results = {name: {"setups": setups, "total": pooled(setups)} for name, setups in results.items()}
    main = pooled_results.pop(None)
    if pooled_results:
        main["compared"] = pooled_results
    return main


def markdown_table(result: dict) -> str:
    """Markdown: one row per setup and the pooled total, plus the confusion matrices; then any compared models."""
    text = _model_table(result)
    for name, other in result.get("compared", {}).items():
        text += f"\n### Compared: {name}\n\n" + _model_table(other)
    return text


def _model_table(result: dict) -> str:
    """The table and confusion matrices of one model."""
    names = [L.CLASS_NAMES[v] for v in L.CLASS_VALUES]
    lines = ["| setup | landmarks | accuracy | average F1 | " + " | ".join(f"F1 {n}" for n in names) + " | ECE |",
             "|---|---|---|---|" + "---|" * (len(names) + 1)]
    rows = dict(result["setups"], Total=result["total"])
    for name, r in rows.items():
        f1 = " | ".join(f1_text(r["per_class"][n]) for n in names)
        lines.append(f"| {name} | {r['n']} | {100 * r['accuracy']:.1f} % | {100 * r['average_f1']:.1f} % | {f1} | "
                     f"{100 * r['expected_calibration_error']:.1f} % |")
    lines.append("")
    for name, r in rows.items():
        lines.append(f"Confusion matrix, {name} (rows truth, columns prediction; {', '.join(names)}): "
                     f"`{r['confusion_matrix']}`")
    by_residual = result["total"]["by_residual"]
    bands = ", ".join(f"{band_name(b)} {100 * b['accuracy']:.0f} % of {b['n']}" for b in by_residual["bands"] if b["n"])
    lines += ["", f"Accuracy by true residual, all setups: {bands}; {errors_near_boundary_text(by_residual)}."]
    return "\n".join(lines) + "\n"
