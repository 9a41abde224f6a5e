"""GPU work in a thread while the CPU makes the masks: warming the device up, then a computation on the pair as soon
as its torso masks exist (the caller's; the network over where the lungs can lie)."""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

log = logging.getLogger("RegistrationMisalignment")


class WorkBesideMasks:
    """A thread that runs `warm_up()` if given, then `compute(pair)` on the pair handed over through `torsos_ready`.

    A failure is not raised: `result()` is then None, and the caller does the work itself, meeting the same problem
    where it can report it with its context."""

    def __init__(self, warm_up: Optional[Callable[[], None]], compute: Optional[Callable]):
        self._warm_up = warm_up
        self._compute = compute
        self._pairs: queue.Queue = queue.Queue()
        self._result = None
        self.seconds: Optional[float] = None  # how long `compute` took, once it finished
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def torsos_ready(self, pair) -> None:
        """Hand over the pair with its torso masks (the hook of `to_fixed_grid`)."""
        self._pairs.put(pair)

    def result(self):
        """Wait for the thread; the computed result, or None when no pair was handed over or the work failed."""
        self._pairs.put(None)  # after a pair handed over, never read; else it tells the thread there is none
        self._thread.join()
        return self._result

    def _run(self) -> None:
        """Warm up, wait for the pair, compute."""
        try:
            if self._warm_up is not None:
                self._warm_up()
            pair = self._pairs.get() if self._compute is not None else None
            if pair is None:
                return
            start = time.perf_counter()
            self._result = self._compute(pair)
            self.seconds = time.perf_counter() - start
        except Exception:  # noqa: BLE001 - the caller redoes the work and reports its failure
            log.debug("the GPU's work beside the masks failed; the map is computed after them", exc_info=True)
