"""Embedded speaker diarization: resemblyzer's packaged GE2E encoder + k-means clustering.

Sliding windows over the speech regions are embedded in a few batched forward passes of
the encoder's ONNX export (mel frames computed as resemblyzer's own
``audio.wav_to_mel_spectrogram`` does; see :mod:`.speaker_encoder`), then clustered by
:mod:`ethostral_serve.pipeline.clustering`. Runs on CPU with onnxruntime and numpy: torch,
resemblyzer and librosa are imported only to make the export, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.diarization.speaker_encoder import (
    EMBEDDING_SIZE,
    HOP,
    SpeakerEncoder,
    ensure_speaker_encoder,
)
from ethostral_serve.pipeline.clustering import ClusteringOptions, diarize_windows
from ethostral_serve.pipeline.types import Span, SpeakerCount, SpeakerTurn
from ethostral_serve.settings import DiarizerSettings

_FRAMES_PER_S = SAMPLE_RATE // HOP


class ResemblyzerDiarizer:
    """Who spoke when, from resemblyzer d-vectors of sliding windows.

    The encoder runs on CPU through onnxruntime (``settings.device`` is for the
    pyannote backend's torch); its export is made in ``cache_dir`` on first use.
    """

    def __init__(self, settings: DiarizerSettings, cache_dir: Path) -> None:
        self.settings = settings
        self._encoder = SpeakerEncoder(ensure_speaker_encoder(cache_dir))

    def options(self, speakers: SpeakerCount | None = None) -> ClusteringOptions:
        """The clustering options these settings (and a request's count) stand for."""
        s = self.settings
        lo, hi = s.min_speakers, max(s.min_speakers, s.max_speakers)
        if speakers is not None and speakers.given:
            lo = speakers.num or speakers.min or 1
            hi = speakers.upper or max(lo, s.max_speakers)
        return ClusteringOptions(
            threshold=s.threshold,
            min_speakers=lo,
            max_speakers=hi,
            min_cluster_s=s.min_cluster_s,
            min_turn_s=s.min_turn_s,
        )

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns (one at a time) over the speech ``regions`` of 16 kHz mono
        ``samples``, within the request's ``speakers`` count when given."""
        spans = clip_regions(regions, len(samples) / SAMPLE_RATE)
        if not spans:
            return []
        embeddings, windows = self.embed_windows(samples, spans)
        if len(embeddings) == 0:  # only speech too short to embed: one speaker
            return [SpeakerTurn(r.start, r.end, "s0") for r in spans]
        return diarize_windows(embeddings, windows, spans, self.options(speakers))

    def embed_utterance(self, samples: np.ndarray) -> np.ndarray | None:
        """One unit-length speaker embedding for a whole utterance (None if too short)."""
        spans = [Span(0.0, len(samples) / SAMPLE_RATE)]
        embeddings, _ = self.embed_windows(samples, spans)
        if len(embeddings) == 0:
            return None
        mean = embeddings.mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None

    def embed_windows(
        self, samples: np.ndarray, regions: Sequence[Span], workers: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n, 256)`` and ``[start, end)`` seconds ``(n, 2)`` of the windows.

        Regions of at least ``window_s`` get windows every ``step_s`` (the last one flush
        with the region's end); shorter regions of at least ``min_window_s`` get one
        window of their own length; shorter ones get none (their speaker is the nearest
        window's). ``workers`` is not used: the gain is set over all the regions at
        once and the windows go through the network in shared batches.
        """
        s = self.settings
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        spans = clip_regions(regions, len(x) / SAMPLE_RATE)
        win_frames = max(1, round(s.window_s * _FRAMES_PER_S))
        step_frames = max(1, round(s.step_s * _FRAMES_PER_S))
        min_frames = max(1, round(s.min_window_s * _FRAMES_PER_S))
        gain = _gain(x, spans, s.target_dbfs)

        full: list[np.ndarray] = []
        short: list[np.ndarray] = []
        full_times: list[tuple[float, float]] = []
        short_times: list[tuple[float, float]] = []
        for r in spans:
            a, b = round(r.start * SAMPLE_RATE), round(r.end * SAMPLE_RATE)
            n_frames = (b - a) // HOP
            if n_frames < min_frames:
                continue
            mel = self._encoder.mel(x[a:b] * gain)[:n_frames]
            t0 = a / SAMPLE_RATE
            if n_frames < win_frames:
                short.append(mel)
                short_times.append((t0, t0 + n_frames / _FRAMES_PER_S))
                continue
            starts = list(range(0, n_frames - win_frames + 1, step_frames))
            if n_frames - (starts[-1] + win_frames) > step_frames // 2:
                starts.append(n_frames - win_frames)
            for f in starts:
                full.append(mel[f : f + win_frames])
                full_times.append((t0 + f / _FRAMES_PER_S, t0 + (f + win_frames) / _FRAMES_PER_S))

        parts = []
        if full:
            parts.append(self._encoder.embed(np.stack(full)))
        if short:
            parts.append(self._encoder.embed_ragged(short))
        if not parts:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32), np.zeros((0, 2))
        emb = np.concatenate(parts)
        times = np.array(full_times + short_times, dtype=np.float64)
        order = np.argsort(times[:, 0], kind="stable")
        return emb[order], times[order]


def clip_regions(regions: Sequence[Span], duration: float) -> list[Span]:
    """Regions clipped to ``[0, duration]``, sorted, empty ones dropped."""
    out = [Span(max(0.0, r.start), min(duration, r.end)) for r in regions]
    return sorted((r for r in out if r.end > r.start), key=lambda r: r.start)


def _gain(x: np.ndarray, regions: Sequence[Span], target_dbfs: float | None) -> float:
    """Gain bringing the speech's RMS level to ``target_dbfs`` (the encoder's training level)."""
    if target_dbfs is None:
        return 1.0
    parts = [x[round(r.start * SAMPLE_RATE) : round(r.end * SAMPLE_RATE)] for r in regions]
    speech = np.concatenate(parts) if parts else x
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64)))) if speech.size else 0.0
    if rms < 1e-6:
        return 1.0
    return float(10 ** (target_dbfs / 20) / rms)
