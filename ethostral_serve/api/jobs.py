"""Running jobs: the ingress's worker claims queued jobs from Redis and runs them.

:class:`Jobs` is what the routes use (submit, look up, cancel, the callback secret);
:class:`JobWorker` runs in the app's lifespan. Each replica runs up to
``jobs.max_running`` jobs at once, each on its own lease, renewed while it runs. A job
whose replica stops (killed, restarted) is queued again once its lease expires, by any
replica; one whose replica shuts down cleanly is queued again at once. A job holds one of
its key's concurrent-upload slots while it runs; when the key has none free, it waits
in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
import threading
import time
import uuid
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from ethostral_serve import callbacks
from ethostral_serve.api.auth import Access, Caller
from ethostral_serve.errors import (
    BackendUnavailableError,
    EmptyAudioError,
    EthostralError,
    StoreUnavailableError,
)
from ethostral_serve.jobs import Claim, JobRecord, JobStore
from ethostral_serve.metrics import CANCELLED_STATUS, NOOP, Metrics, http_outcome
from ethostral_serve.pipeline import progress
from ethostral_serve.pipeline.compose import TranscribeOptions
from ethostral_serve.pipeline.types import SpeakerCount
from ethostral_serve.quotas import QuotaExceededError
from ethostral_serve.runner import KeptAudio, PipelineRunner, check_header_length
from ethostral_serve.schema import Job, JobStatus, Session, now_iso
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import JobSettings, LimitSettings, Settings
from ethostral_serve.spool import Spool

log = logging.getLogger("ethostral_serve.jobs")

POLL_S = 1.0  # how often an idle worker looks at the queue (a local upload wakes it)
PROGRESS_EVERY_S = 0.5  # at most this often a running job writes its progress
SWEEP_EVERY_S = 600.0
HOST_TTL_S = 300.0  # a spool no replica read for this long: its queued jobs fail
SLOT_RETRY_S = 2.0  # a job whose key has no upload slot free looks again this often
RETRY_BACKOFF_S = 30.0  # a job whose model was unavailable waits this long, times its attempt
STORE_AUDIO = "store_audio"  # a job's option beside its TranscribeOptions: keep its audio


class UploadLostError(EthostralError):
    """A job's spooled upload is gone (its replica's disk was replaced): upload again."""

    status_code = 503


class JobCancelled(Exception):
    """Raised in a job's run when it was cancelled (or taken over) meanwhile."""


def options_to_dict(options: TranscribeOptions) -> dict[str, Any]:
    """What a job keeps of its request's options (JSON)."""
    s = options.speakers
    return {
        "language": options.language,
        "diarize": options.diarize,
        "emotion": options.emotion,
        "adapter": options.adapter,
        "speakers": None if s is None else {"num": s.num, "min": s.min, "max": s.max},
    }


def options_from_dict(raw: dict[str, Any]) -> TranscribeOptions:
    """The options a job was made with."""
    speakers = raw.get("speakers")
    return TranscribeOptions(
        language=raw.get("language"),
        diarize=bool(raw.get("diarize", True)),
        emotion=bool(raw.get("emotion", True)),
        adapter=raw.get("adapter"),
        speakers=SpeakerCount(**speakers) if speakers else None,
    )


