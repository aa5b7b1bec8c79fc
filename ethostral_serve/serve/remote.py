"""Backends that forward to Ray Serve deployments, so ``compose.transcribe`` runs as is.

They block on ``DeploymentResponse.result()`` and must be called from a worker thread
(the ingress runs the pipeline with ``asyncio.to_thread``), never on the event loop.
ASR windows and emotion inputs are sent as separate calls, all in flight at once, so
the model deployment's ``@serve.batch`` methods can batch them with other requests'.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.stream import ModelStreamBackends
from ethostral_serve.backends.windows import (
    MIN_WINDOW_SAMPLES,
    check_adapter,
    check_language,
    span_emotions,
    transcript_from_windows,
)
from ethostral_serve.errors import BackendUnavailableError
from ethostral_serve.pipeline import progress
from ethostral_serve.pipeline.language_id import (
    LanguageRanking,
    LanguageVote,
    checked_windows,
)
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionInput,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
    Transcript,
    WindowResult,
)
from ethostral_serve.serve.replicas import WATCH, ReplicaWatch

log = logging.getLogger("ethostral_serve.remote")


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to know about the model deployment's model."""

    languages: tuple[str, ...]
    multilingual: bool
    reads_encoder_states: bool
    classifies: bool
    adapters: tuple[str, ...] = ()
    detects_language: bool = True


@dataclass(frozen=True)
class WindowJob:
    """One ASR window for the batched ``transcribe_window`` method."""

    audio: np.ndarray
    language: str | None
    adapter: str | None = None


DEFAULT_TIMEOUT_S = 600.0


SLICE_S = 2.0  # a call is awaited in slices this long, checking its deployment between them
NO_REPLICA_GRACE_S = 30.0  # a deployment without a running replica this long: 503


def wait(
    response: Any,
    what: str,
    timeout_s: float,
    watch: ReplicaWatch = WATCH,
    grace_s: float = NO_REPLICA_GRACE_S,
) -> Any:
    """A deployment call's result; 503 (``BackendUnavailableError``) when it takes too long,
    when the replica serving it died (Serve starts another; the client retries), or when
    the deployment has had no running replica for ``grace_s`` (its node is gone)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import (
        BackPressureError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )

    deadline = time.monotonic() + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendUnavailableError(
                    f"the {what} deployment did not answer within {timeout_s:g} s; try again later"
                )
            try:
                return response.result(timeout_s=min(remaining, SLICE_S))
            except TimeoutError:
                missing_s = watch.without_replicas_s(what)
                if missing_s >= grace_s:
                    response.cancel()
                    raise BackendUnavailableError(
                        f"the {what} deployment has had no running replica for "
                        f"{missing_s:.0f} s (being started, or no node can host it); "
                        "try again later"
                    ) from None
    except (RayActorError, ReplicaUnavailableError) as exc:
        log.warning("a %s replica died during a call: %s", what, type(exc).__name__)
        raise BackendUnavailableError(
            f"the {what} replica serving this request stopped ({type(exc).__name__}); "
            "Serve is replacing it: try again later"
        ) from None
    except (BackPressureError, DeploymentUnavailableError) as exc:
        raise BackendUnavailableError(
            f"the {what} deployment cannot take the request now ({type(exc).__name__}); "
            "try again later"
        ) from None


class RemoteVad:
    """``VadBackend`` over the VAD deployment."""

    def __init__(self, handle: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._handle = handle
        self.timeout_s = timeout_s

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions, computed by the VAD deployment."""
        return list(wait(self._handle.speech_regions.remote(samples), "VAD", self.timeout_s))


