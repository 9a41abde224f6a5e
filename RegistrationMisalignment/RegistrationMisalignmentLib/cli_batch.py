"""The `batch` command: check a cohort of registered pairs listed in a CSV, with resume, workers and a report."""
from __future__ import annotations

from .cli_common import add_model_options, output_folder, require_at_least_one, require_share


def _add_batch(sub) -> None:
    """Register the `batch` command."""
    p = sub.add_parser("batch", help="check many registered pairs listed in a CSV; writes summary.csv and report.html",
                       description="Predict the misalignment map of every case in PAIRS.csv (columns case_id, fixed, "
                                   "moving, optional mask and transform; paths relative to the CSV). Each case gets "
                                   "a folder DIR/cases/CASE_ID with labels.nrrd, thumbnails and case.json. Running "
                                   "the same command again skips finished cases whose inputs are unchanged.")
    p.add_argument("pairs", help="CSV file listing the cases")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (the cores are shared)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="send the cases to this Dask distributed scheduler (e.g. tcp://host:8786); its workers "
                        "must see the same paths and output folder")
    p.add_argument("--probabilities", action="store_true", help="also write each case's class probabilities")
    p.add_argument("--flag-wrong-fraction", type=float, default=0.10, metavar="F",
                   help="mark cases whose 'wrong' fraction of the evaluated region exceeds F (default 0.10)")
    add_model_options(p)


def run_batch_command(args) -> dict:
    """Run the batch and print where the summary and report are; exit status 1 if any case failed."""
    import sys
    from .batch import BatchSettings
    from .batch_cases import read_cases
    from .batch_runner import case_inputs, check_cohort_files, run_batch
    from .report import REPORT_NAME, SUMMARY_NAME
    require_at_least_one(workers=args.workers)
    require_share(flag_wrong_fraction=args.flag_wrong_fraction)
    cases = read_cases(args.pairs)
    out = output_folder(args.out, SUMMARY_NAME, REPORT_NAME)
    check_cohort_files(out, dict({"the pairs file": args.pairs}, **case_inputs(cases)))
    settings = BatchSettings(str(out.resolve()), args.weights, args.device, args.max_memory, args.threads,
                             args.probabilities, args.amp)
    result = run_batch(cases, settings, args.workers, args.scheduler, args.flag_wrong_fraction,
                       progress=not args.json)
    if not args.json:
        print(f"{result['cases']} cases: {result['done']} done, {result['skipped']} already finished, "
              f"{result['failed']} failed, {result['busy']} busy in another run; "
              f"{len(result['flagged'])} flagged (wrong > {100 * args.flag_wrong_fraction:g} %)")
        for case_id, error in result["failures"].items():
            print(f"  failed {case_id}: {error}", file=sys.stderr)
        print(f"summary: {result['summary']}\nreport:  {result['report']}")
    result["exit_status"] = 1 if result["failures"] else 0
    return result


BATCH_COMMANDS = {"batch": (_add_batch, run_batch_command)}
