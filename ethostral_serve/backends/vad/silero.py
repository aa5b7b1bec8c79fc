"""Silero VAD: the ONNX models shipped inside the ``silero-vad`` package, run with
onnxruntime alone.

The package itself is never imported: its ``__init__`` imports torch, which costs seconds
at start-up. The model files are found through the package's import spec instead.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.onnx_session import cpu_onnx_session
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.streaming import VAD_FRAME
from ethostral_serve.pipeline.types import Span
from ethostral_serve.pipeline.vad_regions import speech_regions_from_probs
from ethostral_serve.settings import VadSettings

CONTEXT = 64  # samples of the previous frame Silero prepends to each frame at 16 kHz
STATE_SIZE = 128  # LSTM width of the sequence model
BLOCK_FRAMES = 512  # frames scored per call of the sequence model (~16 s)
SEQUENCE_MODEL = "silero_vad_16k_sequence.onnx"
SILERO = "Silero VAD"  # the model's name in load errors


def silero_model_path(name: str) -> Path:
    """Path of a model file in the installed ``silero-vad`` package, without importing it."""
    # ``find_spec`` of a top-level package locates it without running its ``__init__``.
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("silero VAD is missing: pip install silero-vad")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise ModelLoadError(f"Silero VAD model {name} not found at {path}: reinstall silero-vad")
    return path


def frame_blocks(samples: np.ndarray) -> Iterator[np.ndarray]:
    """The recording as blocks of at most ``BLOCK_FRAMES`` rows of ``CONTEXT + VAD_FRAME``
    samples: each 512-sample frame after the last 64 samples of the frame before it (zeros
    before the first), the last frame padded with zeros."""
    n_frames = -(-samples.size // VAD_FRAME)
    context = np.zeros(CONTEXT, np.float32)
    for first in range(0, n_frames, BLOCK_FRAMES):
        count = min(BLOCK_FRAMES, n_frames - first)
        frames = np.zeros(count * VAD_FRAME, np.float32)
        chunk = samples[first * VAD_FRAME : (first + count) * VAD_FRAME]
        frames[: chunk.size] = chunk
        block = np.empty((count, CONTEXT + VAD_FRAME), np.float32)
        block[:, CONTEXT:] = frames.reshape(count, VAD_FRAME)
        block[0, :CONTEXT] = context
        block[1:, :CONTEXT] = block[:-1, -CONTEXT:]
        context = block[-1, -CONTEXT:].copy()
        yield block


class SileroVad:
    """Offline speech detection over a whole recording."""

    def __init__(self, settings: VadSettings) -> None:
        self.settings = settings
        # The "sequence" graph scores a block of frames per call with the same per-frame
        # probabilities as the streaming model, instead of one call per 32 ms.
        # The recurrent state lives in each call, and onnxruntime sessions may run from
        # several threads at once: recordings can be scored concurrently.
        self._session = cpu_onnx_session(silero_model_path(SEQUENCE_MODEL), SILERO)

    def speech_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of every 512-sample frame (the last one zero-padded)."""
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        h = np.zeros((1, 1, STATE_SIZE), np.float32)
        c = np.zeros((1, 1, STATE_SIZE), np.float32)
        probs = []
        for block in frame_blocks(x):
            p, h, c = self._session.run(
                ["speech_probs", "hn", "cn"], {"input": block, "h": h, "c": c}
            )
            probs.append(np.asarray(p, np.float32).reshape(-1))
        return np.concatenate(probs) if probs else np.zeros(0, np.float32)

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions in seconds, padded by ``speech_pad_ms`` and non-overlapping."""
        if samples.size == 0:
            return []
        s = self.settings
        regions = speech_regions_from_probs(
            self.speech_probabilities(samples),
            samples.size,
            threshold=s.threshold,
            min_speech_ms=s.min_speech_ms,
            min_silence_ms=s.min_silence_ms,
            speech_pad_ms=s.speech_pad_ms,
            max_speech_s=s.max_chunk_s,
            fallback_threshold=s.fallback_threshold,
        )
        return [Span(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in regions]
