"""pyannote's ``segmentation`` model (PyanNet), fetched from the WhisperX wheel and run
with onnxruntime.

The checkpoint (MIT licence; 5 s windows, up to 3 local speakers, multi-label so
overlapped speech shows as two active speakers) ships inside ``whisperx==3.8.6`` on
PyPI as ``whisperx/assets/pytorch_model.bin``. WhisperX itself is never installed (it
pins another torch): :func:`ensure_segmentation_model` downloads the wheel alone into a
temporary folder, takes that one file out, checks its pinned sha256, exports it once to
ONNX with pyannote.audio and torch, checks the export against the torch model, and keeps
both in the model cache. Afterwards only onnxruntime is needed (importing
pyannote.audio costs seconds; the ONNX model loads in milliseconds).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.cores import map_in_parts
from ethostral_serve.backends.onnx_session import cpu_onnx_session
from ethostral_serve.backends.wheel_files import fetch_wheel_member
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.overlap_diarization import FrameGrid
from ethostral_serve.pipeline.types import Span

log = logging.getLogger("ethostral_serve.diarization")

WHEEL = "whisperx==3.8.6"
WHEEL_MEMBER = "whisperx/assets/pytorch_model.bin"
CHECKPOINT_SHA256 = "0b5b3216d60a2d32fc086b47ea8c67589aaeb26b7e07fcbe620d6d0b83e209ea"
CHECKPOINT_SIZE = 17_719_103
EXPORT_FORMAT = 1  # bump when the exported file or its spec.json change
_BATCH = 16


def model_dir(cache_dir: Path) -> Path:
    """Where the checkpoint and its ONNX export are kept."""
    return cache_dir / f"segmentation-{CHECKPOINT_SHA256[:12]}"


def fetch_checkpoint(cache_dir: Path) -> Path:
    """The verified checkpoint, downloaded from the WhisperX wheel when not cached."""
    return fetch_wheel_member(
        WHEEL,
        WHEEL_MEMBER,
        CHECKPOINT_SHA256,
        CHECKPOINT_SIZE,
        model_dir(cache_dir) / "pytorch_model.bin",
        "pyannote segmentation model",
    )


def export_onnx(checkpoint: Path, target: Path) -> dict[str, Any]:
    """Export the checkpoint to ONNX at ``target``; return its frame specification.

    Needs pyannote.audio (and omegaconf, which the checkpoint's pickled
    hyper-parameters need) and the ``onnx`` package. The export is checked against the
    torch model on random audio before it is kept.
    """
    os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
    import warnings

    try:
        import torch
        from pyannote.audio import Model
    except ImportError as exc:  # pragma: no cover - dependencies of the package
        raise ModelLoadError(
            f"exporting the segmentation model needs pyannote.audio: {exc}"
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Model.from_pretrained(str(checkpoint))
        if model is None:
            raise ModelLoadError(f"pyannote could not load {checkpoint}")
        model = model.eval()
        spec = model.specifications
        window = round(float(spec.duration) * SAMPLE_RATE)
        example = torch.randn(2, 1, window, generator=torch.Generator().manual_seed(0)) * 0.1
        with torch.inference_mode():
            expected = model(example).numpy()
        rf = model.receptive_field
        info = {
            "format": EXPORT_FORMAT,
            "checkpoint_sha256": CHECKPOINT_SHA256,
            "window_s": float(spec.duration),
            "frames": int(expected.shape[1]),
            "speakers": int(expected.shape[2]),
            "frame_step_s": float(rf.step),
            "frame_duration_s": float(rf.duration),
            "classes": list(spec.classes),
        }
        staging = target.with_name(f".{os.getpid()}-{target.name}")  # one per process
        torch.onnx.export(
            model,
            (example,),
            str(staging),
            input_names=["waveform"],
            output_names=["scores"],
            dynamic_axes={"waveform": {0: "batch"}, "scores": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    import onnxruntime as ort

    session = ort.InferenceSession(str(staging), providers=["CPUExecutionProvider"])
    got = session.run(None, {"waveform": example.numpy()})[0]
    error = float(np.abs(got - expected).max())
    if error > 1e-3:
        staging.unlink(missing_ok=True)
        raise ModelLoadError(f"the ONNX export differs from the torch model by {error}")
    os.replace(staging, target)
    return info


def ensure_segmentation_model(cache_dir: Path) -> Path:
    """The folder holding ``segmentation.onnx`` and ``spec.json``, made when missing."""
    folder = model_dir(cache_dir)
    spec_path = folder / "spec.json"
    onnx_path = folder / "segmentation.onnx"
    if spec_path.is_file() and onnx_path.is_file():
        try:
            if json.loads(spec_path.read_text()).get("format") == EXPORT_FORMAT:
                return folder
        except (OSError, ValueError):
            pass
    log.info("preparing the bundled segmentation model in %s (once)", folder)
    checkpoint = fetch_checkpoint(cache_dir)
    info = export_onnx(checkpoint, onnx_path)
    tmp = spec_path.with_name(f".{os.getpid()}-{spec_path.name}")  # one per process
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, spec_path)
    return folder


class SegmentationModel:
    """Local speaker activity of sliding windows, from the ONNX export."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        try:
            info = json.loads((folder / "spec.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load the segmentation model in {folder}: {exc}"
            ) from exc
        self._session = cpu_onnx_session(
            folder / "segmentation.onnx", "the segmentation model", threads
        )
        self.grid = FrameGrid(
            step_s=float(info["frame_step_s"]),
            duration_s=float(info["frame_duration_s"]),
            frames=int(info["frames"]),
            window_s=float(info["window_s"]),
        )
        self.speakers = int(info["speakers"])
        self._window = round(self.grid.window_s * SAMPLE_RATE)

    def window_starts(self, n_samples: int, step_s: float, regions: Sequence[Span]) -> np.ndarray:
        """Start times (s) of the windows that cover speech: every ``step_s``, the last
        flush with the end, skipping windows that touch no speech region."""
        duration = n_samples / SAMPLE_RATE
        last = max(0.0, duration - self.grid.window_s)
        starts = np.arange(0.0, last + 1e-9, step_s)
        if len(starts) == 0:
            starts = np.array([last])
        elif starts[-1] < last - step_s / 10:
            starts = np.append(starts, last)
        elif starts[-1] < last - 1e-6:
            starts[-1] = last  # a window a hair before the end: moved flush with it
        if not regions:
            return starts[:0]
        r = np.array([[s.start, s.end] for s in regions])
        touches = (r[None, :, 0] < starts[:, None] + self.grid.window_s) & (
            r[None, :, 1] > starts[:, None]
        )
        return starts[touches.any(axis=1)]

    def scores(self, samples: np.ndarray, starts: np.ndarray, workers: int = 1) -> np.ndarray:
        """Scores ``(windows, frames, speakers)`` of the windows at ``starts`` seconds
        (audio past the end is zeros), the windows split among ``workers`` threads."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(starts) == 0:
            return np.zeros((0, self.grid.frames, self.speakers), dtype=np.float32)
        parts = map_in_parts(lambda part: self._scores(x, np.asarray(part)), starts, workers)
        return np.concatenate(parts)

    def _scores(self, x: np.ndarray, starts: np.ndarray) -> np.ndarray:
        out = np.zeros((len(starts), self.grid.frames, self.speakers), dtype=np.float32)
        for b in range(0, len(starts), _BATCH):
            batch = np.zeros((min(_BATCH, len(starts) - b), 1, self._window), dtype=np.float32)
            for i, t0 in enumerate(starts[b : b + _BATCH]):
                a = round(float(t0) * SAMPLE_RATE)
                piece = x[a : a + self._window]
                batch[i, 0, : len(piece)] = piece
            out[b : b + len(batch)] = self._session.run(None, {"waveform": batch})[0]
        return out
