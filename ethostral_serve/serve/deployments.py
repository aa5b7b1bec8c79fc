"""The deployments: VAD, Diarizer, EthostralModel (batched) and the FastAPI ingress.

Each wraps a backend from :mod:`ethostral_serve.engine`; the pipeline itself runs in the
ingress through :class:`~ethostral_serve.runner.PipelineRunner` with backends that
forward here (:mod:`ethostral_serve.serve.remote`). Resources below are the CPU
defaults; ``serve_config.yaml`` and ``configs/`` override them per deployment.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from ethostral_serve import metrics
from ethostral_serve.pipeline.types import (
    EmotionInput,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
)
from ethostral_serve.serve.metrics import RayMetrics
from ethostral_serve.serve.remote import ModelInfo, WindowJob
from ethostral_serve.settings import Settings

T = TypeVar("T")
log = logging.getLogger("ray.serve")  # replica logs go where Serve writes its own

# Model calls block a thread each while the model works or queues. Asyncio's default
# pool has cores + 4 threads, which live drafts, finals and upload batches together
# outgrow, so calls would wait for a thread rather than for the model.
_MODEL_CALLS = ThreadPoolExecutor(max_workers=64, thread_name_prefix="model-call")
# Named adapters (ethostral.adapters) one EthostralModel replica keeps loaded; the least
# recently used one is unloaded to make room. Serve routes an adapter's calls to the
# replicas that have it loaded.
MAX_ADAPTERS_PER_REPLICA = 4


async def offload(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the model-call threads."""
    return await asyncio.get_running_loop().run_in_executor(_MODEL_CALLS, fn, *args)


def settings_from(overrides: dict[str, Any] | None) -> Settings:
    """Settings from the environment (``ETHOSTRAL_*``) with the app's overrides on top."""
    return Settings(**(overrides or {}))


class BatchConfig(BaseModel):
    """Live-tunable batching of the EthostralModel deployment (its ``user_config``)."""

    max_batch_size: int = Field(4, ge=1, le=64, description="ASR windows per batch")
    batch_wait_timeout_s: float = Field(
        0.05, ge=0.0, le=5.0, description="how long a batch waits to fill"
    )
    emotion_max_batch_size: int = Field(32, ge=1, le=1024, description="segments per batch")
    emotion_batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=5.0)
    draft_max_batch_size: int = Field(
        8, ge=1, le=64, description="live drafts (partials of any streams) per batch"
    )
    draft_batch_wait_timeout_s: float = Field(
        0.005,
        ge=0.0,
        le=5.0,
        description="how long a draft batch waits to fill (it adds to every partial's latency)",
    )


@dataclass(frozen=True)
class DraftJob:
    """One live draft for the batched ``draft_batch`` method."""

    audio: np.ndarray
    language: str | None
    adapter: str | None = None