@dataclass
class Jobs:
    """Asynchronous uploads: the job store, the spool and what runs the jobs."""

    store: JobStore
    spool: Spool
    settings: JobSettings
    host: str
    _master_secret: str | None = field(default=None, repr=False)
    metrics: Metrics = field(default=NOOP, repr=False)  # jobs ended, their audio
    limits: LimitSettings | None = field(default=None, repr=False)  # None: not checked here
    wake: asyncio.Event | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @classmethod
    def from_settings(
        cls, redis_url: str, settings: Settings, metrics: Metrics | None = None
    ) -> Jobs:
        """Jobs in this Redis, spooled under ``jobs.spool_dir`` (default
        ``<cache_dir>/spool``); ``metrics`` counts them as they end."""
        j = settings.jobs
        store = JobStore(
            redis_url,
            prefix=settings.auth.key_prefix,
            lease_s=j.lease_s,
            keep_s=j.keep_s,
            max_attempts=j.max_attempts,
            timeout_s=settings.redis.timeout_s,
        )
        spool = Spool(j.spool_dir or settings.cache_dir / "spool", int(j.spool_max_gb * 1e9))
        host = j.spool_host or socket.gethostname()
        return cls(store, spool, j, host, metrics=metrics or NOOP, limits=settings.limits)

    async def submit(
        self,
        source: BinaryIO,
        filename: str,
        options: TranscribeOptions,
        caller: Caller,
        callback_url: str | None,
        store_audio: bool = False,
    ) -> Job:
        """Spool an upload and queue its job; 429 past the job bounds, 503 when the
        spool is full, 413 when the file's header says its audio is longer than the run
        would take (``limits``). ``store_audio``: its session keeps the audio for
        playback."""
        if callback_url is not None:
            await callbacks.check_callback_url(callback_url, self.settings.callback_allow)
        s = self.settings
        await self.store.check_room(caller.owner, s.max_queued, s.max_queued_per_key)
        job_id = str(uuid.uuid4())
        path = await asyncio.to_thread(self.spool.save, job_id, source)
        try:
            if path.stat().st_size == 0:
                raise EmptyAudioError("the file is empty")  # as a synchronous upload says
            if self.limits is not None:  # too long: refused now, not failed once it runs
                await asyncio.to_thread(check_header_length, path, self.limits, store_audio)
            job = await self.store.create(
                job_id,
                filename=filename,
                owner=caller.owner,
                key=caller.key,
                options={**options_to_dict(options), STORE_AUDIO: store_audio},
                spool=str(path),
                host=self.host,
                callback_url=callback_url,
                max_open=self.settings.max_queued,
                max_open_per_key=self.settings.max_queued_per_key,
            )
        except BaseException:
            self.spool.delete(job_id)
            raise
        self.nudge()
        return job

    def attach_worker(self) -> None:
        """Let :meth:`nudge` wake a worker running on the current event loop."""
        self.wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def nudge(self) -> None:
        """Wake the worker (it polls anyway); safe from any thread or event loop."""
        if self.wake is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.wake.set)

    async def get(self, job_id: str, owner: str | None) -> JobRecord | None:
        """The caller's job with this id, if there is one."""
        return await self.store.get(job_id, owner)

    async def cancel(self, record: JobRecord) -> JobStatus | None:
        """Cancel a queued or running job; its upload is deleted (a running one's by the
        replica running it, when its run stops). Returns the job's status before: it may
        have ended meanwhile (``done``, ``failed``), and then nothing was cancelled."""
        before = await self.store.cancel(record.job.id)
        if before in ("queued", "running"):
            self.metrics.request("job", "cancelled", CANCELLED_STATUS)
        if before == "queued" and self.spool.holds(record.spool):
            self.spool.delete(record.job.id)
        return before

    async def callback_secret(self, owner: str | None) -> str:
        """The signing secret of ``owner``'s callbacks."""
        if self._master_secret is None:
            configured = self.settings.callback_secret
            self._master_secret = configured or await self.store.master_secret(
                callbacks.new_master_secret()
            )
        return callbacks.key_secret(self._master_secret, owner)


