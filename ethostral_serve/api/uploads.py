"""One upload's run, shared by ``POST /transcribe`` and ``POST /v1/audio/transcriptions``:
admit it, run the pipeline on a pipeline thread in one of the caller's slots, then store
the session, count its audio against the caller's key and record it in the metrics.

A client that leaves mid-run does not stop the run: it ends in its thread, keeping its
slot, and its session is stored, counted and recorded all the same (``GET /sessions``
lists it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, BinaryIO

from ethostral_serve.api.auth import Access, Caller
from ethostral_serve.errors import EthostralError
from ethostral_serve.metrics import Metrics
from ethostral_serve.pipeline.compose import TranscribeOptions
from ethostral_serve.runner import KeptAudio, PipelineRunner
from ethostral_serve.schema import Session

if TYPE_CHECKING:
    from ethostral_serve.api.app import SessionStorage

log = logging.getLogger("ethostral_serve.api.uploads")


def upload_filename(name: str | None) -> str:
    """The session's filename: the upload's name without any directories."""
    return PurePath(name or "upload").name or "upload"


@dataclass(frozen=True)
class Uploads:
    """Runs uploads through ``runner`` on the ``runs`` pool of pipeline threads and keeps
    their sessions in ``store``; ``access`` holds slots and counts audio per key,
    ``metrics`` records the audio of every stored session (kind ``upload``)."""

    runner: PipelineRunner
    store: SessionStorage
    access: Access
    runs: Executor
    metrics: Metrics

    async def admit(self, caller: Caller) -> None:
        """Fail fast, before the expensive part: 503 unless the store answers, 429 when
        the caller's key has used up its hours of audio."""
        await self.store.ping()
        await self.access.check_audio(caller)

    async def run(
        self,
        caller: Caller,
        file: BinaryIO,
        filename: str | None,
        options: TranscribeOptions,
        store_audio: bool = False,
    ) -> Session:
        """Transcribe an admitted upload in one of the caller's ``uploads`` slots and
        store its session (with its audio for playback when ``store_audio``)."""
        context = contextvars.copy_context()  # tracing context reaches the thread
        kept = KeptAudio() if store_audio else None
        work = functools.partial(self.runner.run, keep_audio=kept)
        async with self.access.slot(caller, "uploads"):
            run = asyncio.get_running_loop().run_in_executor(
                self.runs, context.run, work, file, upload_filename(filename), options
            )
            try:
                session = await asyncio.shield(run)
            except asyncio.CancelledError:
                # The client went away; the run goes on in its thread and keeps the slot
                # until it ends, then its session is stored like any other.
                await asyncio.shield(self.finish_abandoned(run, caller, kept))
                raise
        await self.store_session(session, caller, kept)
        return session

    async def store_session(
        self, session: Session, caller: Caller, kept: KeptAudio | None = None
    ) -> None:
        """Save ``session`` (with its ``kept`` audio) under the caller's key, count its
        audio against the key and record it in the metrics."""
        await self.store.save(session, owner=caller.owner, audio=kept.data if kept else None)
        seconds = session.duration_ms / 1000
        try:  # a Redis failure here must not turn a stored result into an error to retry
            await self.access.add_audio(caller, seconds)
        except EthostralError as exc:
            log.warning("audio of session %s not counted: %s", session.id, exc.detail)
        self.metrics.audio("upload", seconds)

    async def finish_abandoned(
        self, run: asyncio.Future[Session], caller: Caller, kept: KeptAudio | None = None
    ) -> None:
        """Wait for a run whose client left, then store its session (:meth:`store_session`)."""
        try:
            session = await run
            await self.store_session(session, caller, kept)
        except Exception as exc:  # nobody is waiting for the answer
            log.warning("an abandoned upload did not complete: %r", exc)
