"""resemblyzer's GE2E speaker encoder, exported once to ONNX and run with onnxruntime.

The encoder (a 3-layer LSTM over 40 mel channels, a linear layer, ReLU and L2
normalisation of the last layer's final hidden state) ships inside the ``resemblyzer``
wheel as ``pretrained.pt``. :func:`ensure_speaker_encoder` exports it once (at set-up or
first use) with torch, checks the export and the mel filterbank against resemblyzer
itself, and keeps both in the model cache. Afterwards :class:`SpeakerEncoder` needs only
numpy and onnxruntime: importing torch, resemblyzer and librosa costs seconds of CPU.
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
from ethostral_serve.backends.onnx_session import cpu_onnx_session
from ethostral_serve.backends.whisper_models import sha256_file
from ethostral_serve.errors import ModelLoadError

log = logging.getLogger("ethostral_serve.diarization")

WEIGHTS_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
EXPORT_FORMAT = 1  # bump when the exported files or spec.json change
N_FFT = 400  # resemblyzer's hparams: 25 ms windows,
HOP = 160  # a 10 ms hop,
N_MELS = 40  # 40 mel channels, at 16 kHz
EMBEDDING_SIZE = 256
MAX_EMBEDDING_ERROR = 1e-4  # largest difference from torch an export may show
MAX_MEL_ERROR = 1e-5  # largest relative difference of our mel frames from resemblyzer's
_BATCH = 256
_MEL_BLOCK_FRAMES = 4096  # mel frames computed at a time, to bound memory
_CHECK_SHAPES = ((3, 100, N_MELS), (2, 57, N_MELS))  # (batch, frames): not the example's
_ONNX = "speaker_encoder.onnx"
_MEL = "mel.npz"
_SPEC = "spec.json"


def model_dir(cache_dir: Path) -> Path:
    """Where the ONNX export of resemblyzer's encoder and its filterbank are kept."""
    return cache_dir / f"speaker-encoder-{WEIGHTS_SHA256[:12]}"


def _staging(path: Path) -> Path:
    return path.with_name(f".{os.getpid()}-{path.name}")  # one per process


def _mel_error(window: np.ndarray, filters: np.ndarray, wav_to_mel: Any) -> float:
    """Largest relative difference between our mel frames and resemblyzer's."""
    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (SAMPLE_RATE + 37, 1000, 7):
        wav = rng.normal(0, 0.1, n).astype(np.float32)
        want = wav_to_mel(wav)
        got = mel_spectrogram(wav, window, filters)
        if got.shape != want.shape:
            return float("inf")
        scale = float(np.abs(want).max()) or 1.0
        worst = max(worst, float(np.abs(got - want).max()) / scale)
    return worst


