"""Python threads for independent mask work (SimpleITK and numpy release the interpreter while they compute), as
many as SimpleITK's own thread count allows (`--threads`), at most MAX_MASK_THREADS, and none below
MIN_THREADS_TO_SPLIT: on 2 cores SimpleITK's own threads already keep them busy, and a second mask's temporaries
cost 0.2-0.4 GiB for 0.25 s on the reference case (BENCHMARKS.md)."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, List

import SimpleITK as sitk

MAX_MASK_THREADS = 4  # each holds a slab's labels at once: a few bytes per voxel of 32 slices
MIN_THREADS_TO_SPLIT = 4


def mask_threads() -> int:
    """How many mask computations may run at once: SimpleITK's thread count, at most MAX_MASK_THREADS; one below
    MIN_THREADS_TO_SPLIT."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    return 1 if threads < MIN_THREADS_TO_SPLIT else min(MAX_MASK_THREADS, threads)


def start_beside(pool: ThreadPoolExecutor, function: Callable, *args) -> Future:
    """`function(*args)` started in `pool` when more than one mask thread is allowed, else computed now."""
    if mask_threads() > 1:
        return pool.submit(function, *args)
    done: Future = Future()
    done.set_result(function(*args))
    return done


def map_in_threads(function: Callable, items: Iterable) -> List:
    """`[function(item) for item in items]`, up to mask_threads() at a time."""
    items = list(items)
    if mask_threads() == 1 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(mask_threads(), len(items))) as pool:
        return list(pool.map(function, items))
