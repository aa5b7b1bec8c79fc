"""The embedded overlap-aware diarizer (pyannote segmentation via ONNX + resemblyzer or
CAM++) on real LibriSpeech speech, and the bundled segmentation model it prepares."""

from __future__ import annotations

import copy
import csv
import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require_data

from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.backends.diarization.segmentation import (
    CHECKPOINT_SHA256,
    EXPORT_FORMAT,
    SegmentationModel,
)
from ethostral_serve.pipeline.overlap_diarization import FrameGrid
from ethostral_serve.pipeline.types import Span, SpeakerCount, SpeakerTurn

slow = pytest.mark.slow

FEMALE, MALE = "1998", "1688"  # LibriSpeech test-other speakers
STEP = 0.01  # resolution of the frame-level checks (s)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["resemblyzer", "campplus"])
def diarizer(request):
    """The embedded diarizer with each speaker encoder (otherwise default settings) and
    the user's model cache."""
    from ethostral_serve.backends.diarization.embedded import OverlapAwareDiarizer
    from ethostral_serve.settings import DiarizerSettings, Settings

    settings = DiarizerSettings(speaker_encoder=request.param)
    return OverlapAwareDiarizer(settings, Settings().cache_dir)


@pytest.fixture(scope="module")
def vad():
    """The project's Silero VAD with default settings."""
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.settings import VadSettings

    return SileroVad(VadSettings())


def _rows() -> tuple[Path, list[dict[str, str]]]:
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        return root, list(csv.DictReader(fh, delimiter="\t"))


def _utterances(speaker: str, lo: float, hi: float) -> list[np.ndarray]:
    """Utterances of ``speaker`` lasting ``lo``-``hi`` seconds, in file order."""
    root, rows = _rows()
    return [
        decode_audio(root / r["path"]).samples
        for r in rows
        if r["speaker"] == speaker and lo <= float(r["duration_s"]) <= hi
    ]


@pytest.fixture(scope="module")
def conversation(vad):
    """A woman and a man alternating (3 turns each, 0.6 s pauses): samples, VAD regions
    and who talks when (utterance spans)."""
    pause = np.zeros(int(0.6 * SAMPLE_RATE), np.float32)
    parts, truth, t = [pause], [], len(pause) / SAMPLE_RATE
    female, male = _utterances(FEMALE, 3.0, 9.0), _utterances(MALE, 3.0, 9.0)
    for f, m in zip(female[:3], male[:3], strict=True):
        for x, who in ((f, "F"), (m, "M")):
            truth.append((t, t + len(x) / SAMPLE_RATE, who))
            parts += [x, pause]
            t += (len(x) + len(pause)) / SAMPLE_RATE
    samples = np.concatenate(parts)
    return samples, vad.speech_regions(samples), truth


