"""Build small media files in memory with PyAV, for decoder tests."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    """A sine wave as float32."""
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(
    channels: np.ndarray,
    rate: int,
    container: str,
    codec: str,
    sample_format: str,
    with_video: bool = False,
) -> bytes:
    """Encode float32 ``channels`` (ch, n) into a container; returns its bytes."""
    buf = io.BytesIO()
    layout = "mono" if channels.shape[0] == 1 else "stereo"
    with av.open(buf, mode="w", format=container) as out:
        vstream = None
        if with_video:
            vstream = out.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = out.add_stream(codec, rate=rate, layout=layout)
        astream.format = sample_format
        frame_size = astream.codec_context.frame_size or 1024
        data = channels
        if sample_format.startswith("s16"):
            data = np.clip(channels * 32767, -32768, 32767).astype(np.int16)
        elif sample_format.startswith("s32"):
            data = np.clip(channels * 2147483647, -2147483648, 2147483647).astype(np.int32)
        planar = sample_format.endswith("p")
        pts = 0
        for start in range(0, data.shape[1], frame_size):
            block = data[:, start : start + frame_size]
            arr = block if planar else block.T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(arr), format=sample_format, layout=layout
            )
            frame.sample_rate = rate
            frame.pts = pts
            frame.time_base = Fraction(1, rate)
            pts += block.shape[1]
            for packet in astream.encode(frame):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
        if vstream is not None:
            for i in range(int(10 * data.shape[1] / rate)):
                image = np.full((48, 64, 3), i % 255, dtype=np.uint8)
                vf = av.VideoFrame.from_ndarray(image, format="rgb24")
                for packet in vstream.encode(vf):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
    return buf.getvalue()
