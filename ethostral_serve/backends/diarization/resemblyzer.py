"""Embedded speaker diarization: resemblyzer's packaged GE2E encoder + k-means clustering.

Sliding windows over the speech regions are embedded in a few batched forward passes
(mel frames from resemblyzer's own ``audio.wav_to_mel_spectrogram``), then clustered by
:mod:`ethostral_serve.pipeline.clustering`. Runs on CPU; the encoder weights ship inside
the ``resemblyzer`` wheel, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.clustering import ClusteringOptions, diarize_windows
from ethostral_serve.pipeline.types import Span, SpeakerCount, SpeakerTurn
from ethostral_serve.settings import DiarizerSettings

_HOP = 160  # resemblyzer's mel hop: 10 ms at 16 kHz
_FRAMES_PER_S = SAMPLE_RATE // _HOP
_MEL_BLOCK_FRAMES = 6000  # mel computed in blocks of 60 s to bound memory
_MEL_CONTEXT = 3  # frames each side of a block whose STFT window would touch its edge
_BATCH = 256


class ResemblyzerDiarizer:
    """Who spoke when, from resemblyzer d-vectors of sliding windows."""

    def __init__(self, settings: DiarizerSettings) -> None:
        try:
            import torch
            from resemblyzer import VoiceEncoder, audio
        except ImportError as exc:
            raise ModelLoadError(
                f"speaker diarization needs resemblyzer ({exc}): "
                "pip install resemblyzer 'setuptools<81'"
            ) from exc
        self.settings = settings
        self._torch: Any = torch
        self._mel_fn: Callable[[np.ndarray], np.ndarray] = audio.wav_to_mel_spectrogram
        self._device = settings.device
        self._encoder: Any = VoiceEncoder(device=settings.device, verbose=False).eval()
        self._mel_fn(np.zeros(SAMPLE_RATE // 10, dtype=np.float32))  # warm librosa up

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
        self, samples: np.ndarray, regions: Sequence[Span]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n, 256)`` and ``[start, end)`` seconds ``(n, 2)`` of the windows.

        Regions of at least ``window_s`` get windows every ``step_s`` (the last one flush
        with the region's end); shorter regions of at least ``min_window_s`` get one
        window of their own length; shorter ones get none (their speaker is the nearest
        window's).
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
            n_frames = (b - a) // _HOP
            if n_frames < min_frames:
                continue
            mel = self._mel(x[a:b] * gain)[:n_frames]
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
            parts.append(self._embed_equal(np.stack(full)))
        if short:
            parts.append(self._embed_ragged(short))
        if not parts:
            return np.zeros((0, 256), dtype=np.float32), np.zeros((0, 2))
        emb = np.concatenate(parts)
        times = np.array(full_times + short_times, dtype=np.float64)
        order = np.argsort(times[:, 0], kind="stable")
        return emb[order], times[order]

    def _mel(self, wav: np.ndarray) -> np.ndarray:
        """Mel frames of ``wav`` (frame i centred on sample 160·i), in bounded blocks."""
        n = len(wav) // _HOP + 1
        if n <= _MEL_BLOCK_FRAMES + 2 * _MEL_CONTEXT:
            return self._mel_fn(wav)
        out = []
        for f0 in range(0, n, _MEL_BLOCK_FRAMES):
            f1 = min(n, f0 + _MEL_BLOCK_FRAMES)
            lo = max(0, f0 - _MEL_CONTEXT)
            block = self._mel_fn(wav[lo * _HOP : (f1 + _MEL_CONTEXT) * _HOP])
            out.append(block[f0 - lo : f0 - lo + (f1 - f0)])
        return np.concatenate(out)

    def _embed_equal(self, mels: np.ndarray) -> np.ndarray:
        """Embed equal-length windows ``(n, frames, 40)`` in batches."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(mels), _BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(mels[i : i + _BATCH]))
                out.append(self._encoder(batch.to(self._device)).cpu().numpy())
        return np.concatenate(out)

    def _embed_ragged(self, mels: list[np.ndarray]) -> np.ndarray:
        """Embed windows of different lengths in one packed LSTM pass."""
        torch = self._torch
        from torch.nn.utils.rnn import pack_sequence

        enc = self._encoder
        with torch.inference_mode():
            packed = pack_sequence(
                [torch.from_numpy(m).to(self._device) for m in mels], enforce_sorted=False
            )
            _, (hidden, _) = enc.lstm(packed)
            raw = enc.relu(enc.linear(hidden[-1]))
            emb = raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-12)
        return emb.cpu().numpy()


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