class RemoteDiarizer:
    """``DiarizerBackend`` over the Diarizer deployment."""

    def __init__(self, handle: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._handle = handle
        self.timeout_s = timeout_s

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns, computed by the Diarizer deployment."""
        response = self._handle.diarize.remote(samples, list(regions), speakers)
        return list(wait(response, "Diarizer", self.timeout_s))


class RemoteSpeechModel:
    """``SpeechModel`` over the EthostralModel deployment's batched methods.

    One request keeps at most ``max_windows_in_flight`` ASR windows and
    ``max_segments_in_flight`` emotion inputs outstanding, so a long file cannot fill
    the deployment's queue and starve other requests (or its health checks).
    """

    def __init__(
        self,
        handle: Any,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_windows_in_flight: int = 8,
        max_segments_in_flight: int = 32,
        language_windows: int = 6,
    ) -> None:
        self._handle = handle
        self.language_windows = max(1, language_windows)
        self._info: ModelInfo | None = None
        self.timeout_s = timeout_s
        self.max_windows_in_flight = max(1, max_windows_in_flight)
        self.max_segments_in_flight = max(1, max_segments_in_flight)

    @property
    def info(self) -> ModelInfo:
        """The deployment's model description (fetched once)."""
        if self._info is None:
            self._info = self._wait(self._handle.info.remote())
        return self._info

    async def load_info(self) -> ModelInfo:
        """Fetch the model description without blocking the event loop (the ingress does
        this before it builds its app, whose OpenAPI lists the languages and adapters)."""
        if self._info is None:
            try:
                self._info = await asyncio.wait_for(self._handle.info.remote(), self.timeout_s)
            except TimeoutError:
                raise BackendUnavailableError(
                    f"the EthostralModel deployment did not answer within {self.timeout_s:g} s"
                ) from None
        return self._info

    @property
    def languages(self) -> tuple[str, ...]:
        """Language codes the deployment's model accepts."""
        return self.info.languages

    @property
    def adapters(self) -> tuple[str, ...]:
        """Adapter names the deployment's model accepts."""
        return self.info.adapters

    def _wait(self, response: Any) -> Any:
        return wait(response, "EthostralModel", self.timeout_s)

    def check_language(self, language: str | None) -> str | None:
        """Validate against the deployment's language list."""
        return check_language(language, self.info.languages)

    def check_adapter(self, adapter: str | None) -> str | None:
        """Validate against the deployment's adapter names."""
        return check_adapter(adapter, self.info.adapters)

    def _model(self, adapter: str | None) -> Any:
        """The handle; for a named adapter, one that Serve's model multiplexing routes to
        a replica that has it loaded (and that batches only its calls together)."""
        if adapter is None:
            return self._handle
        return self._handle.options(multiplexed_model_id=adapter)

    @property
    def classifies(self) -> bool:
        """Whether the deployment's model classifies emotion (else only inline ones)."""
        return self.info.classifies

    @property
    def reads_encoder_states(self) -> bool:
        """Whether emotion inputs are the ASR's encoder frames (else audio)."""
        return self.info.reads_encoder_states

    def transcribe_windows(
        self,
        windows: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[WindowResult]:
        """Each window its own call to the deployment's batched window method, all in
        flight at once."""
        named = adapters or [None] * len(windows)
        jobs = [WindowJob(*job) for job in zip(windows, languages, named, strict=True)]
        responses = [self._model(j.adapter).transcribe_window.remote(j) for j in jobs]
        return [self._wait(r) for r in responses]

    def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of a live utterance: text and language."""
        response = self._model(adapter).partial_text.remote(audio, language, adapter)
        text, detected = self._wait(response)
        return text, detected

    def partial_texts(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[tuple[str, str]]:
        """Each draft its own call to the deployment's batched draft method, all in
        flight at once."""
        named = adapters or [None] * len(audios)
        calls = zip(audios, languages, named, strict=True)
        responses = [
            self._model(adapter).partial_text.remote(audio, language, adapter)
            for audio, language, adapter in calls
        ]
        return [self._wait(r) for r in responses]

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        """Send every window as its own call, at most ``max_windows_in_flight`` at once.

        When the model detects languages and none is given, the first
        ``language_windows`` windows with speech go first, each detecting its own, and
        :meth:`_settle_language` pools them; the rest go with the pooled language.
        """
        windows = [c.samples(samples, SAMPLE_RATE) for c in chunks]
        results: list[WindowResult | None] = [None] * len(windows)
        done = itertools.count(1)

        def tick() -> None:
            progress.report("asr", next(done), len(windows))

        sent = 0
        if language is None and self.info.detects_language:
            speech = [i for i, w in enumerate(windows) if len(w) >= MIN_WINDOW_SAMPLES]
            voters = speech[: self.language_windows]
            sent = voters[-1] + 1 if voters else len(windows)
            self._send(windows, range(sent), None, adapter, results, tick)
            language = self._settle_language(windows[:sent], results, adapter)
        self._send(windows, range(sent, len(windows)), language, adapter, results, tick)
        final = [r if r is not None else WindowResult.empty(language) for r in results]
        return transcript_from_windows(chunks, final, self.info.multilingual)

    def _settle_language(
        self,
        windows: Sequence[np.ndarray],
        results: list[WindowResult | None],
        adapter: str | None,
    ) -> str | None:
        """Pool the languages the first windows detected (``results[: len(windows)]``);
        those decoded in another language than the pooled leader are sent again with
        it. Returns the leader (None: no window had speech)."""
        vote = LanguageVote(self.language_windows)
        for window, result in zip(windows, results, strict=False):
            if result is not None:
                vote.add(_ranking(result), len(window) / SAMPLE_RATE)
        lead = vote.leader()
        if lead is None:
            return None
        language, probability = lead
        drafted = checked_windows([len(w) / SAMPLE_RATE for w in windows])
        if vote.unsure and drafted:
            response = self._handle.settle_language.remote(
                [windows[i] for i in drafted], vote.candidates()
            )
            language = str(self._wait(response))
            probability = vote.probability(language)
        heard = [None if r is None else r.language for r in results[: len(windows)]]
        again = [
            i
            for i, (window, found) in enumerate(zip(windows, heard, strict=True))
            if len(window) >= MIN_WINDOW_SAMPLES and found != language
        ]
        self._send(windows, again, language, adapter, results, None)
        for result in results[: len(windows)]:
            if result is not None:
                result.language_probability = probability
        return language

    def _send(
        self,
        windows: Sequence[np.ndarray],
        indices: Iterable[int],
        language: str | None,
        adapter: str | None,
        results: list[WindowResult | None],
        tick: Callable[[], None] | None,
    ) -> None:
        """Recognise ``windows[i]`` for each index into ``results[i]``, at most
        ``max_windows_in_flight`` calls outstanding."""
        todo = list(indices)
        step = self.max_windows_in_flight
        for lo in range(0, len(todo), step):
            wave = todo[lo : lo + step]
            responses = [
                self._model(adapter).transcribe_window.remote(
                    WindowJob(windows[i], language, adapter)
                )
                for i in wave
            ]
            for i, response in zip(wave, responses, strict=True):
                results[i] = self._wait(response)
                if tick is not None:
                    tick()

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult | None]:
        """Inline emotions where the model wrote them; every other segment is sent as its
        own call to the batched emotion method."""
        info = self.info
        classify = self.classify if info.classifies else None
        return span_emotions(samples, transcript, spans, info.reads_encoder_states, classify)

    def classify(self, inputs: Sequence[EmotionInput]) -> list[EmotionResult]:
        """One emotion per input, each its own call to the batched emotion method."""
        out: list[EmotionResult] = []
        step = self.max_segments_in_flight
        for lo in range(0, len(inputs), step):
            wave = [self._handle.classify_segment.remote(x) for x in inputs[lo : lo + step]]
            out += [self._wait(response) for response in wave]
            progress.report("emotion", len(out), len(inputs))
        return out


class RemoteStreamBackends(ModelStreamBackends):
    """``StreamBackends`` over the deployments (VAD steps are batched across streams)."""

    def __init__(
        self,
        vad: Any,
        diarizer: Any,
        model: RemoteSpeechModel,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """``model``: the ingress's speech model (one model-info call serves both)."""
        self._vad = vad
        self._diarizer = diarizer
        self.model = model
        self.timeout_s = timeout_s

    def new_vad_state(self) -> Any:
        """A fresh per-stream VAD state (it travels with every step)."""
        from ethostral_serve.backends.vad.silero_stream import VadStreamState

        return VadStreamState()

    def vad_step(self, samples: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """One stream's step through the VAD deployment's batched ``stream_step``."""
        probs, new_state = wait(
            self._vad.stream_step.remote((samples, state)), "VAD", self.timeout_s
        )
        return probs, new_state

    def embed(self, audio: np.ndarray) -> np.ndarray | None:
        """A speaker embedding from the Diarizer deployment."""
        return wait(self._diarizer.embed_utterance.remote(audio), "Diarizer", self.timeout_s)

    def diarize(
        self, samples: np.ndarray, regions: Sequence[Span], speakers: SpeakerCount | None
    ) -> list[SpeakerTurn]:
        """Speaker turns of a whole stream from the Diarizer deployment."""
        response = self._diarizer.diarize.remote(samples, list(regions), speakers)
        return list(wait(response, "Diarizer", self.timeout_s))


def _ranking(result: WindowResult) -> LanguageRanking:
    """A window's language ranking; a model that reports only its language counts it
    with its probability."""
    if result.language_ranking:
        return result.language_ranking
    if result.language is None:
        return ()
    return ((result.language, result.language_probability),)
