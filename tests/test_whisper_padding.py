"""Short windows are encoded padded to ``asr.window_pad_s`` instead of Whisper's 30 s."""

from __future__ import annotations

import numpy as np
import pytest
from speech import two_speaker_conversation

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.whisper import (
    MAX_NEW_TOKENS,
    WhisperAsr,
    encoder_input,
    host_array,
    pad_frames,
    resumed_input,
)
from ethostral_serve.settings import AsrSettings

# ---------------------------------------------------------------- the padding rule


@pytest.mark.parametrize(
    ("frames", "expected"),
    [(1, 2000), (400, 2000), (2000, 2000), (2001, 3000), (2999, 3000), (3000, 3000), (4500, 3000)],
)
def test_short_features_pad_to_the_window_pad_longer_ones_to_30_s(
    frames: int, expected: int
) -> None:
    features = np.random.default_rng(frames).normal(size=(80, frames)).astype(np.float32)
    x = encoder_input(features, 3000, 2000)
    assert x.shape == (80, expected)
    kept = min(frames, 3000)
    np.testing.assert_array_equal(x[:, :kept], features[:, :kept])
    np.testing.assert_array_equal(x[:, kept:], features[:, :kept].max() - 2.0)


def test_padding_is_the_log_mel_of_silence(settings) -> None:
    """Padded features equal the features of the audio padded with digital silence."""
    from faster_whisper.feature_extractor import FeatureExtractor

    fe = FeatureExtractor()
    rng = np.random.default_rng(3)
    tone = np.sin(2 * np.pi * 440 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE)
    audio = (0.3 * tone + 0.01 * rng.normal(size=tone.size)).astype(np.float32)
    padded_audio = np.pad(audio, (0, 20 * SAMPLE_RATE - audio.size))
    ours = encoder_input(fe(audio), 3000, 2000)
    theirs = fe(padded_audio)[:, :2000]
    # frames well inside the padding hold exactly the floor
    np.testing.assert_allclose(ours[:, 400:], theirs[:, 400:], atol=1e-6)


@pytest.mark.parametrize(("frames", "expected"), [(160, 2000), (2000, 2000), (2400, 3000)])
def test_the_rest_of_a_resumed_window_is_padded_with_silence_not_zeros(
    frames: int, expected: int
) -> None:
    """faster-whisper pads the rest of a window it resumes inside with zeros to 30 s;
    the encoder reads it padded as a window is."""
    rest = np.random.default_rng(frames).normal(size=(80, frames)).astype(np.float32)
    theirs = np.pad(rest, ((0, 0), (0, 3000 - frames)))  # faster-whisper's pad_or_trim
    x = resumed_input(theirs, 3000, 2000)
    np.testing.assert_array_equal(x, encoder_input(rest, 3000, 2000))
    assert x.shape == (80, expected)
    assert not (x == 0).all(axis=0).any()


def test_inputs_not_padded_with_zeros_go_to_the_encoder_unchanged() -> None:
    rng = np.random.default_rng(0)
    ours = encoder_input(rng.normal(size=(80, 300)).astype(np.float32), 3000, 2000)
    assert resumed_input(ours, 3000, 2000) is ours  # padded here already: silence
    full = rng.normal(size=(80, 3000)).astype(np.float32)
    assert resumed_input(full, 3000, 2000) is full
    batch = np.pad(full[None, :, :100], ((0, 0), (0, 0), (0, 2900)))
    assert resumed_input(batch, 3000, 2000) is batch  # a batch: ours, never zero-padded
    nothing = np.zeros((80, 3000), np.float32)
    assert resumed_input(nothing, 3000, 2000) is nothing
    mid = full.copy()
    mid[:, 1000:1200] = 0.0  # zeros inside, not at the end: unchanged
    assert resumed_input(mid, 3000, 2000) is mid


@pytest.mark.parametrize(
    ("seconds", "frames"), [(20.0, 2000), (7.0, 700), (15.01, 1502), (1.0, 100), (30.0, 3000)]
)
def test_pad_length_is_whole_pairs_of_frames(seconds: float, frames: int) -> None:
    assert pad_frames(seconds, 0.01, 3000) == frames


def test_window_pad_is_bounded_by_whispers_window() -> None:
    assert AsrSettings().window_pad_s == 20.0
    for bad in (0.5, 31.0):
        with pytest.raises(ValueError, match="window_pad_s"):
            AsrSettings(window_pad_s=bad)


# ---------------------------------------------------------------- real Whisper base


@pytest.fixture(scope="module")
def asr(settings) -> WhisperAsr:
    return WhisperAsr(settings.asr, settings.cache_dir)


@pytest.fixture(scope="module")
def whisper30(settings) -> WhisperAsr:
    return WhisperAsr(settings.asr.model_copy(update={"window_pad_s": 30.0}), settings.cache_dir)


