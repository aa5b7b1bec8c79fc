"""Silero VAD (the ONNX model shipped inside the ``silero-vad`` package)."""

from __future__ import annotations

import threading

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import Span
from ethostral_serve.settings import VadSettings


def import_silero_vad() -> object:
    """Import ``silero_vad`` without letting it pin torch to one thread process-wide."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        raise ModelLoadError("torch is required: pip install 'torch==2.11.0'") from exc
    threads = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError as exc:
        raise ModelLoadError("silero VAD is missing: pip install silero-vad") from exc
    finally:
        torch.set_num_threads(threads)
    return silero_vad


class SileroVad:
    """Offline speech detection over a whole recording."""

    def __init__(self, settings: VadSettings) -> None:
        silero_vad = import_silero_vad()
        self._silero = silero_vad
        self.settings = settings
        # The "sequence" ONNX graph scores blocks of ~16 s per call with the same
        # per-frame probabilities as the streaming model, instead of one call per 32 ms.
        self._model = silero_vad.load_silero_vad(onnx=True, sequence=True)  # type: ignore[attr-defined]
        # The wrapper keeps recurrent state between calls: one recording at a time.
        self._lock = threading.Lock()

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions in seconds, padded by ``speech_pad_ms`` and non-overlapping."""
        if samples.size == 0:
            return []
        s = self.settings
        with self._lock:
            stamps = self._silero.get_speech_timestamps_sequence(  # type: ignore[attr-defined]
                np.ascontiguousarray(samples, dtype=np.float32),
                self._model,
                threshold=s.threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=s.min_speech_ms,
                min_silence_duration_ms=s.min_silence_ms,
                speech_pad_ms=s.speech_pad_ms,
                max_speech_duration_s=s.max_chunk_s,
            )
        return [Span(st["start"] / SAMPLE_RATE, st["end"] / SAMPLE_RATE) for st in stamps]
