"""Items made in a thread a few steps ahead of the loop that uses them: on a GPU, where launching many small
operations from Python sets the pace, the thread launches one item's work while the loop launches its own."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

_END = object()  # the thread made every item
POLL_S = 0.1  # how often a thread with a full queue checks whether the loop has stopped


def made_ahead(make: Callable, indices: Iterable, ahead: int) -> Iterator:
    """Yield `make(index)` for each index, in order, made by a thread up to `ahead` items before they are used.

    An exception raised by `make` is raised here, in place of the item it failed on. Closing the iterator (the loop
    stops early) stops the thread once its current item is made."""
    items: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def handed_over(item) -> bool:
        """Put an item in the queue, waiting for room; False when the loop stopped meanwhile."""
        while not stop.is_set():
            try:
                items.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        """Make every item in turn (or the error that stopped it) and hand it over, then the end."""
        try:
            for index in indices:
                if not handed_over((make(index), None)):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again in the loop, where it has its context
            handed_over((None, exc))
            return
        handed_over((_END, None))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()