def export_onnx(folder: Path) -> dict[str, Any]:
    """Export resemblyzer's encoder to ``folder`` (ONNX, filterbank); return its spec.

    Needs torch, resemblyzer (hence librosa) and the ``onnx`` package. The export and
    the filterbank are checked against resemblyzer before they are kept.
    """
    import warnings

    try:
        import librosa
        import resemblyzer
        import torch
        from resemblyzer import VoiceEncoder, audio
    except ImportError as exc:  # pragma: no cover - dependencies of the package
        raise ModelLoadError(
            f"exporting the speaker encoder needs resemblyzer and torch ({exc}): "
            "pip install resemblyzer 'setuptools<81'"
        ) from exc
    weights = Path(resemblyzer.__file__).parent / "pretrained.pt"
    digest = sha256_file(weights)
    if digest != WEIGHTS_SHA256:
        raise ModelLoadError(f"{weights} has sha256 {digest}, expected {WEIGHTS_SHA256}")

    class Normalised(torch.nn.Module):
        """VoiceEncoder.forward, with the norm clamped so a zero vector gives zeros."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, mels: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.encoder.lstm(mels)
            raw = self.encoder.relu(self.encoder.linear(hidden[-1]))
            return raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-12)

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, mel_path = folder / _ONNX, folder / _MEL
    onnx_staging, mel_staging = _staging(onnx_path), _staging(mel_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's export notes, librosa's on short input
            encoder = VoiceEncoder(device="cpu", verbose=False).eval()
            generator = torch.Generator().manual_seed(0)
            example = torch.rand(2, 160, N_MELS, generator=generator)
            torch.onnx.export(
                Normalised(encoder),
                (example,),
                str(onnx_staging),
                input_names=["mels"],
                output_names=["embeddings"],
                dynamic_axes={"mels": {0: "batch", 1: "frames"}, "embeddings": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
            checks = [torch.rand(*shape, generator=generator) * 5.0 for shape in _CHECK_SHAPES]
            with torch.inference_mode():
                expected = [encoder(mels).numpy() for mels in checks]
            error = _export_error(onnx_staging, [m.numpy() for m in checks], expected)
            if not error <= MAX_EMBEDDING_ERROR:
                raise ModelLoadError(f"the ONNX speaker encoder differs from torch by {error}")
            filters = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)
            window = hann_window(N_FFT)
            mel_error = _mel_error(window, filters, audio.wav_to_mel_spectrogram)
            if not mel_error <= MAX_MEL_ERROR:
                raise ModelLoadError(f"our mel frames differ from resemblyzer's by {mel_error}")
        with mel_staging.open("wb") as fh:
            np.savez(fh, filters=filters.astype(np.float32), window=window)
        os.replace(onnx_staging, onnx_path)
        os.replace(mel_staging, mel_path)
    finally:
        onnx_staging.unlink(missing_ok=True)
        mel_staging.unlink(missing_ok=True)
    return {
        "format": EXPORT_FORMAT,
        "weights_sha256": WEIGHTS_SHA256,
        "resemblyzer": _version("resemblyzer"),
        "librosa": str(librosa.__version__),
        "sample_rate": SAMPLE_RATE,
        "n_fft": N_FFT,
        "hop_length": HOP,
        "n_mels": N_MELS,
        "embedding_size": EMBEDDING_SIZE,
        "max_error": error,
        "max_mel_error": mel_error,
        "files": {name: sha256_file(folder / name) for name in (_ONNX, _MEL)},
    }


def _export_error(path: Path, inputs: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """Largest difference between the ONNX model at ``path`` and torch's outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    error = 0.0
    for mels, want in zip(inputs, expected, strict=True):
        got = session.run(None, {"mels": mels})[0]
        error = max(error, float(np.abs(got - want).max()))
    return error


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _is_ready(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export of this format, files unchanged."""
    try:
        spec = json.loads((folder / _SPEC).read_text())
        if spec.get("format") != EXPORT_FORMAT:
            return False
        files = spec["files"]
        return all(sha256_file(folder / name) == files[name] for name in (_ONNX, _MEL))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_speaker_encoder(cache_dir: Path) -> Path:
    """The folder holding the ONNX encoder, its filterbank and ``spec.json``, made
    (once) when missing, damaged or of another format."""
    folder = model_dir(cache_dir)
    if _is_ready(folder):
        return folder
    log.info("preparing the speaker encoder in %s (once)", folder)
    info = export_onnx(folder)
    spec = folder / _SPEC
    tmp = _staging(spec)
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, spec)
    return folder


def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window (scipy's ``get_window('hann', n)``, librosa's default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def mel_spectrogram(wav: np.ndarray, window: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Mel power frames ``(frames, n_mels)`` of ``wav`` as resemblyzer computes them
    (librosa's centred STFT with zero padding, |X|², the mel filters): frame ``i`` is
    centred on sample ``hop·i``, and there are ``len(wav) // hop + 1`` of them."""
    n_fft = len(window)
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    padded = np.pad(x, n_fft // 2)
    n = len(x) // HOP + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::HOP][:n]
    basis = np.asarray(filters, dtype=np.float64).T
    out = np.empty((n, len(filters)), dtype=np.float32)
    for a in range(0, n, _MEL_BLOCK_FRAMES):
        spectrum = np.fft.rfft(frames[a : a + _MEL_BLOCK_FRAMES] * window, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        out[a : a + len(power)] = power @ basis
    return out


class SpeakerEncoder:
    """Unit-length GE2E speaker embeddings of mel frames, from the ONNX export (on CPU)."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        try:
            with np.load(folder / _MEL) as mel:
                self._filters = np.asarray(mel["filters"], dtype=np.float32)
                self._window = np.asarray(mel["window"], dtype=np.float64)
        except Exception as exc:  # a missing or corrupt npz (zipfile, pickle, key errors)
            raise ModelLoadError(f"could not load the speaker encoder in {folder}: {exc}") from exc
        self._session = cpu_onnx_session(folder / _ONNX, "the speaker encoder", threads)

    def mel(self, wav: np.ndarray) -> np.ndarray:
        """Mel frames ``(len(wav) // 160 + 1, 40)`` of 16 kHz ``wav``, equal to
        resemblyzer's ``audio.wav_to_mel_spectrogram``."""
        return mel_spectrogram(wav, self._window, self._filters)

    def embed(self, mels: np.ndarray) -> np.ndarray:
        """Embeddings ``(n, 256)`` of equal-length windows of mel frames ``(n, t, 40)``."""
        x = np.asarray(mels, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, EMBEDDING_SIZE), dtype=np.float32)
        out = [
            self._session.run(None, {"mels": np.ascontiguousarray(x[i : i + _BATCH])})[0]
            for i in range(0, len(x), _BATCH)
        ]
        return np.concatenate(out)

    def embed_ragged(self, mels: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``(n, 256)`` of windows of different lengths, in their order: the
        windows of each length go through the encoder together."""
        out = np.zeros((len(mels), EMBEDDING_SIZE), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, m in enumerate(mels):
            by_length.setdefault(len(m), []).append(i)
        for indices in by_length.values():
            out[indices] = self.embed(np.stack([mels[i] for i in indices]))
        return out