@serve.deployment(name="VAD", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class VAD:
    """Silero speech detection."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad
        from ethostral_serve.engine import load_vad

        loaded = settings_from(settings)
        self.vad = load_vad(loaded)
        self.stream_vad = SileroStreamingVad(loaded.vad.restart_s)
        self.metrics = RayMetrics()

    async def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions of 16 kHz mono samples, in seconds."""
        return await asyncio.to_thread(self.vad.speech_regions, samples)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def stream_step(self, items: list[tuple[np.ndarray, Any]]) -> list[Any]:
        """Live streams' VAD steps, batched across streams: (probabilities, next state)."""
        self.metrics.batch("vad_stream", len(items))
        return await asyncio.to_thread(self.stream_vad.step, items)

    async def ping(self) -> str:
        """Answer when the replica is up."""
        return "ok"


@serve.deployment(name="Diarizer", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=8)
class Diarizer:
    """Speaker diarization (the backend named in settings)."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        from ethostral_serve.engine import load_diarizer

        self.diarizer = load_diarizer(settings_from(settings))

    async def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns over the speech regions (within the request's speaker count)."""
        return await asyncio.to_thread(self.diarizer.diarize, samples, regions, speakers)

    async def backend(self) -> str:
        """The diarization backend this replica runs (its class name)."""
        return type(self.diarizer).__name__

    async def embed_utterance(self, samples: np.ndarray) -> np.ndarray | None:
        """A unit-length speaker embedding of a live utterance."""
        embed = getattr(self.diarizer, "embed_utterance", None)
        return None if embed is None else await asyncio.to_thread(embed, samples)

    async def ping(self) -> str:
        """Answer when the replica is up."""
        return "ok"


@serve.deployment(
    name="EthostralModel",
    ray_actor_options={"num_cpus": 1.0},
    max_ongoing_requests=64,
    user_config=BatchConfig().model_dump(),
)
class EthostralModel:
    """ASR + emotion with dynamic batching of windows and segments across requests."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        from ethostral_serve.engine import load_speech_model
        from ethostral_serve.pipeline.ports import WindowedSpeechModel

        model = load_speech_model(settings_from(settings), with_emotion=True)
        if not isinstance(model, WindowedSpeechModel):
            raise TypeError(f"{type(model).__name__} cannot be batched by window")
        self.model = model
        load_drafter = getattr(model, "load_drafter", None)
        if load_drafter is not None:
            load_drafter()  # load it now, not on the first live partial
        self.batch_sizes: dict[str, Counter[int]] = {
            "asr": Counter(),
            "emotion": Counter(),
            "draft": Counter(),
        }
        self.metrics = RayMetrics()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching knobs from ``user_config`` (live, no restart)."""
        cfg = BatchConfig.model_validate(user_config or {})
        self.transcribe_window.set_max_batch_size(cfg.max_batch_size)
        self.transcribe_window.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.classify_segment.set_max_batch_size(cfg.emotion_max_batch_size)
        self.classify_segment.set_batch_wait_timeout_s(cfg.emotion_batch_wait_timeout_s)
        self.draft_batch.set_max_batch_size(cfg.draft_max_batch_size)
        self.draft_batch.set_batch_wait_timeout_s(cfg.draft_batch_wait_timeout_s)
        log.info("batching: %s", cfg.model_dump())

    async def info(self) -> ModelInfo:
        """Languages and how emotion reads its input."""
        m = self.model
        return ModelInfo(
            languages=tuple(m.languages),
            multilingual=bool(m.multilingual),
            reads_encoder_states=bool(m.reads_encoder_states),
            classifies=bool(m.classifies),
            adapters=tuple(m.adapters),
            detects_language=bool(m.detects_language),
        )

    @serve.multiplexed(max_num_models_per_replica=MAX_ADAPTERS_PER_REPLICA)
    async def get_adapter(self, adapter: str) -> LoadedAdapter:
        """A named adapter loaded onto this replica's model (Serve's model multiplexing:
        it keeps the most recently used ones and unloads the rest)."""
        load = getattr(self.model, "load_adapter", None)
        if load is None:
            raise TypeError(f"{type(self.model).__name__} has no adapters to load")
        await offload(load, adapter)
        log.info("adapter %r loaded", adapter)
        return LoadedAdapter(self.model, adapter)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def transcribe_window(self, jobs: list[WindowJob]) -> list[Any]:
        """ASR of a batch of windows (from any requests), one result per window.

        Serve batches calls of one multiplexed adapter together; the model takes each
        window's adapter anyway, so a batch is right whatever it holds.
        """
        self.batch_sizes["asr"][len(jobs)] += 1
        self.metrics.batch("asr", len(jobs))
        for adapter in {j.adapter for j in jobs} - {None}:
            await self.get_adapter(adapter)  # loaded here, and most recently used
        return await offload(
            self.model.transcribe_windows,
            [j.audio for j in jobs],
            [j.language for j in jobs],
            [j.adapter for j in jobs],
        )

    async def settle_language(self, windows: list[np.ndarray], candidates: list[str]) -> str:
        """Of an unsure language vote's candidates, the one the model drafts best in
        ``windows`` (a model without the check: the most probable)."""
        settle = getattr(self.model, "settle_language", None)
        if settle is None:
            return candidates[0]
        return str(await offload(settle, windows, candidates))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def classify_segment(self, inputs: list[EmotionInput]) -> list[EmotionResult]:
        """Emotion of a batch of segments (from any requests), one result per segment."""
        self.batch_sizes["emotion"][len(inputs)] += 1
        self.metrics.batch("emotion", len(inputs))
        return await offload(self.model.classify, inputs)

    async def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of a live utterance, batched with other streams' drafts."""
        return await self.draft_batch(DraftJob(audio, language, adapter))

    # Two batches may run at once: the draft model runs calls in parallel (one per
    # stream.draft_cpu_threads cores), so a draft due while a batch runs need not wait.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=2)
    async def draft_batch(self, jobs: list[DraftJob]) -> list[tuple[str, str]]:
        """Drafts of a batch of live utterances (from any streams), one per utterance.

        On a CPU one batched pass costs less than as many single drafts. Serve batches
        calls of one multiplexed adapter together, as for :meth:`transcribe_window`.
        """
        self.batch_sizes["draft"][len(jobs)] += 1
        self.metrics.batch("draft", len(jobs))
        for adapter in {j.adapter for j in jobs} - {None}:
            await self.get_adapter(adapter)  # loaded here, and most recently used
        return await offload(
            self.model.partial_texts,
            [j.audio for j in jobs],
            [j.language for j in jobs],
            [j.adapter for j in jobs],
        )

    async def backend(self) -> str:
        """The speech model this replica runs (its class name)."""
        return type(self.model).__name__

    async def batch_stats(self) -> dict[str, dict[int, int]]:
        """How many batches of each size each method has run."""
        return {name: dict(sizes) for name, sizes in self.batch_sizes.items()}

    async def ping(self) -> str:
        """Answer when the replica is up."""
        return "ok"


class LoadedAdapter:
    """A named adapter held by Serve's multiplexing cache; unloaded when evicted."""

    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self._loaded = True

    def unload(self) -> None:
        """Remove the adapter from the model (once)."""
        if self._loaded:
            self._loaded = False
            self.model.unload_adapter(self.name)
            log.info("adapter %r unloaded", self.name)

    def __del__(self) -> None:
        # Serve calls this when it evicts the adapter; garbage collection may call it again
        self.unload()


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=200)
@serve.ingress()
class Ingress:
    """The FastAPI app: decodes uploads, runs the pipeline over the other deployments."""

    def __init__(
        self,
        vad: DeploymentHandle,
        diarizer: DeploymentHandle,
        model: DeploymentHandle,
        settings: dict[str, Any] | None = None,
    ) -> None:
        from ethostral_serve.api.auth import Access
        from ethostral_serve.api.jobs import Jobs
        from ethostral_serve.embedded_redis import RedisWatchdog, resolve_redis_url
        from ethostral_serve.runner import PipelineRunner
        from ethostral_serve.serve.remote import (
            RemoteDiarizer,
            RemoteSpeechModel,
            RemoteStreamBackends,
            RemoteVad,
        )
        from ethostral_serve.sessions import SessionStore
        from ethostral_serve.tracing import make_tracer

        self.settings = settings_from(settings)
        self._handles = {"VAD": vad, "Diarizer": diarizer, "EthostralModel": model}
        # Prometheus metrics of this replica; the Redis stores record into the installed one
        self.metrics = RayMetrics()
        metrics.install(self.metrics)
        url, self._embedded_redis = resolve_redis_url(self.settings)
        # An embedded Redis that dies (killed, out of memory) is started again with its
        # data; meanwhile requests get 503.
        self._redis_watchdog = (
            RedisWatchdog(self._embedded_redis).start() if self._embedded_redis else None
        )
        r = self.settings.redis
        self.store = SessionStore(
            url, key_prefix=r.key_prefix, ttl_s=r.ttl_s, timeout_s=r.timeout_s
        )
        self.access = Access.from_settings(url, self.settings)
        self.jobs = Jobs.from_settings(url, self.settings, self.metrics)
        timeout = self.settings.limits.backend_timeout_s
        self.speech = RemoteSpeechModel(
            model, timeout, language_windows=self.settings.asr.language_windows
        )
        self.runner = PipelineRunner.traced(
            self.settings,
            RemoteVad(vad, timeout),
            RemoteDiarizer(diarizer, timeout),
            self.speech,
            make_tracer(self.settings.tracing),
            stage_observer=self.metrics.stage,
        )
        self.stream_backends = RemoteStreamBackends(vad, diarizer, self.speech, timeout)

    def __del__(self) -> None:
        # Serve calls this when the replica shuts down: stop the embedded Redis this
        # replica started (its data is flushed to disk first), so nothing outlives
        # `serve run`.
        watchdog = getattr(self, "_redis_watchdog", None)
        if watchdog is not None:
            watchdog.stop()
        embedded = getattr(self, "_embedded_redis", None)
        if embedded is not None:
            embedded.stop()

    async def __serve_build_asgi_app__(self) -> Any:
        from ethostral_serve.api.app import create_app

        # The app's OpenAPI lists the model's languages and adapters: ask the model
        # deployment once, here, where awaiting does not block the event loop.
        await self.speech.load_info()
        checks = {name: _pinger(handle) for name, handle in self._handles.items()}
        return create_app(
            self.runner,
            self.store,
            self.settings,
            health_checks=checks,
            stream_backends=self.stream_backends,
            access=self.access,
            jobs=self.jobs,
            metrics=self.metrics,
        )


def _pinger(handle: DeploymentHandle) -> Any:
    async def ping() -> None:
        await handle.ping.remote()

    return ping
