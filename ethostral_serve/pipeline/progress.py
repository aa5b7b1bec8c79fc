"""How far a run has got: stages report here, whoever listens (a job) hears a fraction.

A run's listener is held in a context variable, so the stages and backends report
without a listener being passed through every call; ``contextvars.copy_context`` (used
by the pipeline's threads) carries it along. With no listener, reporting does nothing.

A listener may raise (a cancelled job does) to stop the run at its next report.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

# Share of a typical run's time spent in each stage, in the order they start (measured
# on the embedded default: ASR dominates; diarization goes first, since the recogniser
# also reads speech the diarizer heard, or beside ASR when that is off).
STAGE_WEIGHTS: dict[str, float] = {
    "decode": 0.03,
    "vad": 0.04,
    "diarize": 0.20,
    "asr": 0.63,
    "segment": 0.0,
    "emotion": 0.10,
}
STAGES = tuple(STAGE_WEIGHTS)

ProgressListener = Callable[[str, float], None]
"""Hears (stage, fraction of the whole run done, 0 to 1)."""


@dataclass
class _Run:
    listener: ProgressListener
    last: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


_current: ContextVar[_Run | None] = ContextVar("ethostral_progress", default=None)


def stage_start(stage: str) -> float:
    """The fraction of the run done when ``stage`` starts."""
    total = 0.0
    for name in STAGES:
        if name == stage:
            return total
        total += STAGE_WEIGHTS[name]
    raise ValueError(f"unknown stage {stage!r}")


def report(stage: str, done: float = 0.0, total: float = 1.0) -> None:
    """Tell the run's listener that ``done`` of ``total`` units of ``stage`` are done.

    The fraction heard never goes backwards (diarization beside ASR ends after it began), also
    when stages on different threads report at once: the listener hears one report at a
    time, in the order the fractions were reached.
    """
    start = stage_start(stage)  # an unknown stage is an error, listened to or not
    run = _current.get()
    if run is None:
        return
    within = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
    fraction = min(start + STAGE_WEIGHTS[stage] * within, 1.0)
    with run.lock:
        run.last = max(run.last, fraction)
        run.listener(stage, run.last)


@contextlib.contextmanager
def listening(listener: ProgressListener) -> Iterator[None]:
    """Send this context's progress reports to ``listener`` while the block runs."""
    token = _current.set(_Run(listener))
    try:
        yield
    finally:
        _current.reset(token)
