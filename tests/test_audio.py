"""Decoding: formats, rates, sample types, channels, and bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from media import encode, tone

from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.errors import (
    AudioDecodeError,
    AudioTooLongError,
    EmptyAudioError,
    NoAudioStreamError,
)

CASES = [
    ("wav", "pcm_s16le", "s16", 8000, 1, False),
    ("wav", "pcm_s16le", "s16", 44100, 2, False),
    ("wav", "pcm_s24le", "s32", 48000, 2, False),
    ("wav", "pcm_f32le", "flt", 22050, 1, False),
    ("flac", "flac", "s16", 32000, 2, False),
    ("mp3", "libmp3lame", "fltp", 44100, 2, False),
    ("ogg", "libopus", "flt", 48000, 1, False),
    ("mp4", "aac", "fltp", 48000, 2, True),
    ("matroska", "aac", "fltp", 44100, 2, True),
]


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


@pytest.mark.parametrize(("container", "codec", "fmt", "rate", "channels", "video"), CASES)
def test_decodes_to_16k_mono_with_pitch_and_level_kept(
    container: str, codec: str, fmt: str, rate: int, channels: int, video: bool
) -> None:
    x = tone(1000.0, 1.5, rate, amplitude=0.5)
    data = encode(np.stack([x] * channels), rate, container, codec, fmt, with_video=video)
    audio = decode_audio(data)
    assert audio.sample_rate == SAMPLE_RATE
    assert audio.source_sample_rate == rate
    assert audio.source_channels == channels
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert abs(audio.duration_s - 1.5) < 0.1
    middle = audio.samples[4000:20000]
    assert abs(_dominant_hz(middle) - 1000.0) < 5.0
    rms = float(np.sqrt(np.mean(middle**2)))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.03


def test_resampling_is_band_limited_not_decimated() -> None:
    # 10 kHz at 48 kHz is above the 8 kHz Nyquist of the output: a real resampler
    # removes it; naive decimation would fold it back to 6 kHz at full level.
    x = tone(10_000.0, 1.0, 48_000, amplitude=0.5)
    audio = decode_audio(encode(x[None, :], 48_000, "wav", "pcm_f32le", "flt"))
    assert float(np.sqrt(np.mean(audio.samples[1000:-1000] ** 2))) < 0.01


def test_stereo_is_averaged_to_mono() -> None:
    x = tone(500.0, 1.0, 16_000, amplitude=0.4)
    opposite = np.stack([x, -x])
    audio = decode_audio(encode(opposite, 16_000, "wav", "pcm_f32le", "flt"))
    assert float(np.max(np.abs(audio.samples))) < 1e-3
    same = decode_audio(encode(np.stack([x, np.zeros_like(x)]), 16_000, "wav", "pcm_f32le", "flt"))
    assert abs(float(np.max(np.abs(same.samples))) - 0.2) < 0.01


def test_accepts_path_bytes_and_file_object(tmp_path) -> None:
    data = encode(tone(300.0, 0.5, 16_000)[None, :], 16_000, "wav", "pcm_s16le", "s16")
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    lengths = {
        len(decode_audio(path).samples),
        len(decode_audio(str(path)).samples),
        len(decode_audio(data).samples),
        len(decode_audio(io.BytesIO(data)).samples),
    }
    assert lengths == {8000}


def test_garbage_is_a_decode_error() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(AudioDecodeError, match="not a decodable"):
        decode_audio(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


def test_empty_input_is_an_empty_error(tmp_path) -> None:
    with pytest.raises(EmptyAudioError):
        decode_audio(b"")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudioError):
        decode_audio(empty)
    header_only = encode(np.zeros((1, 0), np.float32), 16_000, "wav", "pcm_s16le", "s16")
    with pytest.raises(EmptyAudioError):
        decode_audio(header_only)


def test_video_without_audio_has_no_audio_stream() -> None:
    buf = io.BytesIO()
    import av

    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(NoAudioStreamError, match="no audio stream"):
        decode_audio(buf.getvalue())


def test_too_long_is_refused_from_the_header() -> None:
    data = encode(tone(200.0, 3.0, 16_000)[None, :], 16_000, "wav", "pcm_s16le", "s16")
    with pytest.raises(AudioTooLongError, match="limit"):
        decode_audio(data, max_duration_s=2.0)
    assert decode_audio(data, max_duration_s=4.0).duration_s == pytest.approx(3.0, abs=0.01)


def test_too_long_is_refused_while_decoding_when_header_is_silent() -> None:
    # A raw ADTS AAC stream carries no duration in its header.
    data = encode(tone(200.0, 3.0, 16_000)[None, :], 16_000, "adts", "aac", "fltp")
    with pytest.raises(AudioTooLongError):
        decode_audio(data, max_duration_s=1.0)


def test_playlists_and_concat_lists_cannot_pull_in_other_files(tmp_path) -> None:
    target = tmp_path / "secret.wav"
    target.write_bytes(encode(tone(200.0, 1.0, 16_000)[None, :], 16_000, "wav", "pcm_s16le", "s16"))
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{target}\n#EXT-X-ENDLIST\n"
    concat = f"ffconcat version 1.0\nfile '{target}'\n"
    for text, name in ((hls, "list.m3u8"), (concat, "list.ffconcat")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(AudioDecodeError):
            decode_audio(path)
        with pytest.raises(AudioDecodeError):
            decode_audio(text.encode())


def test_missing_file() -> None:
    with pytest.raises(AudioDecodeError, match="no such file"):
        decode_audio("/nonexistent/audio.wav")
