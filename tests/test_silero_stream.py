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

    return SileroStreamingVad()


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
