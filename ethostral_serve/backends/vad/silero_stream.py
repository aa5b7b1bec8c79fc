"""Silero VAD for live streams: a stateless step that takes and returns each stream's state.

The recurrent state and the 64-sample context of every stream travel with the call, so
one model (one Serve replica) scores frames of many streams together: frame ``t`` of
every stream that has one goes through the ONNX graph in a single batched run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.onnx_session import cpu_onnx_session
from ethostral_serve.backends.vad.silero import (
    CONTEXT,
    SILERO,
    STATE_SIZE,
    silero_model_path,
)
from ethostral_serve.pipeline.streaming import VAD_FRAME

STREAMING_MODEL = "silero_vad.onnx"  # one frame per call, state passed in and out


@dataclass
class VadStreamState:
    """One stream's Silero state plus the samples that do not fill a frame yet."""

    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, STATE_SIZE), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))


class SileroStreamingVad:
    """Speech probability of every 512-sample frame, for many streams at once."""

    def __init__(self) -> None:
        self._session = cpu_onnx_session(silero_model_path(STREAMING_MODEL), SILERO)
        self._lock = threading.Lock()

    def step(
        self, items: Sequence[tuple[np.ndarray, VadStreamState]]
    ) -> list[tuple[np.ndarray, VadStreamState]]:
        """For each ``(new 16 kHz samples, state)``: the new frames' probabilities and state."""
        buffers = []
        for samples, state in items:
            x = np.concatenate([state.pending, np.asarray(samples, np.float32).reshape(-1)])
            buffers.append(x)
        n_frames = [len(x) // VAD_FRAME for x in buffers]
        probs = [np.zeros(n, np.float32) for n in n_frames]
        rnn = np.stack([s.rnn for _, s in items]) if items else np.zeros((0, 2, STATE_SIZE))
        context = np.stack([s.context for _, s in items]) if items else np.zeros((0, CONTEXT))
        sr = np.array(SAMPLE_RATE, dtype=np.int64)
        for t in range(max(n_frames, default=0)):
            active = [i for i, n in enumerate(n_frames) if n > t]
            frames = np.stack([buffers[i][t * VAD_FRAME : (t + 1) * VAD_FRAME] for i in active])
            x = np.concatenate([context[active], frames], axis=1).astype(np.float32)
            state = np.ascontiguousarray(rnn[active].transpose(1, 0, 2), dtype=np.float32)
            with self._lock:
                out, new_state = self._session.run(None, {"input": x, "state": state, "sr": sr})
            speech = np.asarray(out).reshape(len(active), -1)[:, 0]
            for j, i in enumerate(active):
                probs[i][t] = float(speech[j])
                rnn[i] = new_state[:, j, :]
                context[i] = frames[j, -CONTEXT:]
        results = []
        for i, x in enumerate(buffers):
            rest = x[n_frames[i] * VAD_FRAME :].copy()
            results.append((probs[i], VadStreamState(rnn[i].copy(), context[i].copy(), rest)))
        return results
