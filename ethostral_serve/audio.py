"""Decode any audio or video container into 16 kHz mono float32 samples.

PyAV (FFmpeg's libraries) demuxes and decodes; channels are averaged to mono and
soxr resamples to 16 kHz. The demuxer reads only the bytes it is given: FFmpeg may not
open further URLs or files named inside a container (HLS playlists, concat lists, ...).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ethostral_serve.errors import (
    AudioDecodeError,
    AudioTooLongError,
    EmptyAudioError,
    EthostralError,
    NoAudioStreamError,
)

SAMPLE_RATE = 16_000

# Demuxers that exist to pull in other resources; never allowed on user input.
_REFERENCING_FORMATS = frozenset(
    {
        "hls",
        "applehttp",
        "concat",
        "ffconcat",
        "dash",
        "sdp",
        "rtsp",
        "rtp",
        "tee",
        "image2",
        "mpl2",
        "lrc",
        "smil",
        "ffmetadata",
        "data",
        "subviewer",
        "imf",
    }
)

AudioSource = str | os.PathLike[str] | bytes | BinaryIO


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono float32 samples in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE
    source_sample_rate: int = SAMPLE_RATE
    source_channels: int = 1

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    @property
    def duration_ms(self) -> int:
        """Length in whole milliseconds."""
        return round(1000 * len(self.samples) / self.sample_rate)


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> BinaryIO:
    raise AudioDecodeError(f"the container refers to another resource ({url!r}); refused")


def _open_binary(source: AudioSource) -> BinaryIO:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise EmptyAudioError("the file is empty")
        return io.BytesIO(bytes(source))
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise AudioDecodeError(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise EmptyAudioError("the file is empty")
        return path.open("rb")
    position = source.tell() if source.seekable() else None
    if position is not None:
        if not source.read(1):
            raise EmptyAudioError("the file is empty")
        source.seek(position)
    return source


def _container_duration_s(container: object, stream: object) -> float | None:
    duration = getattr(container, "duration", None)
    if duration:  # microseconds (AV_TIME_BASE)
        return float(duration) / 1_000_000
    sd, tb = getattr(stream, "duration", None), getattr(stream, "time_base", None)
    if sd and tb:
        return float(sd * tb)
    return None


def header_duration_s(path: str | os.PathLike[str]) -> float | None:
    """The audio's length in seconds as the file's container header gives it, without
    decoding; None when the header does not say, or the file is not media with audio
    (decoding it says what is wrong)."""
    import av

    try:
        with (
            _open_binary(path) as fileobj,
            av.open(
                fileobj,
                mode="r",
                io_open=_refuse_nested_open,
                options={"protocol_whitelist": "none"},
            ) as container,
        ):
            if not container.streams.audio:
                return None
            return _container_duration_s(container, container.streams.audio[0])
    except (EthostralError, av.FFmpegError, ValueError, OSError, UnicodeDecodeError):
        return None


def decode_audio(source: AudioSource, max_duration_s: float | None = None) -> Audio:
    """Decode ``source`` (a path, bytes or a binary file object) to 16 kHz mono float32.

    Raises ``AudioDecodeError`` (not decodable), ``NoAudioStreamError``,
    ``EmptyAudioError`` or ``AudioTooLongError`` (checked from the container header
    before decoding, and again while decoding when the header does not say).
    """
    import av
    import soxr

    fileobj = _open_binary(source)
    owns = fileobj is not source
    try:
        try:
            container = av.open(
                fileobj,
                mode="r",
                io_open=_refuse_nested_open,
                options={"protocol_whitelist": "none"},
            )
        except AudioDecodeError:
            raise
        except (av.FFmpegError, ValueError, OSError, UnicodeDecodeError) as exc:
            raise AudioDecodeError(f"not a decodable audio or video file: {_reason(exc)}") from exc
        with container:
            if container.format.name in _REFERENCING_FORMATS or any(
                n in _REFERENCING_FORMATS for n in container.format.name.split(",")
            ):
                raise AudioDecodeError(
                    f"container format {container.format.name!r} is not accepted"
                )
            if not container.streams.audio:
                raise NoAudioStreamError("the file has no audio stream")
            stream = container.streams.audio[0]
            header_s = _container_duration_s(container, stream)
            if max_duration_s is not None and header_s is not None and header_s > max_duration_s:
                raise AudioTooLongError(
                    f"audio is {header_s:.1f} s long; the limit is {max_duration_s:.0f} s"
                )
            in_rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            channels = int(stream.codec_context.channels or 1)
            if in_rate <= 0:
                raise AudioDecodeError("the audio stream has no sample rate")
            resampler = soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            limit = None if max_duration_s is None else int(max_duration_s * in_rate)
            pieces: list[np.ndarray] = []
            seen = 0
            try:
                for mono in _mono_frames(container, stream, in_rate):
                    seen += len(mono)
                    if limit is not None and seen > limit:
                        raise AudioTooLongError(
                            f"audio is longer than the limit of {max_duration_s:.0f} s"
                        )
                    pieces.append(resampler.resample_chunk(mono))
            except (av.FFmpegError, ValueError) as exc:
                if not pieces:
                    raise AudioDecodeError(f"audio could not be decoded: {_reason(exc)}") from exc
                # A truncated tail: keep what decoded cleanly.
            pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    finally:
        if owns:
            fileobj.close()
    if seen == 0:
        raise EmptyAudioError("the file contains no audio samples")
    samples = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32, copy=False)
    if samples.size == 0:
        raise EmptyAudioError("the file contains no audio samples")
    return Audio(samples, SAMPLE_RATE, in_rate, channels)


def _mono_frames(container: object, stream: object, rate: int) -> Iterator[np.ndarray]:
    """Yield each decoded frame as float32 mono at ``rate``, channels averaged."""
    import av

    to_float = av.AudioResampler(format="fltp", rate=rate)
    for frame in container.decode(stream):  # type: ignore[attr-defined]
        for converted in to_float.resample(frame):
            planes = converted.to_ndarray()
            yield planes.mean(axis=0, dtype=np.float32) if planes.ndim == 2 else planes
    for converted in to_float.resample(None):
        planes = converted.to_ndarray()
        yield planes.mean(axis=0, dtype=np.float32) if planes.ndim == 2 else planes


def _reason(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) or str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
