"""What users see of a problem: the one exception type shown as a one-line message, and captured warnings."""
import logging
import re
import threading


class InputError(ValueError):
    """Bad input: the message says what is wrong and what to do."""


def library_reason(exc: BaseException, limit: int = 160) -> str:
    """The last line of a library's (ITK, SimpleITK) error message, without the memory addresses ITK names objects
    by, shortened to `limit` characters."""
    text = str(exc).strip()
    if not text:
        return "unknown reason"
    return re.sub(r"\s*\(0x[0-9a-fA-F]+\)", "", text.splitlines()[-1])[:limit]


class CapturedWarnings(list):
    """Collects the engine's warnings logged by this thread while the block runs (they still reach the log)."""

    def __enter__(self):
        self._thread = threading.get_ident()
        self._handler = logging.Handler(logging.WARNING)
        self._handler.emit = lambda rec: self.append(rec.getMessage()) if rec.thread == self._thread else None
        logging.getLogger("RegistrationMisalignment").addHandler(self._handler)
        return self

    def __exit__(self, *exc):
        logging.getLogger("RegistrationMisalignment").removeHandler(self._handler)
        return False
