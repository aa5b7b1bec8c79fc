"""The stateless streaming Silero step against Silero's own stateful model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_data

from ethostral_serve.audio import decode_audio

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vad():
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return SileroStreamingVad(restart_s=0)


def _reference(samples: np.ndarray) -> np.ndarray:
    """Frame probabilities from silero-vad's own stateful wrapper, frame by frame."""
    import torch
    from silero_reference import import_silero_vad

    model = import_silero_vad().load_silero_vad(onnx=True)
    n = len(samples) // 512
    return np.array(
        [float(model(torch.from_numpy(samples[i * 512 : (i + 1) * 512]), 16000)) for i in range(n)]
    )


def test_odd_sized_chunks_of_two_streams_match_the_stateful_model(vad) -> None:
    from ethostral_serve.backends.vad.silero_stream import VadStreamState

    a = decode_audio(require_data("asr", "jfk") / "jfk.flac").samples[: 16000 * 4]
    b = np.ascontiguousarray(a[::-1])  # a second, different stream
    states = [VadStreamState(), VadStreamState()]
    got: list[list[float]] = [[], []]
    rng = np.random.default_rng(0)
    pos = [0, 0]
    while pos[0] < len(a) or pos[1] < len(b):
        items = []
        for k, x in enumerate((a, b)):
            n = int(rng.integers(0, 3000))  # 0 to ~6 frames, any size
            items.append((x[pos[k] : pos[k] + n], states[k]))
            pos[k] += n
        for k, (probs, state) in enumerate(vad.step(items)):
            got[k] += list(probs)
            states[k] = state
    for k, x in enumerate((a, b)):
        want = _reference(x)
        assert len(got[k]) == len(want)
        np.testing.assert_allclose(got[k], want, atol=1e-5)
    assert max(got[0]) > 0.9 and min(got[0]) < 0.2  # speech and pauses are told apart


def _stream(vad, recordings: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Each recording sent as its own stream, in odd-sized chunks, the streams together."""
    from ethostral_serve.backends.vad.silero_stream import VadStreamState

    states = [VadStreamState() for _ in recordings]
    got: list[list[float]] = [[] for _ in recordings]
    pos = [0] * len(recordings)
    rng = np.random.default_rng(seed)
    while any(p < len(x) for p, x in zip(pos, recordings, strict=True)):
        items = []
        for k, x in enumerate(recordings):
            n = int(rng.integers(0, 40_000))  # 0 to ~2.5 s, any size
            items.append((x[pos[k] : pos[k] + n], states[k]))
            pos[k] += n
        before = [s.frames for s in states]
        for k, (probs, state) in enumerate(vad.step(items)):
            got[k] += list(probs)
            assert state.frames == before[k] + len(probs)
            assert states[k].frames == before[k]  # the state passed in is left as it was
            states[k] = state
    return [np.array(g, np.float32) for g in got]


def test_streams_get_the_offline_vads_restarted_readings() -> None:
    """With ``restart_s``, a stream's frames get the same probabilities as the offline
    VAD gives the whole recording: the larger of the carried and the restarted state."""
    from speech import meeting_minute

    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad
    from ethostral_serve.settings import VadSettings

    folder = require_data("diarization", "pyannote-debug")
    meeting = meeting_minute()[0]
    joined = np.concatenate([decode_audio(folder / f"{n}.wav").samples for n in ("trn07", "trn08")])
    streamed = _stream(SileroStreamingVad(restart_s=8.0), [meeting, joined], seed=1)
    offline, carried = SileroVad(VadSettings(restart_s=8.0)), SileroVad(VadSettings(restart_s=0))
    for x, got in zip((meeting, joined), streamed, strict=True):
        assert got.size == x.size // 512
        np.testing.assert_allclose(got, offline.speech_probabilities(x)[: got.size], atol=1e-5)
        assert (got > carried.speech_probabilities(x)[: got.size] + 0.1).any()