def _trimmed(vad, x: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``x`` from its first to its last speech, at a common level, and its speech regions."""
    regions = vad.speech_regions(x)
    a, b = round(regions[0].start * SAMPLE_RATE), round(regions[-1].end * SAMPLE_RATE)
    y = x[a:b]
    y = (y * (0.05 / np.sqrt(np.mean(y**2)))).astype(np.float32)
    return y, [(r.start - a / SAMPLE_RATE, r.end - a / SAMPLE_RATE) for r in regions]


def _active(turns: list[SpeakerTurn], times: np.ndarray) -> list[set[str]]:
    return [{u.speaker for u in turns if u.start <= t < u.end} for t in times]


def _with_settings(diarizer: Any, **update: object) -> Any:
    """The same diarizer (the same loaded models) with some settings changed."""
    other = copy.copy(diarizer)
    other.settings = diarizer.settings.model_copy(update=update)
    return other


def _speakers(turns: list[SpeakerTurn]) -> set[str]:
    return {t.speaker for t in turns}


def _agreement(truth: list[tuple[float, float, str]], turns: list[SpeakerTurn]) -> float:
    """Share of the frames where one reference and one found speaker talk on which they
    agree, under the best one-to-one mapping of found to reference speakers."""
    from scipy.optimize import linear_sum_assignment

    end = max(e for _, e, _ in truth)
    times = np.arange(0.0, end, STEP)
    pairs: Counter[tuple[str, str]] = Counter()
    for t, on in zip(times, _active(turns, times), strict=True):
        ref = [w for a, b, w in truth if a <= t < b]
        if len(ref) == 1 and len(on) == 1:
            pairs[ref[0], next(iter(on))] += 1
    refs = sorted({r for r, _ in pairs})
    hyps = sorted({h for _, h in pairs})
    table = np.array([[pairs[r, h] for h in hyps] for r in refs])
    rows, cols = linear_sum_assignment(-table)
    return float(table[rows, cols].sum() / table.sum())


def _check_turns(turns: list[SpeakerTurn], duration: float) -> None:
    """Sorted turns inside the recording, speakers named by first appearance."""
    assert turns == sorted(turns, key=lambda t: (t.start, t.end))
    assert all(0.0 <= t.start < t.end <= duration + 1e-6 for t in turns)
    names = list(dict.fromkeys(t.speaker for t in turns))
    assert names == [f"s{i}" for i in range(len(names))]


# -- the diarizer on real speech -----------------------------------------------------------


@slow
def test_is_a_diarizer_backend(diarizer) -> None:
    from ethostral_serve.pipeline.ports import DiarizerBackend

    assert isinstance(diarizer, DiarizerBackend)


@slow
def test_two_speaker_conversation(diarizer, conversation) -> None:
    samples, regions, truth = conversation
    turns = diarizer.diarize(samples, regions)
    _check_turns(turns, len(samples) / SAMPLE_RATE)
    assert len(_speakers(turns)) == 2
    assert _agreement(truth, turns) > 0.9
    # the turns cover most of the reference speech
    times = np.arange(0.0, len(samples) / SAMPLE_RATE, STEP)
    talking = [any(a <= t < b for a, b, _ in truth) for t in times]
    on = _active(turns, times)
    covered = np.mean([bool(o) for o, k in zip(on, talking, strict=True) if k])
    assert covered > 0.6  # utterance spans include their own leading/trailing silence
    # no speech is invented in the pauses between utterances
    silent = [o for o, k in zip(on, talking, strict=True) if not k]
    assert np.mean([bool(o) for o in silent]) < 0.2


@slow
def test_turns_do_not_depend_on_the_cores_used(diarizer, conversation) -> None:
    samples, regions, _ = conversation
    one = _with_settings(diarizer, cpu_workers=1).diarize(samples, regions)
    three = _with_settings(diarizer, cpu_workers=3).diarize(samples, regions)
    assert len(_speakers(one)) == 2
    assert three == one


@slow
def test_two_male_speakers_stay_two(diarizer, vad) -> None:
    from speech import two_speaker_conversation

    conv = two_speaker_conversation()
    turns = diarizer.diarize(conv.samples, vad.speech_regions(conv.samples))
    assert len(_speakers(turns)) == 2


@slow
def test_campplus_merges_the_voice_its_clustering_split(diarizer, vad) -> None:
    """Average linkage at CAM++'s threshold splits one of these two men; the merge of
    close centroids puts him back together (docs/benchmarks.md)."""
    from speech import two_speaker_conversation

    if diarizer.settings.speaker_encoder != "campplus":
        pytest.skip("resemblyzer merges no centroids")
    conv = two_speaker_conversation()
    regions = vad.speech_regions(conv.samples)
    unmerged = _with_settings(diarizer, merge_distance=0.0)
    assert len(_speakers(unmerged.diarize(conv.samples, regions))) == 3
    assert len(_speakers(diarizer.diarize(conv.samples, regions))) == 2


def _ami_minute(*names: str) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Consecutive pyannote-debug AMI excerpts of one meeting joined end to end, and
    their reference turns."""
    root = require_data("diarization", "pyannote-debug")
    samples, truth, offset = [], [], 0.0
    for name in names:
        x = decode_audio(root / f"{name}.wav").samples
        for rttm in root.glob("debug.*.rttm"):
            for line in rttm.read_text(encoding="utf-8").splitlines():
                f = line.split()
                if len(f) > 7 and f[1] == name:
                    start = offset + float(f[3])
                    truth.append((start, start + float(f[4]), f[7]))
        samples.append(x)
        offset += len(x) / SAMPLE_RATE
    return np.concatenate(samples), truth


def _lone_majority(truth: list[tuple[float, float, str]], turns: list[SpeakerTurn]) -> dict:
    """For each reference speaker, the found speaker on most of the time they talk alone."""
    times = np.arange(0.0, max(e for _, e, _ in truth), STEP)
    votes: dict[str, Counter[str]] = {}
    for t, on in zip(times, _active(turns, times), strict=True):
        ref = [w for a, b, w in truth if a <= t < b]
        if len(ref) == 1:
            votes.setdefault(ref[0], Counter()).update(on)
    return {who: c.most_common(1)[0][0] for who, c in votes.items() if c}


def _check_two_people_apart(
    turns: list[SpeakerTurn], samples: np.ndarray, truth: list[tuple[float, float, str]]
) -> None:
    """Well-formed turns of ``dev00+dev01`` in which its two people, where each talks
    alone, are mostly different speakers."""
    _check_turns(turns, len(samples) / SAMPLE_RATE)
    found = _lone_majority(truth, turns)
    assert found["MEE009"] != found["MEE012"]


@slow
def test_campplus_follows_a_change_of_voice_the_segmentation_missed(diarizer, vad) -> None:
    """In this two-person AMI minute the segmentation keeps one local speaker across the
    changes of voice; CAM++ sees them, and the two people become two speakers
    (docs/benchmarks.md)."""
    if diarizer.settings.speaker_encoder != "campplus":
        pytest.skip("changes of voice are calibrated for CAM++ only")
    samples, truth = _ami_minute("dev00", "dev01")
    regions = vad.speech_regions(samples)
    blind = _with_settings(diarizer, change_distance=0.0)
    merged = _lone_majority(truth, blind.diarize(samples, regions))
    assert merged["MEE009"] == merged["MEE012"]
    _check_two_people_apart(diarizer.diarize(samples, regions), samples, truth)


@slow
def test_a_requested_count_keeps_the_two_people_apart(diarizer, vad) -> None:
    """Asked for two speakers, this two-person AMI minute comes back as its two people.
    Its clustering also finds a stray cluster of noise, farthest from both voices:
    cutting further up the tree to meet the count would merge the people and keep the
    noise; the stray is dropped instead (docs/benchmarks.md)."""
    if diarizer.settings.speaker_encoder != "campplus":
        pytest.skip("changes of voice are calibrated for CAM++ only")
    samples, truth = _ami_minute("dev00", "dev01")
    turns = diarizer.diarize(samples, vad.speech_regions(samples), SpeakerCount(num=2))
    assert len(_speakers(turns)) == 2
    _check_two_people_apart(turns, samples, truth)


@slow
def test_a_stray_fragment_is_not_a_speaker_of_its_own(diarizer, vad) -> None:
    """Clustered alone, this two-person AMI minute has a third speaker: a noise the
    rebuilt turns give under a second of speech. A speaker needs 1.5 s of speech
    (``min_speaker_s``), so the minute comes back as its two people
    (docs/benchmarks.md)."""
    if diarizer.settings.speaker_encoder != "campplus":
        pytest.skip("the least speech of a speaker is calibrated for CAM++ only")
    samples, truth = _ami_minute("dev00", "dev01")
    regions = vad.speech_regions(samples)
    keep_all = _with_settings(diarizer, min_speaker_s=0.0)
    assert len(_speakers(keep_all.diarize(samples, regions))) == 3
    turns = diarizer.diarize(samples, regions)
    assert len(_speakers(turns)) == 2
    _check_two_people_apart(turns, samples, truth)


@slow
def test_overlapped_speech_belongs_to_both_speakers(diarizer, vad) -> None:
    """A woman talks alone for ~6.5 s, a man joins for her last 2 s, then goes on alone."""
    x, x_speech = _trimmed(vad, _utterances(FEMALE, 7.0, 9.5)[0])
    y, y_speech = _trimmed(vad, _utterances(MALE, 7.0, 9.5)[0])
    overlap = 2.0
    x0 = 0.5
    y0 = x0 + len(x) / SAMPLE_RATE - overlap
    mix = np.zeros(round((y0 + len(y) / SAMPLE_RATE + 0.5) * SAMPLE_RATE), np.float32)
    mix[round(x0 * SAMPLE_RATE) :][: len(x)] += x
    mix[round(y0 * SAMPLE_RATE) :][: len(y)] += y

    turns = diarizer.diarize(mix, vad.speech_regions(mix))
    _check_turns(turns, len(mix) / SAMPLE_RATE)
    assert len(_speakers(turns)) == 2

    times = np.arange(0.0, len(mix) / SAMPLE_RATE, STEP)
    xs = np.any([(x0 + a <= times) & (times < x0 + b) for a, b in x_speech], axis=0)
    ys = np.any([(y0 + a <= times) & (times < y0 + b) for a, b in y_speech], axis=0)
    both = xs & ys
    assert both.sum() * STEP > 1.5  # the mix really overlaps
    on = _active(turns, times)
    x_alone = Counter(s for i in np.flatnonzero(xs & ~ys) for s in on[i])
    y_alone = Counter(s for i in np.flatnonzero(ys & ~xs) for s in on[i])
    she, he = x_alone.most_common(1)[0][0], y_alone.most_common(1)[0][0]
    assert she != he
    # where both talk, both are on for most of the time
    assert np.mean([on[i] == {she, he} for i in np.flatnonzero(both)]) > 0.5
    # where one talks alone, only that one is on
    assert all(len(on[i]) <= 1 for i in np.flatnonzero(xs ^ ys))
    assert x_alone[she] / sum(x_alone.values()) > 0.9
    assert y_alone[he] / sum(y_alone.values()) > 0.9


@slow
def test_one_speaker_when_asked_for_one(diarizer, conversation) -> None:
    samples, regions, _ = conversation
    one = diarizer.diarize(samples, regions, SpeakerCount(num=1))
    assert _speakers(one) == {"s0"}
    # one speaker never overlaps itself
    for a, b in itertools.pairwise(one):
        assert a.end <= b.start


@slow
def test_at_least_three_speakers_when_asked(diarizer, conversation, monkeypatch) -> None:
    """Two voices, three asked for: the clustering cuts the tree where three clusters
    stand, which splits one voice. With resemblyzer (no centroid merge) the three stay;
    with CAM++ the split halves' centroids lie within the calibrated merge distance, so
    they become one voice again: a count never keeps one voice apart. A speaker who is
    never the likeliest voice of any frame gets no turn (as in pyannote), so the turns
    may name only the two true voices; each found speaker is still mostly one of them."""
    from ethostral_serve.pipeline import overlap_diarization

    made: list[int] = []
    cluster_points = overlap_diarization.cluster_points

    def spy(*args, **kwargs):
        centroids = cluster_points(*args, **kwargs)
        made.append(len(centroids))
        return centroids

    monkeypatch.setattr(overlap_diarization, "cluster_points", spy)
    samples, regions, truth = conversation
    three = diarizer.diarize(samples, regions, SpeakerCount(min=3))
    _check_turns(three, len(samples) / SAMPLE_RATE)
    assert made == ([3] if diarizer.options().merge_distance == 0 else [2])
    assert len(_speakers(three)) >= 2
    # the two true speakers are still told apart: each found speaker is mostly one of them
    mapped: Counter[tuple[str, str]] = Counter()
    times = np.arange(0.0, len(samples) / SAMPLE_RATE, STEP)
    for t, on in zip(times, _active(three, times), strict=True):
        ref = [w for a, b, w in truth if a <= t < b]
        if len(ref) == 1 and len(on) == 1:
            mapped[next(iter(on)), ref[0]] += 1
    for s in _speakers(three):
        f, m = mapped[s, "F"], mapped[s, "M"]
        assert max(f, m) / max(1, f + m) > 0.8, (s, f, m)


@slow
def test_short_one_speaker_clip(diarizer, vad) -> None:
    """Less than one segmentation window of one voice: one speaker."""
    x = _utterances(MALE, 2.0, 4.0)[0]
    turns = diarizer.diarize(x, vad.speech_regions(x))
    assert turns
    _check_turns(turns, len(x) / SAMPLE_RATE)
    assert _speakers(turns) == {"s0"}


@slow
def test_no_speech(diarizer) -> None:
    silence = np.zeros(6 * SAMPLE_RATE, np.float32)
    assert diarizer.diarize(silence, []) == []
    assert diarizer.diarize(np.zeros(0, np.float32), [Span(0.0, 1.0)]) == []
    # a VAD region where the segmentation hears nobody: nothing tells voices apart, so
    # the region is one speaker's (the words the ASR finds there still get a speaker)
    assert diarizer.diarize(silence, [Span(1.0, 4.0)]) == [SpeakerTurn(1.0, 4.0, "s0")]


def test_each_encoder_clusters_at_its_own_calibrated_distances(diarizer) -> None:
    from ethostral_serve.backends.diarization.embedded import CALIBRATED, OverlapAwareDiarizer

    calibrated = CALIBRATED[diarizer.settings.speaker_encoder]
    options = diarizer.options()
    distances = (options.threshold, options.same_voice, options.merge_distance)
    sizes = (options.min_speaker_s, options.min_cluster_share)
    assert (*distances, options.change_distance, *sizes) == calibrated
    # explicit settings win over the calibrated ones
    custom = OverlapAwareDiarizer.__new__(OverlapAwareDiarizer)
    update = {
        "cluster_threshold": 0.33,
        "merge_distance": 0.0,
        "change_distance": 0.5,
        "min_speaker_s": 4.0,
        "min_cluster_share": 0.2,
    }
    custom.settings = diarizer.settings.model_copy(update=update)
    mine = custom.options()
    distances = (mine.threshold, mine.same_voice, mine.merge_distance, mine.change_distance)
    sizes = (mine.min_speaker_s, mine.min_cluster_share)
    assert (*distances, *sizes) == (0.33, calibrated.same_voice, 0.0, 0.5, 4.0, 0.2)
    assert CALIBRATED["campplus"].threshold > CALIBRATED["resemblyzer"].threshold


@slow
def test_live_utterances_are_embedded_by_the_configured_encoder(diarizer) -> None:
    x = _utterances(MALE, 3.0, 9.0)[0]
    e = diarizer.embed_utterance(x)
    size = {"campplus": 192, "resemblyzer": 256}[diarizer.settings.speaker_encoder]
    assert e is not None and e.shape == (size,)
    assert diarizer.embed_utterance(x[:1000]) is None


# -- the bundled segmentation model --------------------------------------------------------


@slow
def test_segmentation_model_is_prepared_once() -> None:
    from ethostral_serve.backends.diarization.segmentation import (
        ensure_segmentation_model,
        fetch_checkpoint,
        model_dir,
    )
    from ethostral_serve.settings import Settings

    cache = Settings().cache_dir
    folder = ensure_segmentation_model(cache)
    assert folder == model_dir(cache)
    onnx = folder / "segmentation.onnx"
    assert onnx.is_file() and (folder / "spec.json").is_file()
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["format"] == EXPORT_FORMAT
    assert spec["checkpoint_sha256"] == CHECKPOINT_SHA256
    assert spec["speakers"] == 3
    assert spec["window_s"] == 5.0
    assert spec["frames"] == 293
    # a second call finds it ready and leaves it alone
    mtime = onnx.stat().st_mtime_ns
    assert ensure_segmentation_model(cache) == folder
    assert onnx.stat().st_mtime_ns == mtime

    checkpoint = fetch_checkpoint(cache)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == CHECKPOINT_SHA256

    model = SegmentationModel(folder)
    assert model.grid == FrameGrid(
        spec["frame_step_s"], spec["frame_duration_s"], spec["frames"], spec["window_s"]
    )
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.05, 12 * SAMPLE_RATE).astype(np.float32)
    starts = np.array([0.0, 4.0, 9.5])  # the last one runs past the end: zeros
    scores = model.scores(noise, starts)
    assert scores.shape == (3, 293, 3)
    assert scores.dtype == np.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    # windows are scored independently of the batch they are in
    np.testing.assert_allclose(model.scores(noise, starts[1:2])[0], scores[1], atol=1e-5)
    # split among threads, the windows come back in order with the same scores
    np.testing.assert_allclose(model.scores(noise, starts, workers=2), scores, atol=1e-5)
    assert model.scores(noise, starts[:0], workers=2).shape == (0, 293, 3)


