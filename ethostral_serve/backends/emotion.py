"""Speech emotion from Whisper encoder states: pooled frames → small numpy classifier.

The ASR pass already encodes every window with the Whisper encoder; a segment's frames
are pooled into one fixed-length vector (:func:`pool_frames`) and classified by a
standardise → dense layer(s) → temperature-scaled softmax model stored in an ``.npz``
file (trained by ``scripts/train_emotion.py`` on acted English and German speech, RAVDESS
+ EmoDB; see ``models/MODEL_CARD.md``), whose top probability is then mapped to a
calibrated confidence (a monotone map fitted on held-out speakers; :func:`recalibrate`).
Inference is pure numpy.

Valence, arousal and dominance are not predicted directly (the training data has no
dimensional labels): they are the posterior-weighted mean of published
pleasure/arousal/dominance norms of the eight labels (:data:`EMOTION_VAD_NORMS`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import EmotionResult
from ethostral_serve.schema import EMOTION_LABELS
from ethostral_serve.settings import EmotionSettings

MODEL_FORMAT = 1
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "emotion_whisper_base.npz"

# Statistics pool_frames can compute, in the order they are concatenated.
POOL_STATS: tuple[str, ...] = ("mean", "std", "max", "min", "delta")
DEFAULT_POOL: tuple[str, ...] = ("mean", "std")

# (valence, arousal, dominance) per label on a -1..1 scale.
# Russell, J. A. & Mehrabian, A. (1977). Evidence for a three-factor theory of emotions.
# Journal of Research in Personality 11(3):273-294, doi:10.1016/0092-6566(77)90037-X:
# mean pleasure/arousal/dominance ratings of emotion-denoting terms. Used terms: happy,
# angry, disgusted, fearful, sad, surprised; Calm uses the paper's "relaxed" term. The
# values come from public transcriptions of the paper's table, not the paper itself
# (see MODEL_CARD.md). Neutral is the scale origin by definition.
EMOTION_VAD_NORMS: dict[str, tuple[float, float, float]] = {
    "Neutral": (0.0, 0.0, 0.0),
    "Calm": (0.68, -0.46, 0.06),
    "Happy": (0.81, 0.51, 0.46),
    "Sad": (-0.63, -0.27, -0.33),
    "Angry": (-0.51, 0.59, 0.25),
    "Fearful": (-0.64, 0.60, -0.43),
    "Disgust": (-0.60, 0.35, 0.11),
    "Surprised": (0.40, 0.67, -0.13),
}


def pool_frames(frames: np.ndarray, stats: Sequence[str] = DEFAULT_POOL) -> np.ndarray:
    """One fixed-length vector from ``(n, d)`` encoder frames: the chosen statistics, joined.

    ``mean``/``std``/``max``/``min`` are per-dimension over frames; ``delta`` is the mean
    absolute difference between consecutive frames (zeros for a single frame).
    """
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"expected (n >= 1, d) frames, got shape {f.shape}")
    parts: list[np.ndarray] = []
    for name in stats:
        if name == "mean":
            parts.append(f.mean(axis=0))
        elif name == "std":
            parts.append(f.std(axis=0))
        elif name == "max":
            parts.append(f.max(axis=0))
        elif name == "min":
            parts.append(f.min(axis=0))
        elif name == "delta":
            if len(f) > 1:
                parts.append(np.abs(np.diff(f, axis=0)).mean(axis=0))
            else:
                parts.append(np.zeros(f.shape[1], np.float32))
        else:
            raise ValueError(f"unknown pooling statistic {name!r}; use {POOL_STATS}")
    return np.concatenate(parts).astype(np.float32)


def recalibrate(probs: np.ndarray, knots_x: np.ndarray, knots_y: np.ndarray) -> np.ndarray:
    """Posteriors (n, k) whose top probability is mapped through the monotone,
    piecewise-linear map ``knots_x`` → ``knots_y`` and the other labels rescaled to sum
    to one with it. The map never lets another label reach the top one, and a posterior
    that is certain (the others all zero) is kept as it is."""
    p = np.asarray(probs, np.float64)
    if p.size == 0:
        return p.copy()
    rows = np.arange(len(p))
    top_index = p.argmax(axis=1)
    top = p[rows, top_index]
    second = np.partition(p, -2, axis=1)[:, -2] if p.shape[1] > 1 else np.zeros(len(p))
    rest = 1.0 - top
    conf = np.interp(top, knots_x, knots_y)
    # the top label stays on top (a hair above a tie, so argmax keeps it):
    # conf >= second * (1 - conf) / rest
    conf = np.maximum(conf, second / np.maximum(rest + second, 1e-12) + 1e-9)
    conf = np.where(rest > 1e-12, np.clip(conf, 0.0, 1.0), top)
    out = p * np.where(rest > 1e-12, (1.0 - conf) / np.maximum(rest, 1e-12), 1.0)[:, None]
    out[rows, top_index] = conf
    return out


def whisper_model_id(asr_model: str) -> str:
    """Name of the encoder an ASR model setting gives (``base`` → ``whisper-base``)."""
    name = Path(asr_model).name if os.sep in asr_model else asr_model
    return f"whisper-{name}"


def vad_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """(n, 3) valence/arousal/dominance: posterior-weighted label norms, clipped to [-1, 1]."""
    norms = np.array([EMOTION_VAD_NORMS[label] for label in EMOTION_LABELS], np.float64)
    return np.clip(np.asarray(probs, np.float64) @ norms, -1.0, 1.0)


class EmotionClassifier:
    """Categorical emotion (+ derived V/A/D) from pooled Whisper encoder frames."""

    def __init__(self, settings: EmotionSettings) -> None:
        path = Path(settings.model_path) if settings.model_path else DEFAULT_MODEL
        self.path = path
        if not path.is_file():
            raise ModelLoadError(
                f"emotion model not found at {path}; train it with scripts/train_emotion.py "
                "or set ETHOSTRAL_EMOTION__MODEL_PATH"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"emotion model {path} is unreadable: {exc}") from exc
        try:
            self._load(arrays)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ModelLoadError(f"emotion model {path} is invalid: {exc}") from exc

    def _load(self, a: dict[str, np.ndarray]) -> None:
        version = int(a["format"])
        if version != MODEL_FORMAT:
            raise ValueError(f"format {version}, this code reads format {MODEL_FORMAT}")
        labels = tuple(str(x) for x in a["labels"])
        if labels != EMOTION_LABELS:
            raise ValueError(f"labels {labels} differ from {EMOTION_LABELS}")
        self.asr_model: str = str(a["asr_model"])
        self.feature_dim: int = int(a["feature_dim"])
        self.pool: tuple[str, ...] = tuple(str(x) for x in a["pool"])
        self.temperature: float = float(a["temperature"])
        if not np.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.confidence_x, self.confidence_y = _confidence_map(a)
        self.mean = a["mean"].astype(np.float32)
        self.scale = a["scale"].astype(np.float32)
        n_layers = int(a["n_layers"])
        self.weights = [a[f"w{i}"].astype(np.float32) for i in range(n_layers)]
        self.biases = [a[f"b{i}"].astype(np.float32) for i in range(n_layers)]
        width = len(pool_frames(np.zeros((2, self.feature_dim), np.float32), self.pool))
        if self.mean.shape != (width,) or self.scale.shape != (width,):
            raise ValueError(f"standardiser does not match {width} pooled features")
        if np.any(self.scale <= 0):
            raise ValueError("standardiser scale must be > 0")
        inputs = width
        for w, b in zip(self.weights, self.biases, strict=True):
            if w.ndim != 2 or w.shape[0] != inputs or b.shape != (w.shape[1],):
                raise ValueError(f"layer shapes {w.shape}/{b.shape} do not chain from {inputs}")
            inputs = w.shape[1]
        if inputs != len(EMOTION_LABELS):
            raise ValueError(f"output layer has {inputs} units, expected {len(EMOTION_LABELS)}")
        self.n_features = width

    def accepts(self, asr_model: str) -> bool:
        """Whether frames from the ASR model setting ``asr_model`` fit this classifier."""
        return whisper_model_id(asr_model) == self.asr_model

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Uncalibrated class scores (n, 8) for pooled ``features`` (n, D)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"expected pooled features of shape (n, {self.n_features}), got {x.shape}"
            )
        h = (x - self.mean) / self.scale
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b
            if i < last:
                h = np.maximum(h, 0.0)
        return h

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated posteriors (n, 8), columns in ``EMOTION_LABELS`` order."""
        z = self.logits(features).astype(np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return recalibrate(p / p.sum(axis=1, keepdims=True), self.confidence_x, self.confidence_y)

    def classify(self, features: np.ndarray) -> list[EmotionResult]:
        """One result per row of pooled ``features`` (n, D)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 2 and x.shape[0] == 0:
            return []
        return self._results(self.probabilities(x))

    def classify_frames(self, frames_list: Sequence[np.ndarray]) -> list[EmotionResult]:
        """One result per segment's encoder frames ``(n_i, d)``, classified as one batch.

        A segment with no frames gets the uniform posterior (no evidence either way).
        """
        if not frames_list:
            return []
        pooled: list[np.ndarray] = []
        empty: list[int] = []
        for i, frames in enumerate(frames_list):
            f = np.asarray(frames)
            if f.ndim != 2 or (f.shape[1] != self.feature_dim and f.shape[0] > 0):
                raise ValueError(
                    f"segment {i}: frames of shape {f.shape} do not match this emotion model "
                    f"({self.asr_model}, {self.feature_dim}-dim encoder states)"
                )
            if f.shape[0] == 0:
                empty.append(i)
                f = np.zeros((1, self.feature_dim), np.float32)
            pooled.append(pool_frames(f, self.pool))
        probs = self.probabilities(np.stack(pooled))
        if empty:
            probs[empty] = 1.0 / len(EMOTION_LABELS)
        return self._results(probs)

    @staticmethod
    def _results(probs: np.ndarray) -> list[EmotionResult]:
        vad = vad_from_probabilities(probs)
        out: list[EmotionResult] = []
        for p, (v, a, d) in zip(probs, vad, strict=True):
            top = int(np.argmax(p))
            out.append(
                EmotionResult(
                    label=EMOTION_LABELS[top],
                    confidence=float(p[top]),
                    valence=float(v),
                    arousal=float(a),
                    dominance=float(d),
                    probabilities={lab: float(q) for lab, q in zip(EMOTION_LABELS, p, strict=True)},
                )
            )
        return out


def _confidence_map(a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the map from the top probability to the confidence (identity if the file
    has none): increasing ``x`` and non-decreasing ``y``, both within [0, 1]."""
    if "confidence_x" not in a and "confidence_y" not in a:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    x = np.asarray(a["confidence_x"], np.float64)
    y = np.asarray(a["confidence_y"], np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(
            f"confidence map needs two 1-D arrays of equal length >= 2: {x.shape}, {y.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("confidence map has non-finite knots")
    if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
        raise ValueError("confidence map must be increasing in x and non-decreasing in y")
    if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
        raise ValueError("confidence map knots must lie within [0, 1]")
    return x, y


def save_model(
    path: os.PathLike[str] | str,
    *,
    asr_model: str,
    feature_dim: int,
    pool: Sequence[str],
    mean: np.ndarray,
    scale: np.ndarray,
    weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray],
    temperature: float,
    confidence_map: tuple[np.ndarray, np.ndarray] | None = None,
    metadata: str = "",
) -> None:
    """Write a classifier in the format :class:`EmotionClassifier` reads (float32 npz)."""
    arrays: dict[str, np.ndarray] = {
        "format": np.array(MODEL_FORMAT),
        "labels": np.array(EMOTION_LABELS),
        "asr_model": np.array(asr_model),
        "feature_dim": np.array(feature_dim),
        "pool": np.array(list(pool)),
        "mean": np.asarray(mean, np.float32),
        "scale": np.asarray(scale, np.float32),
        "n_layers": np.array(len(weights)),
        "temperature": np.array(temperature, np.float32),
        "metadata": np.array(metadata),
    }
    if confidence_map is not None:
        arrays["confidence_x"] = np.asarray(confidence_map[0], np.float64)
        arrays["confidence_y"] = np.asarray(confidence_map[1], np.float64)
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        arrays[f"w{i}"] = np.asarray(w, np.float32)
        arrays[f"b{i}"] = np.asarray(b, np.float32)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as fh:
        np.savez_compressed(fh, **arrays)
