"""What users see of a problem: the one exception type shown as a one-line message, and the engine's warnings."""
import logging
import re
import sys
import threading
from contextlib import contextmanager

_LOG = logging.getLogger("RegistrationMisalignment")


class InputError(ValueError):
    """Bad input: the message says what is wrong and what to do."""


def described(value) -> str:
    """What a Python argument is, for an error message: None, or its type (module and name) with the value itself
    when it is a short number or text."""
    if value is None:
        return "None"
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}".replace("builtins.", "")
    return f"{name} {value!r}" if isinstance(value, (str, int, float)) and len(repr(value)) <= 40 else name


def library_reason(exc: BaseException, limit: int = 160) -> str:
    """The last line of a library's (ITK, SimpleITK) error message, without the memory addresses ITK names objects
    by, shortened to `limit` characters."""
    text = str(exc).strip()
    if not text:
        return "unknown reason"
    return re.sub(r"\s*\(0x[0-9a-fA-F]+\)", "", text.splitlines()[-1])[:limit]


_OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory", re.IGNORECASE)  # torch on the CPU, CUDA
_ASKED = re.compile(r"tried to allocate ([\d.]+) ?(bytes|[KMGT]iB)", re.IGNORECASE)


def out_of_memory_text(exc: BaseException) -> str:
    """One line for an allocator's out-of-memory error (MemoryError, or torch's RuntimeError on the CPU or a GPU),
    with the size asked for where the message tells it; '' for any other error."""
    if not (isinstance(exc, MemoryError) or isinstance(exc, RuntimeError) and _OUT_OF_MEMORY.search(str(exc))):
        return ""
    asked = _ASKED.search(str(exc))
    if not asked:
        return "out of memory"
    amount, unit = asked.groups()
    size = f"{float(amount) / 2 ** 30:.1f} GiB" if unit.lower() == "bytes" else f"{amount} {unit}"
    return f"out of memory (an allocation of {size} failed)"


class _ThisThread(threading.local):
    """Per thread: the captures open and the names its warnings are shown under (innermost last)."""

    def __init__(self):
        self.captures, self.names = [], []


_THREAD = _ThisThread()


def _pass_on(record: logging.LogRecord) -> bool:
    """Log filter: give a warning to its thread's open captures, then show it under the thread's innermost name."""
    if record.levelno >= logging.WARNING:
        message = record.getMessage()
        for capture in _THREAD.captures:
            capture.append(message)
        if _THREAD.names:
            record.msg, record.args = f"{_THREAD.names[-1]}: {message}", ()
    return True


_LOG.addFilter(_pass_on)


class CapturedWarnings(list):
    """Collects the engine's warnings logged by this thread while the block runs (they still reach the log)."""

    def __enter__(self):
        _THREAD.captures.append(self)
        return self

    def __exit__(self, *exc):
        _THREAD.captures.pop()  # blocks end in the order opposite to their start: this one is the last open
        return False


@contextmanager
def warnings_named(name: str):
    """While the block runs, the log shows the engine's warnings logged by this thread as `name: message`."""
    _THREAD.names.append(name)
    try:
        yield
    finally:
        _THREAD.names.pop()


class _AboveProgressBars(logging.StreamHandler):
    """Writes each record on its own line above this process's progress bars, which tqdm clears and redraws."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # as logging's own handlers do: a broken stream must not end the program
            self.handleError(record)


def show_warnings() -> None:
    """Print the engine's warnings on stderr as `warning: ...` lines, unless the program has set up logging."""
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", handlers=[_AboveProgressBars(sys.stderr)])
