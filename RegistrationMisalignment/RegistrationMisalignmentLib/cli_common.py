"""Options and helpers shared by the command-line commands: device, model loading, threads, progress."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager

OPEN_BARS = []


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: the problem and where the help is, not the whole usage."""

    def error(self, message: str):
        """Print `PROG: error: MESSAGE (see PROG --help)` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, Slurm and `docker stop` send), raised as Ctrl-C's KeyboardInterrupt is: the same
    clean-up runs."""


def _raise_terminated(signum, frame) -> None:
    """Signal handler: raise Terminated, ignoring further SIGTERMs so that they do not cut its clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises Terminated in it; only in the main thread, the only one where a signal
    handler can be set (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_device(parser: argparse.ArgumentParser) -> None:
    """Add the --device option."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"],
                        help="where the network runs (default: auto = GPU if available)")


def set_threads(threads: int) -> int:
    """Use `threads` CPU threads for torch and SimpleITK (0 = all physical cores available to this process); returns
    the count. SimpleITK would otherwise take every logical CPU available, also in each `batch` worker."""
    import torch
    from .devices import default_threads
    check_threads(threads)
    count = threads or default_threads()
    torch.set_num_threads(count)
    try:
        import SimpleITK as sitk
    except ImportError:  # training from cached sources runs without SimpleITK
        return count
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    return count


def check_threads(threads: int) -> None:
    """Raise InputError for a --threads count below 0 (0: all physical cores) or above the logical CPUs this process
    may run on: more threads only compete for them, and a huge count exhausts the system's."""
    from .devices import usable_cpus
    from .errors import InputError
    require_at_least(0, threads=threads)
    limit = len(usable_cpus())
    if threads > limit:
        raise InputError(f"--threads {threads} is more than the {limit} CPUs this process may run on; give at most "
                         f"{limit} (0: all physical cores)")


def require_at_least(minimum: int, **values) -> None:
    """Raise a clear error for a whole-number option (given as option_name=value) below `minimum`."""
    from .errors import InputError
    for name, value in values.items():
        if value < minimum:
            raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def require_below(limit: int, reason: str, **values) -> None:
    """Raise a clear error for a whole-number option (given as option_name=value) at or above `limit`."""
    from .errors import InputError
    for name, value in values.items():
        if value >= limit:
            raise InputError(f"--{name.replace('_', '-')} must be below {limit} ({reason}), got {value}")


def require_at_least_one(**counts) -> None:
    """Raise a clear error for a count option (given as option_name=value) below 1."""
    require_at_least(1, **counts)


def require_positive(**values) -> None:
    """Raise a clear error for a real-valued option (given as option_name=value) that is not above 0 and finite."""
    from .errors import InputError
    for name, value in values.items():
        if not 0.0 < value < float("inf"):
            raise InputError(f"--{name.replace('_', '-')} must be more than 0, got {value}")


def require_share(**shares) -> None:
    """Raise a clear error for a share option (given as option_name=value) outside [0, 1]."""
    from .errors import InputError
    for name, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise InputError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")


def check_two_scans(names: str, fixed, moving, checksums: tuple = None) -> None:
    """Raise InputError when the fixed and moving scans (`names` says which options or columns) are one file (also
    through a link) or two identical ones: by their `checksums` when given (a DICOM folder too), else two files of the
    same bytes. A scan against itself is correct everywhere, which says nothing of a registration."""
    import filecmp
    import os
    from .errors import InputError
    from .imageio import same_file
    advice = "give the registered moving image (a scan against itself is correct everywhere)"
    if same_file(fixed, moving):
        raise InputError(f"{names} are the same file ({moving}); {advice}")
    if checksums:
        identical = checksums[0] == checksums[1]
    else:
        identical = os.path.isfile(fixed) and os.path.isfile(moving) and filecmp.cmp(fixed, moving, shallow=False)
    if identical:
        raise InputError(f"{names} are identical files ({fixed} and {moving}); {advice}")


def output_folder(folder, *names):
    """An --out folder, created if needed, checked before any work: a file there, a folder that cannot be written, or
    one of the file `names` to be written in it that cannot be (a folder of that name, say) is an InputError."""
    from pathlib import Path
    from .errors import InputError
    from .imageio import check_output_path
    if not str(folder):
        raise InputError("--out is empty; give a folder")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder} is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {folder}: the folder cannot be created ({exc.strerror}); choose another") from None
    for name in names:
        check_output_path(folder / name)
    return folder


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add --weights, --device, --max-memory, --threads, --amp and --json."""
    parser.add_argument("--weights", help="weights file (.safetensors; default: the released model)")
    add_device(parser)
    parser.add_argument("--max-memory", type=positive_gib, default=2.0, metavar="GIB",
                        help="memory budget that sets the tile size on the CPU (default 2 GiB; on a GPU, tiles "
                             "are sized by half its free memory)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of torch and SimpleITK (default 0: all physical cores available to this "
                             "process)")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision (float16 on CUDA, bfloat16 on CPU): faster (1.7-1.9x on a CPU), "
                             "probabilities within the tolerance stated in BENCHMARKS.md (default: exact float32)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary")


def positive_gib(text: str) -> float:
    """An argparse type: a memory size in GiB, more than zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in GiB such as 2 or 0.5, got {text!r}") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 GiB, got {text}")
    return value


def load_predictor(args):
    """The predictor from --weights / --device / --max-memory / --threads / --amp."""
    from .inference import MisalignmentPredictor
    set_threads(args.threads)
    return MisalignmentPredictor.load(args.weights, device=args.device, max_memory_gb=args.max_memory, amp=args.amp)


def progress_bar(enabled: bool):
    """A progress callback drawing a tqdm bar on stderr (or None when disabled)."""
    if not enabled:
        return None
    from tqdm import tqdm
    bar = tqdm(total=100, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}", file=sys.stderr,
               disable=None, leave=False)
    OPEN_BARS.append(bar)

    def update(fraction: float, message: str) -> None:
        bar.set_description_str(message)
        bar.update(int(round(100 * fraction)) - bar.n)
        if fraction >= 1.0:
            bar.close()
    return update


def progress_lines(fraction: float, message: str) -> None:
    """Machine-readable progress on stderr, one line per update."""
    print(f"progress {fraction:.3f} {message}", file=sys.stderr, flush=True)


def close_bars() -> None:
    """Close progress bars left open by a failed command, so the error stands on its own line."""
    while OPEN_BARS:
        OPEN_BARS.pop().close()
