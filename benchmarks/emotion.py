"""Emotion through the whole pipeline on RAVDESS-style clips: macro-F1 and confusion.

    .venv/bin/python -m benchmarks.emotion [--data DIR] [--actors 21 22 23 24] [--model NPZ]

Each clip goes through the full CLI pipeline (decode → VAD → diarize → ASR + emotion);
its label is the segment label covering most of its speech (majority by duration).
``--data`` is a folder laid out like ../shared/data/emotion/ravdess (``labels.tsv``).

Speaker independence is the caller's duty: the bundled model was trained on actors
01-20 of the shared data, so a fair figure needs other actors (e.g. RAVDESS 21-24), or
a model trained without the evaluated actors (``scripts/train_emotion.py`` reports the
cross-validated, held-out-actor figure).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, machine, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "emotion" / "ravdess")
    parser.add_argument("--actors", type=int, nargs="*", help="only these actors")
    parser.add_argument("--model", type=Path, help="emotion weights (default: bundled)")
    parser.add_argument("--limit", type=int, help="at most this many clips")
    args = parser.parse_args()
    if args.model is not None:
        os.environ["ETHOSTRAL_EMOTION__MODEL_PATH"] = str(args.model)

    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.compose import StageTimes, TranscribeOptions
    from ethostral_serve.schema import EMOTION_LABELS
    from ethostral_serve.settings import Settings

    with (args.data / "labels.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t")]
    if args.actors:
        rows = [r for r in rows if int(r["actor"]) in set(args.actors)]
    rows = rows[: args.limit] if args.limit else rows
    if not rows:
        sys.exit("no clips selected")
    engine = Engine.load(Settings())
    labels = {name.lower(): i for i, name in enumerate(EMOTION_LABELS)}
    truth, pred = [], []
    emotion_s, segments = 0.0, 0
    for row in rows:
        times = StageTimes()
        session = engine.run(args.data / row["path"], row["path"], TranscribeOptions(), times=times)
        emotion_s += times.seconds.get("emotion", 0.0)
        segments += len(session.segments)
        votes = np.zeros(len(EMOTION_LABELS))
        for seg in session.segments:
            if seg.emotion is not None:
                votes[labels[seg.emotion.label.lower()]] += max(1, seg.end_ms - seg.start_ms)
        truth.append(labels[row["emotion"].strip().lower()])
        pred.append(int(np.argmax(votes)) if votes.any() else labels["neutral"])
    y, p = np.array(truth), np.array(pred)
    n = len(EMOTION_LABELS)
    f1 = []
    for k in range(n):
        tp = np.sum((p == k) & (y == k))
        denom = np.sum(p == k) + np.sum(y == k)
        f1.append(2 * tp / denom if denom else 0.0)
    present = [k for k in range(n) if np.any(y == k)]
    macro = float(np.mean([f1[k] for k in present]))
    actors = sorted({int(r["actor"]) for r in rows})
    print(f"Emotion through the pipeline: {len(rows)} clips, actors {actors}; {machine()}")
    print(
        f"macro-F1 {macro:.3f}, accuracy {float(np.mean(y == p)):.3f}, "
        f"emotion {1000 * emotion_s / max(1, segments):.2f} ms per segment "
        f"({segments} segments)\n"
    )
    print_table(
        ["label", "F1", "clips"],
        [[EMOTION_LABELS[k], f"{f1[k]:.3f}", int(np.sum(y == k))] for k in range(n)],
    )
    print("\nconfusion (rows: truth, columns: predicted)\n")
    matrix = np.zeros((n, n), int)
    for t, q in zip(y, p, strict=True):
        matrix[t, q] += 1
    print_table(
        ["truth \\ pred", *[lab[:4] for lab in EMOTION_LABELS]],
        [[EMOTION_LABELS[i], *matrix[i].tolist()] for i in range(n)],
    )


if __name__ == "__main__":
    main()
