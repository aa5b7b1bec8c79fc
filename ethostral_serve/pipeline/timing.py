"""How long each stage took: stages report here, whoever observes (metrics) hears it.

The sibling of :mod:`~ethostral_serve.pipeline.progress`: a run's observer is held in a
context variable, so the stages report their seconds without an observer being passed
through every call; ``contextvars.copy_context`` (used by the pipeline's threads)
carries it along. With no observer, reporting does nothing.

An observer records; it must not stop the run. One that raises is logged and ignored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar

log = logging.getLogger("ethostral_serve.timing")

StageObserver = Callable[[str, float], None]
"""Hears (stage, seconds it took) when a stage ends."""

_current: ContextVar[StageObserver | None] = ContextVar("ethostral_stage_timer", default=None)


def observe(stage: str, seconds: float) -> None:
    """Tell this context's observer that ``stage`` took ``seconds``."""
    observer = _current.get()
    if observer is None:
        return
    try:
        observer(stage, seconds)
    except Exception:  # an observer records; a failure there must not fail the run
        log.warning("stage observer failed on %s", stage, exc_info=True)


@contextlib.contextmanager
def observing(observer: StageObserver | None) -> Iterator[None]:
    """Send this context's stage timings to ``observer`` while the block runs
    (``None``: to nobody, hiding any outer observer)."""
    token = _current.set(observer)
    try:
        yield
    finally:
        _current.reset(token)
