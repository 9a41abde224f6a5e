"""The `evaluate-robustness` command: the map of a CT against itself, changed as real pairs differ."""
from __future__ import annotations

import sys

from .cli_common import add_model_options, load_predictor, progress_bar


def _add_evaluate_robustness(sub) -> None:
    """Register the `evaluate-robustness` command."""
    from .robustness_conditions import CONDITIONS
    p = sub.add_parser("evaluate-robustness", help="does the map stay right when the images differ as real pairs do",
                       description="Pair a CT with itself changed in ways real pairs differ without misalignment "
                                   "(independent noise, a softer kernel, denser or lighter lungs of another "
                                   "breathing state) or shifted by a known residual (cranio-caudally 1.5, 4.5, 9 mm; "
                                   "4.5 mm left-right and anterior-posterior), "
                                   "and report the share of lung voxels in the true class and in each class.")
    p.add_argument("--ct", required=True, help="chest CT (file or DICOM folder); preferably one the model did not "
                                               "train on")
    p.add_argument("--condition", action="append", choices=[c.name for c in CONDITIONS],
                   help="run only this condition (repeatable; default: all)")
    p.add_argument("--card", action="store_true",
                   help="put the results into the model card of the weights (released weights only)")
    add_model_options(p)


def run_evaluate_robustness(args) -> dict:
    """Run the conditions and print one line each."""
    from .checkpoint import released_weights_path, sha256_of
    from .imageio import read_image
    from .release import add_robustness_results, card_training_cts, check_unseen, read_card
    from .robustness import evaluate_robustness
    from .robustness_conditions import CONDITIONS
    from .sources import ct_fingerprint
    weights = args.weights or released_weights_path()
    card = read_card(weights) if args.card else None  # before the work: no card, nothing to add to
    predictor = load_predictor(args)
    ct = read_image(args.ct)
    if card is not None:  # the card's robustness section is about a CT the weights never saw
        check_unseen("--ct", args.ct, ct_fingerprint(ct), card_training_cts(card))
    conditions = [c for c in CONDITIONS if not args.condition or c.name in args.condition]
    result = evaluate_robustness(predictor, ct, conditions, progress=progress_bar(not args.json))
    result = dict(result, ct=str(args.ct), weights_sha256=sha256_of(weights))
    if not args.json:
        _print_robustness(result)
    if args.card:
        earlier = (read_card(weights).get("robustness") or {}).get("conditions") or []
        add_robustness_results(weights, result, _command(args))
        if len(earlier) > len(result["conditions"]):
            print(f"the card's robustness section held {len(earlier)} conditions; it now holds this run's "
                  f"{len(result['conditions'])} (the section is one run: give every condition to keep them all)",
                  file=sys.stderr)
    return result


def _command(args) -> str:
    """The command that reproduces a robustness result (for the model card)."""
    options = [f"--ct {args.ct}"] + [f"--condition {c}" for c in args.condition or []]
    if args.weights:
        options.append(f"--weights {args.weights}")
    return "registration-misalignment evaluate-robustness " + " ".join(options)


def _print_robustness(result: dict) -> None:
    """One line per condition: true class, accuracy and the share of each predicted class."""
    print(f"{'condition':62s} {'true class':10s} {'accuracy':>8s}   correct / poor / wrong "
          f"({result['lung_voxels']} lung voxels)")
    for r in result["conditions"]:
        shares = " / ".join(f"{100 * v:5.1f}" for v in r["shares"].values())
        print(f"{r['description']:62s} {r['true_class']:10s} {100 * r['accuracy']:6.1f} %   {shares} %")
    for key, text in (("mean_accuracy_without_misalignment", "without misalignment"),
                      ("mean_accuracy_shifted", "shifted")):
        if result[key] is not None:
            print(f"mean accuracy {text}: {100 * result[key]:.1f} %")


ROBUSTNESS_COMMANDS = {"evaluate-robustness": (_add_evaluate_robustness, run_evaluate_robustness)}
