"""Train the embedded emotion classifier on RAVDESS speech, speaker-independently.

Features are what the service computes at inference: each clip is decoded, split by
silero VAD, packed into ASR windows and transcribed by ``WhisperAsr`` (which keeps the
encoder states); words are grouped into segments and each segment's frames are pooled by
``pool_frames``. Frames and segment bounds are cached (float16, as the service keeps
them), so a rerun starts training at once.

Protocol: actors are held out, never clips. Variants are compared by cross-validation
over actors (5 folds of 4 actors, repeated over 3 actor shuffles), scored by clip-level
macro-F1 (each clip's label: the one covering most segment time); the chosen family is
re-scored by nested CV (C picked by inner actor folds); the softmax temperature is
fitted on the held-out segment logits; the final model is fitted on all actors and
saved as a float32 npz.

    .venv/bin/python scripts/train_emotion.py \\
        --data ../shared/data/emotion/ravdess \\
        --out ethostral_serve/models/emotion_whisper_base.npz
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ethostral_serve.backends.emotion import pool_frames  # noqa: E402
from ethostral_serve.schema import EMOTION_LABELS  # noqa: E402
from ethostral_serve.settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from ethostral_serve.backends.silero import SileroVad
    from ethostral_serve.backends.whisper import WhisperAsr

# RAVDESS emotion names (labels.tsv) → service labels.
RAVDESS_TO_LABEL = {name.lower(): name for name in EMOTION_LABELS}
SEED = 20240611
CACHE_LAYOUT = 2  # bump when what is cached per clip changes


@dataclass
class Clip:
    """One labelled RAVDESS clip."""

    path: Path
    actor: int
    label: int
    intensity: str


def read_labels(data: Path) -> list[Clip]:
    """Clips listed in ``labels.tsv``, sorted by path."""
    clips: list[Clip] = []
    with (data / "labels.tsv").open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            label = EMOTION_LABELS.index(RAVDESS_TO_LABEL[row["emotion"].strip().lower()])
            clips.append(Clip(data / row["path"], int(row["actor"]), label, row["intensity"]))
    clips.sort(key=lambda c: str(c.path))
    return clips


def cache_tag(settings: Settings) -> str:
    """Key of the feature cache: ASR model, precision, VAD and segmentation settings."""
    blob = json.dumps(
        {
            "asr": settings.asr.model,
            "compute": settings.asr.compute_type,
            "beam": settings.asr.beam_size,
            "vad": settings.vad.model_dump(),
            "segments": settings.segments.model_dump(),
            "layout": CACHE_LAYOUT,
        },
        sort_keys=True,
    )
    name = Path(settings.asr.model).name.replace(".", "_")
    return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


@dataclass
class ClipFeatures:
    """What the service computes for one clip: encoder frames and transcript segments."""

    frames: np.ndarray  # (n, d) float16: every frame of the clip's ASR windows
    segments: np.ndarray  # (k, 2) int: frame range [lo, hi) of each transcript segment
    seconds: np.ndarray  # (k,) float: each segment's duration

    def segment_frames(self) -> list[np.ndarray]:
        """Frames of each segment, as the pipeline hands them to the classifier."""
        return [self.frames[lo:hi] for lo, hi in self.segments]


def _analyse(
    asr: WhisperAsr, vad: SileroVad, samples: np.ndarray, settings: Settings
) -> ClipFeatures:
    """Run VAD → windows → ASR (which keeps the encoder states) → segments, as served."""
    from ethostral_serve.audio import SAMPLE_RATE
    from ethostral_serve.backends.whisper import EncoderStates
    from ethostral_serve.pipeline.chunks import build_chunks
    from ethostral_serve.pipeline.segments import group_words

    chunks = build_chunks(vad.speech_regions(samples), settings.vad.max_chunk_s)
    transcript = asr.transcribe(samples, chunks, None)
    state: EncoderStates = transcript.state
    if len(state.times) == 0:  # no speech found: keep the whole clip's frames, no segment
        frames = asr.encode_clip(samples[: 30 * SAMPLE_RATE]).astype(np.float16)
        return ClipFeatures(frames, np.zeros((0, 2), np.int64), np.zeros(0))
    drafts = group_words(
        transcript.words,
        ["s0"] * len(transcript.words),
        max_segment_s=settings.segments.max_segment_s,
        pause_split_s=settings.segments.pause_split_s,
    )
    bounds = []
    for d in drafts:  # same frame selection as EncoderStates.between
        lo, hi = np.searchsorted(state.times, [d.span.start, d.span.end], side="left")
        if hi <= lo:
            lo = int(np.clip(lo, 0, len(state.times) - 1))
            hi = lo + 1
        bounds.append((int(lo), int(hi)))
    return ClipFeatures(
        np.asarray(state.frames, np.float16),
        np.array(bounds, np.int64).reshape(-1, 2),
        np.array([d.span.end - d.span.start for d in drafts], np.float64),
    )


def extract(clips: list[Clip], settings: Settings, cache: Path) -> list[ClipFeatures]:
    """Encoder frames and transcript segments of every clip, computed once and cached."""
    from ethostral_serve.audio import decode_audio

    cache.mkdir(parents=True, exist_ok=True)
    targets = [cache / f"{c.path.parent.name}_{c.path.stem}.npz" for c in clips]
    missing = [i for i, t in enumerate(targets) if not t.is_file()]
    if missing:
        from ethostral_serve.backends.silero import SileroVad
        from ethostral_serve.backends.whisper import WhisperAsr

        asr = WhisperAsr(settings.asr, settings.cache_dir)
        vad = SileroVad(settings.vad)
        start = time.perf_counter()
        for done, i in enumerate(missing, 1):
            feats = _analyse(asr, vad, decode_audio(clips[i].path).samples, settings)
            tmp = targets[i].with_suffix(".tmp.npz")
            np.savez(tmp, frames=feats.frames, segments=feats.segments, seconds=feats.seconds)
            tmp.replace(targets[i])
            if done % 50 == 0 or done == len(missing):
                rate = (time.perf_counter() - start) / done
                print(
                    f"  analysed {done}/{len(missing)} clips, {rate:.2f} s/clip, "
                    f"~{rate * (len(missing) - done) / 60:.1f} min left",
                    flush=True,
                )
    out = []
    for t in targets:
        with np.load(t) as z:
            out.append(ClipFeatures(z["frames"], z["segments"], z["seconds"]))
    return out


# ---------------------------------------------------------------- training samples

VIEWS = ("full", "segments", "segments+full", "segments+jitter")


def training_views(clip: ClipFeatures, view: str, seed: int) -> list[np.ndarray]:
    """Frame sets a training clip contributes under ``view``.

    ``full``: all frames of the clip's windows (includes the VAD padding after the last
    word); ``segments``: the transcript segments exactly as served; ``+full`` adds the
    former; ``+jitter`` adds two copies of each segment with its edges moved a little.
    """
    if view == "full":
        return [clip.frames]
    out = clip.segment_frames()
    if view == "segments":
        return out
    if view == "segments+full":
        return [*out, clip.frames]
    if view == "segments+jitter":
        rng = np.random.default_rng(seed)
        n = len(clip.frames)
        for lo, hi in clip.segments:
            for _ in range(2):
                a = int(lo + rng.integers(0, 5))
                b = int(np.clip(hi + rng.integers(-8, 9), a + min(10, hi - lo), n))
                out.append(clip.frames[a:b])
        return out
    raise ValueError(f"unknown view {view!r}; use {VIEWS}")


@dataclass
class Samples:
    """Pooled training rows and evaluation rows (served segments), tied to their clips."""

    train_x: np.ndarray
    train_clip: np.ndarray
    eval_x: np.ndarray
    eval_clip: np.ndarray
    eval_seconds: np.ndarray


def build_samples(data: list[ClipFeatures], pool: tuple[str, ...], view: str) -> Samples:
    """Pool every training view and every served segment of every clip."""
    tx, tc, ex, ec, es = [], [], [], [], []
    for i, clip in enumerate(data):
        for f in training_views(clip, view, SEED + i):
            tx.append(pool_frames(f, pool))
            tc.append(i)
        for f, sec in zip(clip.segment_frames(), clip.seconds, strict=True):
            ex.append(pool_frames(f, pool))
            ec.append(i)
            es.append(sec)
    return Samples(np.stack(tx), np.array(tc), np.stack(ex), np.array(ec), np.array(es))


# ---------------------------------------------------------------- model fitting


@dataclass(frozen=True)
class Candidate:
    """One feature/classifier variant with its hyper-parameter."""

    pool: tuple[str, ...]
    view: str
    kind: str  # "logreg" or "mlp"
    param: float  # logreg: C; mlp: L2 alpha
    hidden: int = 0

    @property
    def family(self) -> tuple[tuple[str, ...], str, str, int]:
        """Everything but the hyper-parameter tuned by inner cross-validation."""
        return (self.pool, self.view, self.kind, self.hidden)

    def describe(self) -> str:
        """Short human-readable name."""
        head = f"{'+'.join(self.pool)} | train on {self.view}"
        if self.kind == "logreg":
            return f"{head} | logreg C={self.param:g}"
        return f"{head} | mlp({self.hidden}) alpha={self.param:g}"


@dataclass
class Fitted:
    """Standardiser + dense layers, as the service stores them."""

    mean: np.ndarray
    scale: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores, computed as ``EmotionClassifier.logits`` does."""
        h = ((x - self.mean) / self.scale).astype(np.float32)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.astype(np.float32) + b.astype(np.float32)
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h