@pytest.fixture(scope="module")
def utterances() -> tuple[np.ndarray, np.ndarray]:
    """A ~5 s and a ~25 s window of real speech."""
    conversation = two_speaker_conversation(turns_each=3)
    x = conversation.samples
    start, end, _ = conversation.truth[0]
    short = x[int(start * SAMPLE_RATE) : int(min(end, start + 5.0) * SAMPLE_RATE)]
    long = x[int(start * SAMPLE_RATE) : int((start + 25.0) * SAMPLE_RATE)]
    return short, long


def test_encoder_reads_a_short_window_padded_to_20_s(asr: WhisperAsr, utterances) -> None:
    short, long = utterances
    assert asr.pad_frames == 2000
    assert asr.encoder_input(short).shape[1] == 2000
    assert asr.encoder_input(long).shape[1] == 3000


def test_the_model_encodes_a_resumed_rest_as_a_padded_window(asr: WhisperAsr, utterances) -> None:
    """What faster-whisper hands the encoder when decoding resumes inside a window (the
    rest, zero-padded to 30 s) is read as 20 s padded with silence: the encoder's output
    covers 20 s, and equals that of the rest padded here."""
    from faster_whisper.audio import pad_or_trim

    short, _ = utterances
    rest = asr.model.feature_extractor(short[: 2 * SAMPLE_RATE])[:, :-1]
    out = host_array(asr.model.encode(pad_or_trim(rest)))
    assert out.shape[1] == 1000  # 2000 frames in, halved by the encoder
    own = host_array(asr.model.encode(encoder_input(rest, 3000, 2000)))
    np.testing.assert_allclose(out, own, atol=1e-5)


def test_short_window_words_match_the_30_s_padding(
    asr: WhisperAsr, whisper30: WhisperAsr, utterances
) -> None:
    """The same words as Whisper's own 30 s padding on a clean short window, timed
    inside the window, and one frame kept per 20 ms of audio either way."""
    short, _ = utterances
    (ours,) = asr.transcribe_windows([short], ["en"])
    (theirs,) = whisper30.transcribe_windows([short], ["en"])

    def words(result) -> list[str]:
        return [w.text.strip(" .,?!").lower() for w in result.words]

    assert len(ours.words) >= 5
    assert words(ours) == words(theirs)
    duration = len(short) / SAMPLE_RATE
    assert all(0.0 <= w.start <= w.end <= duration for w in ours.words)
    assert ours.frames.shape == theirs.frames.shape
    # states of a 20 s input differ from those of a 30 s one: the classifier is trained
    # on the 20 s ones (scripts/train_emotion.py encodes as served)
    assert not np.array_equal(ours.frames, theirs.frames)


def test_windows_of_both_paddings_in_one_call_equal_each_alone(asr: WhisperAsr, utterances) -> None:
    short, long = utterances
    together = asr.transcribe_windows([short, long, short[: SAMPLE_RATE // 20]], ["en"] * 3)
    alone = [asr.transcribe_windows([w], ["en"])[0] for w in (short, long)]
    for a, b in zip(together[:2], alone, strict=True):
        assert [w.text for w in a.words] == [w.text for w in b.words]
        np.testing.assert_array_equal(a.frames, b.frames)
    assert together[2].words == []  # under 0.1 s: not read


def test_training_encodes_windows_as_served(asr: WhisperAsr, utterances) -> None:
    """The classifier's training features (batched by padded length) are the served
    frames bit for bit, for windows on both sides of the padding boundary."""
    from scripts.train_emotion import encode_windows

    short, long = utterances
    windows = [short, long, short[: 3 * SAMPLE_RATE]]
    served = [asr.transcribe_windows([w], ["en"])[0].frames for w in windows]
    for a, b in zip(encode_windows(asr, windows), served, strict=True):
        np.testing.assert_array_equal(a, b)


def test_encode_clip_pads_like_a_window(asr: WhisperAsr, utterances) -> None:
    short, _ = utterances
    (served,) = asr.transcribe_windows([short], ["en"])
    np.testing.assert_array_equal(asr.encode_clip(short).astype(np.float16), served.frames)


def test_decoding_cap_leaves_room_for_the_longest_prompt(asr: WhisperAsr) -> None:
    """A pass writes at most ``MAX_NEW_TOKENS`` (bounding what a looping pass costs),
    and faster-whisper refuses a pass whose prompt and cap pass Whisper's text context:
    the longest prompt it builds (the previous-text marker, up to half the context of
    previous tokens, then the start, language and task tokens) must still fit."""
    options = asr._options()
    assert options.max_new_tokens == MAX_NEW_TOKENS
    context = asr.model.max_length
    longest_prompt = 1 + (context // 2 - 1) + 4
    assert longest_prompt + MAX_NEW_TOKENS <= context
