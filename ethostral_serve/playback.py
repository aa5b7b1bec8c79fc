"""The audio a session keeps for playback (``store_audio``): 16 kHz mono, Ogg/Opus.

Not the upload itself (a video may be 500 MB): the decoded samples the transcript was
made from, encoded with libopus (through PyAV) at :data:`BITRATE`, so a browser's
``<audio>`` element plays it and seeks in it, and its timeline is the transcript's.
:class:`PlaybackEncoder` encodes as samples arrive (a live stream keeps kilobytes, not
its raw PCM); :func:`encode_playback` encodes a whole recording at once.
"""

from __future__ import annotations

import io
import threading
from fractions import Fraction

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE

MEDIA_TYPE = "audio/ogg"  # Ogg/Opus: RFC 7845
EXTENSION = "ogg"
BITRATE = 24_000  # bits per second: wideband speech, ~145 kB a minute measured
_FORMAT = "ogg"
_CODEC = "libopus"


class PlaybackEncoder:
    """Encodes 16 kHz mono float32 samples, pushed in pieces of any size, to Ogg/Opus.

    Thread-safe: :meth:`push` and :meth:`finish` take a lock, so a stream thread may
    still be pushing when another thread finishes the file (a stream cancelled mid-step);
    the finish waits for that push, and samples offered afterwards are dropped.
    """

    def __init__(self, bitrate: int = BITRATE) -> None:
        import av

        self._lock = threading.Lock()
        self._buffer = io.BytesIO()
        self._container = av.open(self._buffer, mode="w", format=_FORMAT)
        stream = self._container.add_stream(_CODEC, rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = bitrate
        self._stream = stream
        self._samples = 0
        self._data: bytes | None = None

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called (no more samples are taken)."""
        return self._data is not None

    @property
    def duration_s(self) -> float:
        """Seconds of audio pushed so far."""
        return self._samples / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> None:
        """Encode more samples (float32 in [-1, 1]); raises ``RuntimeError`` once finished."""
        if not self.offer(samples):
            raise RuntimeError("the playback encoder is finished")

    def offer(self, samples: np.ndarray) -> bool:
        """Encode more samples unless finished (then they are dropped); whether they were
        taken. The check and the encoding are one step: no :meth:`finish` comes between."""
        with self._lock:
            if self._data is not None:
                return False
            self._encode(samples)
            return True

    def finish(self) -> bytes:
        """Flush the encoder and close the file; the encoded bytes (the same on every
        call). Waits for a :meth:`push` under way on another thread."""
        with self._lock:
            if self._data is None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
                self._container.close()
                self._data = self._buffer.getvalue()
                self._buffer = io.BytesIO()
            return self._data

    def _encode(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        import av

        pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._samples
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self._samples += pcm.size
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def encode_playback(samples: np.ndarray, piece_s: float = 60.0) -> bytes:
    """A whole recording (16 kHz mono float32) as Ogg/Opus bytes."""
    encoder = PlaybackEncoder()
    step = int(piece_s * SAMPLE_RATE)
    for start in range(0, len(samples), step):
        encoder.push(samples[start : start + step])
    return encoder.finish()
