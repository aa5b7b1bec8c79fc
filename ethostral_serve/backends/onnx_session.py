"""CPU onnxruntime sessions for the bundled ONNX models (VAD, segmentation, speaker encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ethostral_serve.errors import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime


def cpu_onnx_session(path: Path, name: str, threads: int = 1) -> onnxruntime.InferenceSession:
    """An onnxruntime session for the model at ``path`` on CPU, with ``threads`` threads
    inside each operator (0: onnxruntime's default) and one across them.

    Any failure is a :class:`ModelLoadError` naming the model (``name``) and the file.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a hard dependency
        raise ModelLoadError(f"{name} needs onnxruntime: pip install onnxruntime") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types too
        raise ModelLoadError(f"could not load {name} from {path}: {exc}") from exc