def fit(cand: Candidate, x: np.ndarray, y: np.ndarray, seed: int = SEED) -> Fitted:
    """Fit one candidate on pooled features ``x`` and labels ``y``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if cand.kind == "logreg":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=cand.param, max_iter=2000, tol=1e-4)
            model.fit(z, y)
            weights = [model.coef_.T.copy()]
            biases = [model.intercept_.copy()]
        elif cand.kind == "mlp":
            from sklearn.neural_network import MLPClassifier

            model = MLPClassifier(
                hidden_layer_sizes=(cand.hidden,),
                alpha=cand.param,
                max_iter=300,
                random_state=seed,
            )
            model.fit(z, y)
            weights = [w.copy() for w in model.coefs_]
            biases = [b.copy() for b in model.intercepts_]
        else:
            raise ValueError(f"unknown classifier kind {cand.kind!r}")
    return Fitted(mean.astype(np.float32), scale.astype(np.float32), weights, biases)


# ---------------------------------------------------------------- evaluation


def actor_folds(actors: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Split actors into folds with as many male (odd) as female (even) actors in each."""
    rng = np.random.default_rng(seed)
    unique = np.unique(actors)
    male = rng.permutation(unique[unique % 2 == 1])
    female = rng.permutation(unique[unique % 2 == 0])
    return [np.concatenate([male[k::n_folds], female[k::n_folds]]) for k in range(n_folds)]


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-averaged F1 over the eight labels (a prediction of -1 is always wrong)."""
    from sklearn.metrics import f1_score

    labels = list(range(len(EMOTION_LABELS)))
    return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))


def clip_votes(
    logits: np.ndarray, seg_clip: np.ndarray, seconds: np.ndarray, clips: np.ndarray
) -> np.ndarray:
    """Each clip's label: the one covering most segment time (-1 when it has no segment)."""
    pred = np.full(len(clips), -1)
    seg_label = logits.argmax(axis=1)
    for j, clip in enumerate(clips):
        mine = seg_clip == clip
        if mine.any():
            votes = np.bincount(seg_label[mine], weights=seconds[mine], minlength=logits.shape[1])
            pred[j] = int(np.argmax(votes))
    return pred


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``z / temperature``."""
    z = np.asarray(z, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = softmax(logits, temperature)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising NLL (searched over log T)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda t: nll(logits, y, float(np.exp(t))), bounds=(-3.0, 3.0), method="bounded"
    )
    return float(np.exp(res.x))


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top label (equal-width confidence bins)."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


@dataclass
class CvResult:
    """Held-out predictions of one candidate over repeated actor folds."""

    fold_f1: list[float]  # clip-level macro-F1 of each held-out fold
    seg_logits: list[np.ndarray]  # per repeat: (n_segments, 8) held-out logits
    clip_pred: list[np.ndarray]  # per repeat: (n_clips,) clip labels (-1: no segment)


def _fit_clips(cand: Candidate, s: Samples, y: np.ndarray, train_mask: np.ndarray) -> Fitted:
    """Fit ``cand`` on the training rows of the clips selected by ``train_mask``."""
    rows = train_mask[s.train_clip]
    return fit(cand, s.train_x[rows], y[s.train_clip[rows]])


def _score_held_out(
    model: Fitted,
    s: Samples,
    y: np.ndarray,
    test: np.ndarray,
    logits: np.ndarray,
    pred: np.ndarray,
) -> float:
    """Predict the ``test`` clips' segments into ``logits`` and their clip labels into
    ``pred`` (both filled in place); return the fold's clip-level macro-F1."""
    rows = test[s.eval_clip]
    logits[rows] = model.logits(s.eval_x[rows])
    test_clips = np.flatnonzero(test)
    pred[test_clips] = clip_votes(logits[rows], s.eval_clip[rows], s.eval_seconds[rows], test_clips)
    return macro_f1(y[test_clips], pred[test_clips])