# -- window placement (no model) -----------------------------------------------------------


def _windows_only() -> SegmentationModel:
    """A SegmentationModel with the real grid but no ONNX session: window_starts only
    reads the grid."""
    model = SegmentationModel.__new__(SegmentationModel)
    model.grid = FrameGrid(step_s=0.016875, duration_s=0.0619375, frames=293, window_s=5.0)
    return model


def test_window_starts_skip_silence_and_end_flush() -> None:
    model = _windows_only()
    n = 20 * SAMPLE_RATE
    assert model.window_starts(n, 1.0, []).tolist() == []
    # speech at 0.5-2 s: only windows starting before 2 s touch it
    assert model.window_starts(n, 1.0, [Span(0.5, 2.0)]).tolist() == [0.0, 1.0]
    # speech at 12.2-12.5 s: windows 8..12 (7-12 s ends before it)
    assert model.window_starts(n, 1.0, [Span(12.2, 12.5)]).tolist() == [8, 9, 10, 11, 12]
    # speech ending exactly where a window starts does not touch it
    assert model.window_starts(n, 1.0, [Span(4.0, 5.0)]).tolist() == [0, 1, 2, 3, 4]
    # everything: windows every second, the last one ending at the end
    every = model.window_starts(n, 1.0, [Span(0.0, 20.0)])
    assert every.tolist() == list(range(16))

    # 17.5 s: the regular grid stops at 12 s, a last window is added flush with the end
    n = round(17.5 * SAMPLE_RATE)
    flush = model.window_starts(n, 1.0, [Span(0.0, 17.5)])
    assert flush[-1] + model.grid.window_s == pytest.approx(17.5)
    assert flush.tolist() == [*range(13), 12.5]
    assert model.window_starts(n, 1.0, [Span(16.0, 17.4)]).tolist() == [12.0, 12.5]
    # a finer hop that lands on the end adds nothing
    quarter = model.window_starts(6 * SAMPLE_RATE, 0.25, [Span(0.0, 6.0)])
    assert quarter.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]

    # shorter than one window: a single window at 0
    assert model.window_starts(3 * SAMPLE_RATE, 1.0, [Span(0.2, 2.8)]).tolist() == [0.0]
