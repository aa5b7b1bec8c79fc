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
    restart_frames,
    silero_model_path,
)
from ethostral_serve.pipeline.streaming import VAD_FRAME
from ethostral_serve.settings import VadSettings

STREAMING_MODEL = "silero_vad.onnx"  # one frame per call, state passed in and out
_SAMPLE_RATE_INPUT = np.array(SAMPLE_RATE, dtype=np.int64)  # the graph's "sr" input


@dataclass
class RestartedState:
    """A Silero state started afresh in a stream; its readings count from frame
    ``counts_from`` on (``RESTART_WARMUP_S`` after it started)."""

    counts_from: int
    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, STATE_SIZE), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))


@dataclass
class VadStreamState:
    """One stream's Silero state plus the samples that do not fill a frame yet: the state
    carried since the stream began, the restarted ones, and how many frames were scored."""

    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, STATE_SIZE), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    frames: int = 0
    restarts: list[RestartedState] = field(default_factory=list)


class SileroStreamingVad:
    """Speech probability of every 512-sample frame, for many streams at once.

    Like the offline VAD (``SileroVad``), each frame gets the larger of the reading of the
    state carried since the stream began and that of a state started afresh every
    ``restart_s`` seconds (0: the carried state only): the same probabilities as the
    offline VAD gives the whole recording.
    """

    def __init__(self, restart_s: float | None = None) -> None:
        self._session = cpu_onnx_session(silero_model_path(STREAMING_MODEL), SILERO)
        self._lock = threading.Lock()
        seconds = VadSettings().restart_s if restart_s is None else restart_s
        self._restart, self._warmup = restart_frames(seconds)

    def step(
        self, items: Sequence[tuple[np.ndarray, VadStreamState]]
    ) -> list[tuple[np.ndarray, VadStreamState]]:
        """For each ``(new 16 kHz samples, state)``: the new frames' probabilities and state.

        The states passed in are left as they are; each result holds a new one.
        """
        buffers = [
            np.concatenate([state.pending, np.asarray(samples, np.float32).reshape(-1)])
            for samples, state in items
        ]
        states = [_copy(state) for _, state in items]
        n_frames = [len(x) // VAD_FRAME for x in buffers]
        probs = [np.zeros(n, np.float32) for n in n_frames]
        for t in range(max(n_frames, default=0)):
            active = [i for i, n in enumerate(n_frames) if n > t]
            lanes: list[tuple[int, VadStreamState | RestartedState]] = []
            for i in active:
                state = states[i]
                self._maybe_restart(state, state.frames + t)
                lanes += [(i, state), *((i, r) for r in state.restarts)]
            frames = {i: buffers[i][t * VAD_FRAME : (t + 1) * VAD_FRAME] for i in active}
            speech = self._run(lanes, frames)
            reading = {id(lane): p for (_, lane), p in zip(lanes, speech, strict=True)}
            for i in active:
                newest = _counting(states[i], states[i].frames + t)
                restarted = 0.0 if newest is None else reading[id(newest)]
                probs[i][t] = max(reading[id(states[i])], restarted)
        results = []
        for i, x in enumerate(buffers):
            state = states[i]
            state.pending = x[n_frames[i] * VAD_FRAME :].copy()
            state.frames += n_frames[i]
            results.append((probs[i], state))
        return results

    def _maybe_restart(self, state: VadStreamState, frame: int) -> None:
        """Start a fresh state at ``frame`` if one must count from ``frame + warm-up``."""
        due = frame + self._warmup
        if self._restart > 0 and due >= self._restart and due % self._restart == 0:
            state.restarts.append(RestartedState(counts_from=due))

    def _run(
        self,
        lanes: Sequence[tuple[int, VadStreamState | RestartedState]],
        frames: dict[int, np.ndarray],
    ) -> list[float]:
        """One frame through every lane in a single batched run; the lanes move on."""
        x = np.stack([np.concatenate([lane.context, frames[i]]) for i, lane in lanes])
        state = np.ascontiguousarray(
            np.stack([lane.rnn for _, lane in lanes]).transpose(1, 0, 2), dtype=np.float32
        )
        with self._lock:
            out, new_state = self._session.run(
                None, {"input": x.astype(np.float32), "state": state, "sr": _SAMPLE_RATE_INPUT}
            )
        for j, (i, lane) in enumerate(lanes):
            lane.rnn = np.array(new_state[:, j, :], np.float32)
            lane.context = frames[i][-CONTEXT:].copy()
        return [float(p) for p in np.asarray(out).reshape(len(lanes), -1)[:, 0]]


def _counting(state: VadStreamState, frame: int) -> RestartedState | None:
    """The newest restarted state whose readings count at ``frame`` (None if none does
    yet); the older ones are dropped."""
    counting = [r for r in state.restarts if r.counts_from <= frame]
    if not counting:
        return None
    newest = counting[-1]
    state.restarts = [r for r in state.restarts if r.counts_from >= newest.counts_from]
    return newest


def _copy(state: VadStreamState) -> VadStreamState:
    return VadStreamState(
        state.rnn.copy(),
        state.context.copy(),
        state.pending,
        state.frames,
        [RestartedState(r.counts_from, r.rnn.copy(), r.context.copy()) for r in state.restarts],
    )