def cross_validate(
    cand: Candidate,
    s: Samples,
    y: np.ndarray,
    actors: np.ndarray,
    fold_sets: list[list[np.ndarray]],
    clips: np.ndarray | None = None,
) -> CvResult:
    """Fit on the other actors, predict the served segments of each fold's actors.

    ``clips`` restricts everything to a subset of clips (used by the inner loop).
    """
    universe = np.ones(len(y), bool) if clips is None else np.isin(np.arange(len(y)), clips)
    fold_f1: list[float] = []
    seg_logits: list[np.ndarray] = []
    clip_pred: list[np.ndarray] = []
    for folds in fold_sets:
        logits = np.zeros((len(s.eval_x), len(EMOTION_LABELS)), np.float32)
        pred = np.full(len(y), -1)
        for test_actors in folds:
            test = np.isin(actors, test_actors) & universe
            model = _fit_clips(cand, s, y, universe & ~test)
            fold_f1.append(_score_held_out(model, s, y, test, logits, pred))
        seg_logits.append(logits)
        clip_pred.append(pred)
    return CvResult(fold_f1, seg_logits, clip_pred)


def nested_cv(
    family: list[Candidate],
    s: Samples,
    y: np.ndarray,
    actors: np.ndarray,
    fold_sets: list[list[np.ndarray]],
    inner_folds: int,
) -> tuple[CvResult, list[Candidate]]:
    """Outer actor folds; the hyper-parameter is chosen by inner actor folds only."""
    fold_f1: list[float] = []
    seg_logits: list[np.ndarray] = []
    clip_pred: list[np.ndarray] = []
    chosen: list[Candidate] = []
    for r, folds in enumerate(fold_sets):
        logits = np.zeros((len(s.eval_x), len(EMOTION_LABELS)), np.float32)
        pred = np.full(len(y), -1)
        for k, test_actors in enumerate(folds):
            test = np.isin(actors, test_actors)
            train_clips = np.flatnonzero(~test)
            inner = [actor_folds(actors[~test], inner_folds, SEED + 1000 + 10 * r + k)]
            scores = [
                np.mean(cross_validate(c, s, y, actors, inner, clips=train_clips).fold_f1)
                for c in family
            ]
            best = family[int(np.argmax(scores))]
            chosen.append(best)
            model = _fit_clips(best, s, y, ~test)
            fold_f1.append(_score_held_out(model, s, y, test, logits, pred))
        seg_logits.append(logits)
        clip_pred.append(pred)
    return CvResult(fold_f1, seg_logits, clip_pred), chosen


