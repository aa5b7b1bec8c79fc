"""Work split across cores: contiguous parts, results in order, threads side by side."""

from __future__ import annotations

import contextvars
import threading

import pytest

from ethostral_serve.backends.cores import contiguous_parts, default_cpu_threads, map_in_parts


def _covers(slices: list[slice], n: int) -> bool:
    ends = [0] + [s.stop for s in slices]
    return all(s.start == e and s.stop > s.start for s, e in zip(slices, ends, strict=False)) and (
        ends[-1] == n
    )


@pytest.mark.parametrize(
    ("weights", "parts", "expected"),
    [
        ([1] * 7, 2, [(0, 4), (4, 7)]),
        ([5, 1, 1, 1, 1, 1], 2, [(0, 1), (1, 6)]),  # one long item is a part of its own
        ([1, 1, 1, 1, 10], 3, [(0, 3), (3, 4), (4, 5)]),  # each later part keeps an item
        ([1, 2], 5, [(0, 1), (1, 2)]),  # never more parts than items
        ([0, 0, 0], 2, [(0, 2), (2, 3)]),  # no weight: split by count
        ([4, 4, 4, 4], 1, [(0, 4)]),
    ],
)
def test_contiguous_parts(weights: list[float], parts: int, expected: list[tuple[int, int]]):
    slices = contiguous_parts(weights, parts)
    assert [(s.start, s.stop) for s in slices] == expected
    assert _covers(slices, len(weights))


def test_contiguous_parts_balance_long_lists() -> None:
    weights = [float(1 + (i * 7) % 5) for i in range(1000)]
    slices = contiguous_parts(weights, 4)
    assert len(slices) == 4 and _covers(slices, 1000)
    share = sum(weights) / 4
    for s in slices:
        assert abs(sum(weights[s]) - share) <= max(weights)
    assert contiguous_parts([], 3) == []


def test_map_in_parts_runs_the_parts_side_by_side_and_keeps_their_order() -> None:
    # every part waits at a barrier for all the others: run one after another, the
    # first part would wait alone and the barrier would break
    barrier = threading.Barrier(3, timeout=30)
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    marker.set("caller")

    def part(items: list[int]) -> tuple[list[int], str, str]:
        barrier.wait()
        return items, threading.current_thread().name, marker.get()

    results = map_in_parts(part, list(range(10)), workers=3)
    assert [r[0] for r in results] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert len({r[1] for r in results}) == 3
    assert all(r[2] == "caller" for r in results)  # the caller's context goes along


def test_map_in_parts_one_part_runs_here_and_errors_come_back() -> None:
    caller = threading.current_thread().name
    assert map_in_parts(lambda items: threading.current_thread().name, [1, 2], 1) == [caller]
    assert map_in_parts(lambda items: items, [], 4) == []

    def fails(items: list[int]) -> int:
        if 5 in items:
            raise ValueError("bad part")
        return len(items)

    with pytest.raises(ValueError, match="bad part"):
        map_in_parts(fails, list(range(8)), workers=2)
    assert default_cpu_threads() >= 1