class JobWorker:
    """Claims and runs this replica's jobs until stopped."""

    def __init__(
        self,
        jobs: Jobs,
        runner: PipelineRunner,
        sessions: SessionStore,
        access: Access,
        runs: Executor,
    ) -> None:
        self.jobs = jobs
        self.runner = runner
        self.sessions = sessions
        self.access = access
        self.runs = runs
        self._running: dict[str, asyncio.Task[None]] = {}
        self._deliveries: set[asyncio.Task[bool]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        # Set by stop(): the loop ends on its own even when its cancellation is lost
        # (Python 3.11's asyncio.wait_for drops one that arrives as the awaitable it
        # waits for completes, and redis-py sends every command through it).
        self._stopping = False

    @property
    def store(self) -> JobStore:
        """The job store."""
        return self.jobs.store

    def start(self) -> None:
        """Start claiming jobs on the running event loop. An app whose lifespan runs
        again while the first still does (several test clients) keeps one worker."""
        if self._loop_task is not None and not self._loop_task.done():
            return
        self.jobs.attach_worker()
        self._stopping = False
        self._loop_task = asyncio.create_task(self._loop(), name="job-worker")

    async def stop(self) -> None:
        """Stop claiming; the jobs running here go back to the queue at once. Only the
        lifespan that started the worker stops it."""
        if self._loop_task is None or self._loop_task.get_loop() is not asyncio.get_running_loop():
            return
        self._stopping = True
        if self.jobs.wake is not None:
            self.jobs.wake.set()
        tasks = [t for t in (self._loop_task, *self._running.values()) if t is not None]
        for task in [*tasks, *self._deliveries]:
            task.cancel()
        await asyncio.gather(*tasks, *self._deliveries, return_exceptions=True)
        self._loop_task = None

    async def _loop(self) -> None:
        wake = self.jobs.wake
        assert wake is not None
        next_reap = next_sweep = 0.0
        while not self._stopping:
            try:
                now = time.monotonic()
                if now >= next_reap:
                    await self.store.heartbeat(self.jobs.host, self.host_ttl_s)
                    await self._reap()
                    next_reap = now + min(self.store.lease_s / 3, 5.0)
                if now >= next_sweep:
                    await self._sweep()
                    next_sweep = now + SWEEP_EVERY_S
                await self._claim()
            except EthostralError as exc:  # Redis down: try again shortly
                log.warning("job worker: %s", exc.detail)
            except Exception:  # the worker must outlive any one bad record
                log.exception("job worker")
            if self._stopping:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_S)

    @property
    def host_ttl_s(self) -> float:
        """How long this spool's queued jobs outlive the last replica that reads it."""
        return max(10 * self.store.lease_s, HOST_TTL_S)

    async def _claim(self) -> None:
        while not self._stopping and len(self._running) < self.jobs.settings.max_running:
            claim = await self.store.claim(self.jobs.host)
            if claim is None:
                return
            job_id = claim.record.job.id
            if job_id in self._running:
                # Its lease lapsed while it still runs here (Redis was out longer than a
                # lease): the run in progress keeps it.
                await self.store.requeue(claim, delay_s=self.store.lease_s, refund=True)
                return
            task = asyncio.create_task(self._run(claim), name=f"job-{job_id}")
            self._running[job_id] = task
            task.add_done_callback(self._forget_run)

    def _forget_run(self, task: asyncio.Task[None]) -> None:
        for job_id, running in list(self._running.items()):
            if running is task:
                del self._running[job_id]

    async def _reap(self) -> None:
        _, failed = await self.store.reap()
        failed += await self.store.fail_orphans()
        for job_id in failed:
            record = await self.store.get(job_id)
            if record is not None:
                self._finish_failed(record)

    async def _sweep(self) -> None:
        """Delete spooled uploads whose jobs are gone (ended while this replica was
        down, or never made)."""
        keep = await self.store.open_jobs()
        gone = await asyncio.to_thread(self.jobs.spool.sweep, keep)
        if gone:
            log.info("spool: deleted %d upload(s) of ended jobs", len(gone))

    async def _run(self, claim: Claim) -> None:
        record = claim.record
        job_id = record.job.id
        stop = threading.Event()
        keeper = asyncio.create_task(self._keep_lease(claim, stop))
        try:
            caller = await self.access.caller_of(record.owner or None)
            if caller is None:
                await self._fail(claim, "the API key that made this job was revoked", 401)
                return
            try:
                async with self.access.slot(caller, "uploads"):
                    with contextlib.suppress(EthostralError):  # the run matters, not its event
                        await self.store.publish_current(job_id)
                    session, audio = await self._transcribe(claim, stop)
            except QuotaExceededError as exc:
                # All the key's upload slots are busy: the job waits in the queue.
                delay = min(exc.retry_after_s, SLOT_RETRY_S)
                await self.store.requeue(claim, delay_s=delay, refund=True)
                return
            await self._complete(claim, caller, session, audio)
        except JobCancelled:
            if await self._cancelled(job_id):
                self.jobs.spool.delete(job_id)
        except (BackendUnavailableError, StoreUnavailableError) as exc:
            if record.job.attempts >= self.store.max_attempts:
                await self._fail(claim, exc.detail, exc.status_code)
            else:
                log.warning("job %s: %s; it runs again later", job_id, exc.detail)
                delay = RETRY_BACKOFF_S * record.job.attempts
                with contextlib.suppress(EthostralError):
                    await self.store.requeue(claim, delay_s=delay)
        except EthostralError as exc:
            await self._fail(claim, exc.detail, exc.status_code)
        except asyncio.CancelledError:
            stop.set()  # the run's thread stops at its next progress report
            with contextlib.suppress(EthostralError):
                await asyncio.shield(self.store.requeue(claim, refund=True))
            raise
        except Exception as exc:
            error_id = uuid.uuid4().hex[:12]
            log.error("job %s failed (error id %s)", job_id, error_id, exc_info=exc)
            await self._fail(
                claim, f"internal error (id {error_id}); the server log has the details", 500
            )
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _transcribe(
        self, claim: Claim, stop: threading.Event
    ) -> tuple[Session, bytes | None]:
        """Run the pipeline over the spooled upload on a worker thread, reporting
        progress to the job; the session and its kept audio (``store_audio``, else None).
        Raises :class:`JobCancelled` once ``stop`` is set."""
        record = claim.record
        kept = KeptAudio() if record.options.get(STORE_AUDIO) else None
        loop = asyncio.get_running_loop()
        last = {"t": 0.0, "stage": "", "fraction": -1.0}
        # One write (and its event) at a time, in the order reported: the lock is fair,
        # and the loop starts the writes in the order they were handed to it.
        in_order = asyncio.Lock()

        async def write(stage: str, fraction: float) -> None:
            async with in_order:
                await self.store.progress(claim, stage, fraction)

        def listener(stage: str, fraction: float) -> None:
            if stop.is_set():
                raise JobCancelled(record.job.id)
            now = time.monotonic()
            if stage == last["stage"] and (
                now - float(last["t"]) < PROGRESS_EVERY_S
                or fraction - float(last["fraction"]) < 0.005
            ):
                return
            last.update(t=now, stage=stage, fraction=fraction)
            future = asyncio.run_coroutine_threadsafe(write(stage, fraction), loop)
            future.add_done_callback(_log_failure)

        def work() -> Session:
            path = Path(record.spool)
            if not path.is_file():
                raise UploadLostError(
                    f"the upload of job {record.job.id} is no longer in the spool of "
                    f"{record.host!r}; upload it again"
                )
            with progress.listening(listener), path.open("rb") as source:
                return self.runner.run(
                    source, record.job.filename, options_from_dict(record.options), keep_audio=kept
                )

        context = contextvars.copy_context()
        run = loop.run_in_executor(self.runs, context.run, work)
        try:
            session = await asyncio.shield(run)
        except asyncio.CancelledError:
            stop.set()
            raise
        return session, kept.data if kept else None

    async def _keep_lease(self, claim: Claim, stop: threading.Event) -> None:
        """Renew the claim's lease while the job runs; set ``stop`` when the job was
        cancelled or another replica took it over."""
        while True:
            await asyncio.sleep(self.store.lease_s / 3)
            try:
                status = await self.store.renew(claim)
            except EthostralError as exc:  # Redis down: the next renewal may get through
                log.warning("job %s: lease not renewed: %s", claim.record.job.id, exc.detail)
                continue
            if status != "running":
                log.info("job %s is %s: stopping its run", claim.record.job.id, status)
                stop.set()
                return

    async def _complete(
        self, claim: Claim, caller: Caller, session: Session, audio: bytes | None
    ) -> None:
        record = claim.record
        job_id = record.job.id
        session = session.model_copy(update={"id": job_id})
        owner = record.owner or None
        stored = await self.store.complete(
            claim, lambda tx: self.sessions.add_save(tx, session, owner, audio)
        )
        if not stored:
            if await self._cancelled(job_id):
                self.jobs.spool.delete(job_id)
            return
        self.jobs.spool.delete(job_id)
        self.jobs.metrics.request("job", "ok", 200)
        self.jobs.metrics.audio("job", session.duration_ms / 1000)
        done = replace(
            record,
            job=record.job.model_copy(
                update={"status": "done", "stage": None, "progress": 1.0, "updated_at": now_iso()}
            ),
        )
        self._callback(done, session)  # before anything else can fail
        try:
            await self.access.add_audio(caller, session.duration_ms / 1000)
        except EthostralError as exc:
            log.warning("audio of job %s not counted: %s", job_id, exc.detail)

    async def _fail(self, claim: Claim, detail: str, status_code: int) -> None:
        job_id = claim.record.job.id
        if await self.store.fail(job_id, detail, status_code, lease=claim.lease):
            record = await self.store.get(job_id)
            if record is not None:
                self._finish_failed(record)
        elif await self._cancelled(job_id):
            self.jobs.spool.delete(job_id)

    def _finish_failed(self, record: JobRecord) -> None:
        status = record.job.status_code or 500
        self.jobs.metrics.request("job", http_outcome(status), status)
        if self.jobs.spool.holds(record.spool):
            self.jobs.spool.delete(record.job.id)
        self._callback(record, None)

    async def _cancelled(self, job_id: str) -> bool:
        record = await self.store.get(job_id)
        return record is None or record.job.status == "cancelled"

    def _callback(self, record: JobRecord, session: Session | None) -> None:
        if record.callback_url is None:
            return
        task = asyncio.create_task(self._deliver(record, session))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, record: JobRecord, session: Session | None) -> bool:
        assert record.callback_url is not None
        body = callback_body(record.job, session)
        secret = await self.jobs.callback_secret(record.owner or None)
        s = self.jobs.settings
        return await callbacks.deliver(
            record.callback_url,
            body,
            secret,
            record.job.id,
            s.callback_allow,
            attempts=s.callback_attempts,
            timeout_s=s.callback_timeout_s,
        )


def callback_body(job: Job, session: Session | None) -> bytes:
    """What a callback POSTs: ``{"job": Job, "session": Session | null}``."""
    job_json = job.model_dump_json()
    session_json = session.model_dump_json() if session is not None else "null"
    return f'{{"job":{job_json},"session":{session_json}}}'.encode()


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("job progress not recorded: %r", exc)