def per_class_f1(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """F1 of each label."""
    from sklearn.metrics import f1_score

    labels = list(range(len(EMOTION_LABELS)))
    return f1_score(y, pred, labels=labels, average=None, zero_division=0)


def confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Counts: rows true label, columns predicted (a last column for 'no segment')."""
    k = len(EMOTION_LABELS)
    m = np.zeros((k, k + 1), np.int64)
    np.add.at(m, (y, np.where(pred < 0, k, pred)), 1)
    return m


def format_confusion(m: np.ndarray) -> str:
    """Confusion matrix as a Markdown table."""
    head = [lab[:4] for lab in EMOTION_LABELS] + ["none"]
    lines = ["| true \\ pred | " + " | ".join(head) + " |"]
    lines.append("|---" * (len(head) + 1) + "|")
    for lab, row in zip(EMOTION_LABELS, m, strict=True):
        lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def candidates(quick: bool) -> list[Candidate]:
    """The variants compared by cross-validation."""
    ms = ("mean", "std")
    cs = (0.003, 0.01, 0.03)
    if quick:
        return [Candidate(ms, "segments+full", "logreg", c) for c in cs]
    out = [Candidate(ms, "full", "logreg", 0.01)]  # the plain protocol, for reference
    out += [
        Candidate(pool, view, "logreg", c)
        for pool in (ms, ("mean",))
        for view in ("segments", "segments+full", "segments+jitter")
        for c in cs
    ]
    out += [Candidate(ms, "segments+full", "mlp", a, 256) for a in (1.0, 3.0)]
    return out


def main(argv: list[str] | None = None) -> int:
    """Extract features, cross-validate, calibrate, fit on all actors and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/emotion/ravdess")
    parser.add_argument(
        "--out", type=Path, default=REPO / "ethostral_serve/models/emotion_whisper_base.npz"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="feature cache (default: <cache_dir>/emotion)"
    )
    parser.add_argument("--folds", type=int, default=5, help="actor folds (4 actors each)")
    parser.add_argument("--repeats", type=int, default=3, help="actor shuffles of the folds")
    parser.add_argument("--inner-folds", type=int, default=4, help="nested CV inner folds")
    parser.add_argument("--quick", action="store_true", help="compare fewer variants")
    parser.add_argument("--report", type=Path, default=None, help="write metrics as JSON")
    parser.add_argument("--extract-only", action="store_true", help="only fill the cache")
    args = parser.parse_args(argv)

    from ethostral_serve.backends.emotion import (
        EmotionClassifier,
        save_model,
        whisper_model_id,
    )
    from ethostral_serve.settings import EmotionSettings

    settings = Settings()
    clips = read_labels(args.data)
    cache_root = args.cache or settings.cache_dir / "emotion"
    cache = cache_root / cache_tag(settings)
    print(f"{len(clips)} clips, {len({c.actor for c in clips})} actors; cache {cache}")
    data = extract(clips, settings, cache)
    if args.extract_only:
        return 0
    y = np.array([c.label for c in clips])
    actors = np.array([c.actor for c in clips])
    n_segments = np.array([len(d.segments) for d in data])
    print(
        f"served segments per clip: {np.bincount(n_segments).tolist()} (index = count); "
        f"median frames per segment "
        f"{np.median([hi - lo for d in data for lo, hi in d.segments]):.0f}"
    )
    fold_sets = [actor_folds(actors, args.folds, SEED + r) for r in range(args.repeats)]
    cands = candidates(args.quick)
    samples = {(c.pool, c.view): build_samples(data, c.pool, c.view) for c in cands}

    print(
        f"\n## Variants: {args.repeats}x{args.folds}-fold CV by actor; clip-level macro-F1 "
        "on held-out actors, from the served segments (label with most segment time)\n"
    )
    print("| variant | macro-F1 mean | std | s/fit |")
    print("|---|---|---|---|")
    scores: dict[Candidate, float] = {}
    grid_rows = []
    for cand in cands:
        t0 = time.perf_counter()
        res = cross_validate(cand, samples[cand.pool, cand.view], y, actors, fold_sets)
        per_fit = (time.perf_counter() - t0) / len(res.fold_f1)
        scores[cand] = float(np.mean(res.fold_f1))
        grid_rows.append((cand.describe(), scores[cand], float(np.std(res.fold_f1))))
        print(
            f"| {cand.describe()} | {scores[cand]:.3f} | {np.std(res.fold_f1):.3f} "
            f"| {per_fit:.1f} |",
            flush=True,
        )
    best = max(cands, key=lambda c: scores[c])
    family = [c for c in cands if c.family == best.family]
    print(f"\nbest variant: {best.describe()}")

    s = samples[best.pool, best.view]
    nested, chosen = nested_cv(family, s, y, actors, fold_sets, args.inner_folds)
    f1s = np.array(nested.fold_f1)
    logits = np.concatenate(nested.seg_logits)
    seg_y = np.tile(y[s.eval_clip], args.repeats)
    temperature = fit_temperature(logits, seg_y)
    # Cross-fitted check: each fold's temperature is fitted on the other folds only.
    crossfit = np.zeros_like(logits, dtype=np.float64)
    n_seg = len(s.eval_clip)
    for r, folds in enumerate(fold_sets):
        for test_actors in folds:
            test = np.zeros(len(seg_y), bool)
            test[r * n_seg : (r + 1) * n_seg] = np.isin(actors[s.eval_clip], test_actors)
            t_k = fit_temperature(logits[~test], seg_y[~test])
            crossfit[test] = softmax(logits[test], t_k)
    clip_pred = np.concatenate(nested.clip_pred)
    clip_y = np.tile(y, args.repeats)
    class_f1 = per_class_f1(clip_y, clip_pred)
    matrix = confusion(y, nested.clip_pred[0])
    metrics = {
        "variant": best.describe(),
        "nested_macro_f1_mean": float(f1s.mean()),
        "nested_macro_f1_std": float(f1s.std()),
        "nested_macro_f1_min": float(f1s.min()),
        "nested_macro_f1_max": float(f1s.max()),
        "clip_accuracy": float(np.mean(clip_pred == clip_y)),
        "clips_without_segment": int(np.sum(n_segments == 0)),
        "per_class_f1": {lab: float(v) for lab, v in zip(EMOTION_LABELS, class_f1, strict=True)},
        "chosen_params": [c.param for c in chosen],
        "temperature": temperature,
        "segment_accuracy": float(np.mean(logits.argmax(axis=1) == seg_y)),
        "nll_before": nll(logits, seg_y, 1.0),
        "nll_after": nll(logits, seg_y, temperature),
        "ece_before": ece(softmax(logits), seg_y),
        "ece_after": ece(softmax(logits, temperature), seg_y),
        "ece_after_crossfit": ece(crossfit, seg_y),
        "confusion_repeat0": matrix.tolist(),
        "grid": grid_rows,
    }

    print(f"\n## Nested CV of '{best.describe()}' (C picked by inner actor folds)\n")
    print("| metric | value |\n|---|---|")
    print(
        f"| clip macro-F1 over {len(f1s)} held-out folds | {f1s.mean():.3f} ± {f1s.std():.3f} "
        f"(min {f1s.min():.3f}, max {f1s.max():.3f}) |"
    )
    print(f"| clip accuracy (all repeats) | {metrics['clip_accuracy']:.3f} |")
    print(f"| segment accuracy | {metrics['segment_accuracy']:.3f} |")
    print(f"| inner-CV choices of C | {sorted({c.param for c in chosen})} |")
    print(f"| temperature (NLL fit on held-out segment logits) | {temperature:.3f} |")
    print(f"| NLL before → after | {metrics['nll_before']:.3f} → {metrics['nll_after']:.3f} |")
    print(
        f"| ECE (15 bins) before → after | {metrics['ece_before']:.3f} → "
        f"{metrics['ece_after']:.3f} (cross-fitted {metrics['ece_after_crossfit']:.3f}) |"
    )
    print("\n| label | F1 (clip level, all repeats) |\n|---|---|")
    for lab, v in zip(EMOTION_LABELS, class_f1, strict=True):
        print(f"| {lab} | {v:.3f} |")
    print("\nconfusion matrix (repeat 0, every clip once; 'none': no served segment):\n")
    print(format_confusion(matrix))

    final = fit(best, s.train_x, y[s.train_clip])
    save_model(
        args.out,
        asr_model=whisper_model_id(settings.asr.model),
        feature_dim=int(data[0].frames.shape[1]),
        pool=best.pool,
        mean=final.mean,
        scale=final.scale,
        weights=final.weights,
        biases=final.biases,
        temperature=temperature,
        metadata=json.dumps(
            {
                "variant": best.describe(),
                "train": "RAVDESS speech, actors 01-20, 1200 clips (CC BY-NC-SA 4.0)",
                "cv_clip_macro_f1": round(float(f1s.mean()), 4),
                "seed": SEED,
            }
        ),
    )
    clf = EmotionClassifier(EmotionSettings(model_path=args.out))
    seg = data[0].segment_frames()[0] if len(data[0].segments) else data[0].frames
    clf.classify_frames([seg])
    t0 = time.perf_counter()
    for _ in range(200):
        clf.classify_frames([seg])
    per_segment_ms = (time.perf_counter() - t0) / 200 * 1000
    train_acc = float(np.mean(clf.probabilities(s.eval_x).argmax(axis=1) == y[s.eval_clip]))
    size_kb = args.out.stat().st_size / 1024
    metrics.update(
        {"per_segment_ms": per_segment_ms, "weights_kb": size_kb, "train_accuracy": train_acc}
    )
    print(
        f"\nsaved {args.out} ({size_kb:.0f} KiB, {best.describe()}, T={temperature:.3f}); "
        f"training-segment accuracy {train_acc:.3f}; classify_frames: "
        f"{per_segment_ms:.2f} ms/segment ({len(seg)} frames)"
    )
    if args.report:
        args.report.write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
