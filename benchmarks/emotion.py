"""Emotion through the whole pipeline on RAVDESS- or EmoDB-style clips: macro-F1, confusion.

    .venv/bin/python -m benchmarks.emotion --data DIR [--speakers 21 22 23 24] [--model NPZ]

Each clip goes through the full CLI pipeline (decode → VAD → diarize → ASR + emotion);
its label is the segment label covering most of its speech (majority by duration); a
clip with no segment counts as wrong. ``--data`` is a folder with a ``labels.tsv`` laid
out like ../shared/data/emotion/ravdess (an ``actor`` column: scored on the 8 labels) or
like ../shared/data/emotion/emodb (a ``speaker`` column: scored on the 6 labels it shares
with ours; boredom clips are left out, and a Calm or Surprised prediction is wrong).
It also prints the segments' expected calibration error: each segment's confidence
against whether its label is that of the clip it lies in (15 equal-width bins), next to
what a perfectly calibrated model would show on as many segments.

With ``--conversation S``, the clips are instead joined, in a seeded random order across
speakers, into recordings of about S seconds (1.5 s of silence between clips), and each
recording goes through the pipeline once, as a conversation would: a clip's label is then
the segment label covering most of its span. Each clip becomes a segment somewhere inside
an ASR window, after other voices, which is how segments of real conversations are read.

Speaker independence is the caller's duty: the bundled model was trained on RAVDESS
actors 01-20 and EmoDB speakers 03, 08, 09, 10 and 11 of the shared data, so a fair
figure needs other speakers (RAVDESS 21-24, EmoDB 12-16); ``scripts/train_emotion.py``
reports the cross-validated, held-out-speaker figures.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, machine, print_table
from ethostral_serve.schema import EMOTION_LABELS, Segment
from scripts.train_emotion import (
    SCORED,
    Clip,
    binned_ece,
    calibrated_ece,
    corpus_f1,
    per_class_f1,
    read_emodb,
    read_ravdess,
)


def read_clips(data: Path) -> tuple[str, list[Clip]]:
    """The corpus a ``labels.tsv`` is laid out for, and its clips."""
    with (data / "labels.tsv").open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
    if "actor" in header:
        return "ravdess", read_ravdess(data)
    if "speaker" in header:
        return "emodb", read_emodb(data)
    sys.exit(f"{data / 'labels.tsv'}: neither an 'actor' (RAVDESS) nor a 'speaker' (EmoDB) column")


GAP_S = 1.5  # silence between the clips of a conversation


def votes_over(segments: Sequence[Segment], lo_ms: float, hi_ms: float) -> np.ndarray:
    """Milliseconds of each label's segments inside ``[lo_ms, hi_ms)``; a segment that
    touches the span counts at least 1 ms, so a clip with any segment has a vote."""
    votes = np.zeros(len(EMOTION_LABELS))
    for seg in segments:
        if seg.emotion is not None and seg.end_ms > lo_ms and seg.start_ms < hi_ms:
            overlap = min(seg.end_ms, hi_ms) - max(seg.start_ms, lo_ms)
            votes[EMOTION_LABELS.index(seg.emotion.label)] += max(1.0, overlap)
    return votes


def segment_outcomes(
    segments: Sequence[Segment], spans: Sequence[tuple[float, float]], labels: Sequence[int]
) -> list[tuple[float, bool]]:
    """Each emotion-bearing segment's confidence and whether its label is that of the
    clip it overlaps most (``spans`` and ``labels`` per clip); segments outside every
    clip are left out. What the segment-level calibration error is computed from."""
    outcomes = []
    for seg in segments:
        if seg.emotion is None:
            continue
        overlaps = [min(seg.end_ms, hi) - max(seg.start_ms, lo) for lo, hi in spans]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            label = EMOTION_LABELS.index(seg.emotion.label)
            outcomes.append((seg.emotion.confidence, label == labels[best]))
    return outcomes


def conversations(clips: Sequence[Clip], seconds: float, seed: int = 0) -> list[list[Clip]]:
    """The clips in a seeded random order, cut into groups of about ``seconds`` each."""
    import soundfile as sf

    order = [clips[i] for i in np.random.default_rng(seed).permutation(len(clips))]
    groups: list[list[Clip]] = [[]]
    length = 0.0
    for clip in order:
        d = sf.info(str(clip.path)).duration + GAP_S
        if groups[-1] and length + d > seconds:
            groups.append([])
            length = 0.0
        groups[-1].append(clip)
        length += d
    return groups


def joined(paths: Sequence[Path]) -> tuple[bytes, list[tuple[float, float]]]:
    """The clips one after another, ``GAP_S`` of silence after each, as WAV bytes, and
    each clip's span in it (ms)."""
    import soundfile as sf

    from ethostral_serve.audio import SAMPLE_RATE, decode_audio

    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)
    parts, spans, at = [], [], 0.0
    for path in paths:
        samples = decode_audio(path).samples
        parts += [samples, gap]
        spans.append((at, at + 1000 * len(samples) / SAMPLE_RATE))
        at = spans[-1][1] + 1000 * GAP_S
    wav = io.BytesIO()
    sf.write(wav, np.concatenate(parts), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return wav.getvalue(), spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "emotion" / "ravdess")
    parser.add_argument(
        "--speakers", "--actors", nargs="*", help="only these actors / speakers (e.g. 21 or 03)"
    )
    parser.add_argument("--model", type=Path, help="emotion weights (default: bundled)")
    parser.add_argument("--limit", type=int, help="at most this many clips")
    parser.add_argument(
        "--conversation",
        type=float,
        metavar="S",
        help="join the clips into recordings of about S seconds and read those instead",
    )
    args = parser.parse_args()
    if args.model is not None:
        os.environ["ETHOSTRAL_EMOTION__MODEL_PATH"] = str(args.model)

    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.compose import StageTimes, TranscribeOptions
    from ethostral_serve.settings import Settings

    corpus, clips = read_clips(args.data)
    if args.speakers:
        wanted = {int(s) for s in args.speakers}
        clips = [c for c in clips if int(c.speaker.rsplit("-", 1)[1]) in wanted]
    left_out = sum(c.label < 0 for c in clips)
    clips = [c for c in clips if c.label >= 0]  # EmoDB boredom has no label of ours
    clips = clips[: args.limit] if args.limit else clips
    if not clips:
        sys.exit("no clips selected")
    engine = Engine.load(Settings())
    truth, pred, confidence = [], [], []
    outcomes: list[tuple[float, bool]] = []
    emotion_s, segments = 0.0, 0
    groups = conversations(clips, args.conversation) if args.conversation else [[c] for c in clips]
    for group in groups:
        times = StageTimes()
        if args.conversation:
            source, spans = joined([c.path for c in group])
            name = "conversation.wav"
        else:
            source, spans, name = group[0].path, [(0.0, float("inf"))], group[0].path.name
        session = engine.run(source, name, TranscribeOptions(), times=times)
        emotion_s += times.seconds.get("emotion", 0.0)
        segments += len(session.segments)
        outcomes += segment_outcomes(session.segments, spans, [c.label for c in group])
        for clip, (lo, hi) in zip(group, spans, strict=True):
            votes = votes_over(session.segments, lo, hi)
            truth.append(clip.label)
            pred.append(int(np.argmax(votes)) if votes.any() else -1)
            inside = [
                s.emotion.confidence
                for s in session.segments
                if s.emotion and s.end_ms > lo and s.start_ms < hi
            ]
            confidence.append(max(inside, default=0.0))
    y, p = np.array(truth), np.array(pred)
    speakers = sorted({c.speaker for c in clips})
    scored = [EMOTION_LABELS[k] for k in SCORED[corpus]]
    how = (
        f"joined into {len(groups)} recordings of about {args.conversation:g} s"
        if args.conversation
        else "each read alone"
    )
    print(
        f"Emotion through the pipeline ({corpus}): {len(clips)} clips ({how}), speakers "
        f"{', '.join(speakers)}; {machine()}"
    )
    if left_out:
        print(f"{left_out} clips with no label of ours (boredom) left out")
    print(
        f"macro-F1 over {len(scored)} labels ({', '.join(scored)}) {corpus_f1(y, p, corpus):.3f}, "
        f"accuracy {float(np.mean(y == p)):.3f}, clips without a segment {int(np.sum(p < 0))}, "
        f"mean top confidence {float(np.mean(confidence)):.3f}, called Angry "
        f"{float(np.mean(p == EMOTION_LABELS.index('Angry'))):.3f}, emotion "
        f"{1000 * emotion_s / max(1, segments):.2f} ms per segment ({segments} segments)"
    )
    if outcomes:
        conf = np.array([c for c, _ in outcomes])
        right = np.array([r for _, r in outcomes])
        floor, high = calibrated_ece(conf)
        print(
            f"segments' calibration: ECE {binned_ece(conf, right):.3f} over {len(conf)} segments "
            f"(accuracy {float(right.mean()):.3f}, mean confidence {float(conf.mean()):.3f}; "
            f"a calibrated model would show {floor:.3f} on as many, 90 % of draws under "
            f"{high:.3f})"
        )
    print()
    f1 = per_class_f1(y, p, corpus)
    print_table(
        ["label", "F1", "clips"],
        [[lab, f"{f1[lab]:.3f}", int(np.sum(y == EMOTION_LABELS.index(lab)))] for lab in scored],
    )
    print("\nconfusion (rows: truth, columns: predicted; none: no segment)\n")
    n = len(EMOTION_LABELS)
    matrix = np.zeros((n, n + 1), int)
    for t, q in zip(y, p, strict=True):
        matrix[t, q if q >= 0 else n] += 1
    print_table(
        ["truth \\ pred", *[lab[:4] for lab in EMOTION_LABELS], "none"],
        [[EMOTION_LABELS[k], *matrix[k].tolist()] for k in SCORED[corpus]],
    )


if __name__ == "__main__":
    main()
