"""Silero VAD: the ONNX models shipped inside the ``silero-vad`` package, run with
onnxruntime alone.

The package itself is never imported: its ``__init__`` imports torch, which costs seconds
at start-up. The model files are found through the package's import spec instead.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.cores import default_cpu_threads
from ethostral_serve.backends.onnx_session import cpu_onnx_session
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.streaming import VAD_FRAME
from ethostral_serve.pipeline.types import Span
from ethostral_serve.pipeline.vad_regions import speech_spans
from ethostral_serve.settings import VadSettings

CONTEXT = 64  # samples of the previous frame Silero prepends to each frame at 16 kHz
STATE_SIZE = 128  # LSTM width of the sequence model
BLOCK_FRAMES = 512  # frames scored per call of the sequence model (~16 s)
RESTART_WARMUP_S = 1.0  # audio a restarted state hears before its frames count
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


def frame_rows(samples: np.ndarray, first: int, count: int) -> np.ndarray:
    """Rows of ``CONTEXT + VAD_FRAME`` samples for frames ``first`` to ``first + count - 1``:
    each 512-sample frame after the last 64 samples before it (zeros before the recording
    starts), frames past its end padded with zeros."""
    start = first * VAD_FRAME - CONTEXT
    padded = np.zeros(CONTEXT + count * VAD_FRAME, np.float32)
    chunk = samples[max(start, 0) : (first + count) * VAD_FRAME]
    offset = max(-start, 0)
    padded[offset : offset + chunk.size] = chunk
    windows = np.lib.stride_tricks.sliding_window_view(padded, CONTEXT + VAD_FRAME)
    return np.ascontiguousarray(windows[::VAD_FRAME])


def restart_frames(restart_s: float) -> tuple[int, int]:
    """``(period, warm-up)`` in frames of the restarted reading for ``restart_s`` seconds
    (period 0: no restarts); the offline and the streaming VAD count them alike."""
    return (
        round(restart_s * SAMPLE_RATE / VAD_FRAME),
        round(RESTART_WARMUP_S * SAMPLE_RATE / VAD_FRAME),
    )


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
        """Speech probability of every 512-sample frame (the last one zero-padded).

        With ``restart_s`` set, each frame gets the larger of two readings: Silero's state
        carried through the whole recording, and a state started afresh every
        ``restart_s`` seconds (after ``RESTART_WARMUP_S`` of the audio before it). The
        carried state can drift on long recordings and then miss quieter speech for many
        seconds, for instance a far-field voice after a loud passage; a fresh start
        recovers it, and the carried reading keeps what a short warm-up would miss.
        """
        x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        n_frames = -(-x.size // VAD_FRAME)
        restart, warmup = restart_frames(self.settings.restart_s)
        if restart <= 0 or n_frames <= restart:
            return self._frames(x, 0, 0, n_frames)

        def fresh() -> np.ndarray:
            return np.concatenate(
                [
                    self._frames(x, max(first - warmup, 0), first, min(first + restart, n_frames))
                    for first in range(0, n_frames, restart)
                ]
            )

        if default_cpu_threads() < 2:
            return np.maximum(self._frames(x, 0, 0, n_frames), fresh())
        # the two readings are independent: with a second core, side by side
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad") as pool:
            restarted = pool.submit(fresh)
            carried = self._frames(x, 0, 0, n_frames)
            return np.maximum(carried, restarted.result())

    def _frames(self, x: np.ndarray, begin: int, first: int, end: int) -> np.ndarray:
        """Probabilities of frames ``first`` to ``end - 1``, from a zero state at ``begin``."""
        h = np.zeros((1, 1, STATE_SIZE), np.float32)
        c = np.zeros((1, 1, STATE_SIZE), np.float32)
        probs = []
        for start in range(begin, end, BLOCK_FRAMES):
            block = frame_rows(x, start, min(BLOCK_FRAMES, end - start))
            if start == begin:
                block[0, :CONTEXT] = 0.0  # a fresh state hears no context either
            p, h, c = self._session.run(
                ["speech_probs", "hn", "cn"], {"input": block, "h": h, "c": c}
            )
            probs.append(np.asarray(p, np.float32).reshape(-1))
        out = np.concatenate(probs) if probs else np.zeros(0, np.float32)
        return out[first - begin :]

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions in seconds, padded by ``speech_pad_ms`` and non-overlapping."""
        if samples.size == 0:
            return []
        return speech_spans(self.speech_probabilities(samples), samples.size, self.settings)
