"""The cores a process may use, and work split across them on threads.

onnxruntime and numpy release the GIL in their kernels, so one model session run from
several Python threads, each on its own part of the input, keeps that many cores busy.
This beats onnxruntime's own intra-operator threads on the small recurrent and
convolutional models the diarizer runs (measured in docs/benchmarks.md), and each part
gives the same numbers it would give alone.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def default_cpu_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def contiguous_parts(weights: Sequence[float], parts: int) -> list[slice]:
    """At most ``parts`` non-empty, contiguous slices covering ``weights`` in order, each
    ending where the running total first reaches its equal share of the whole."""
    n = len(weights)
    parts = max(1, min(parts, n))
    if n == 0:
        return []
    running = np.cumsum(np.maximum(np.asarray(weights, dtype=np.float64), 0.0))
    if running[-1] <= 0.0:
        running = np.arange(1.0, n + 1.0)
    shares = running[-1] * np.arange(1, parts) / parts
    bounds = [0]
    for k, end in enumerate(np.searchsorted(running, shares, side="left") + 1, start=1):
        # every part keeps at least one item, and leaves one for each part after it
        bounds.append(int(min(max(end, bounds[-1] + 1), n - (parts - k))))
    bounds.append(n)
    return [slice(a, b) for a, b in pairwise(bounds)]


def map_in_parts(
    fn: Callable[[Sequence[T]], R],
    items: Sequence[T],
    workers: int,
    weights: Sequence[float] | None = None,
) -> list[R]:
    """``fn`` of each contiguous part of ``items`` (at most ``workers`` parts, balanced
    by ``weights``, else by count), run on that many threads; results in order.

    One part runs on the calling thread without a pool. Each thread runs in a copy of
    the caller's context (tracing context stays attached).
    """
    if len(items) == 0:
        return []
    slices = contiguous_parts(weights if weights is not None else [1.0] * len(items), workers)
    if len(slices) == 1:
        return [fn(items)]
    with ThreadPoolExecutor(max_workers=len(slices), thread_name_prefix="part") as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, items[s]) for s in slices]
        return [f.result() for f in futures]
