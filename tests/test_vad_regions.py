"""Offline VAD without torch: our speech regions and probabilities against silero-vad's own."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import REPO, require_data
from silero_reference import import_silero_vad
from speech import meeting_minute, two_speaker_conversation

from benchmarks.vad_recall import non_speech
from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.backends.vad.silero import RESTART_WARMUP_S, SileroVad
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.vad_regions import negative_threshold, speech_regions_from_probs
from ethostral_serve.settings import VadSettings

F = 512  # samples per frame


def _regions(probs: list[float], n: int | None = None, **rules: float) -> list[tuple[int, int]]:
    rules = {"speech_pad_ms": 0, **rules}
    return speech_regions_from_probs(probs, len(probs) * F if n is None else n, **rules)


def _frames(*runs: tuple[float, int]) -> list[float]:
    """Probabilities from ``(value, frame count)`` runs."""
    return [value for value, count in runs for _ in range(count)]


# --- the pure rules, on hand-made probabilities -------------------------------------------


def test_empty_and_all_silence_have_no_speech() -> None:
    assert _regions([]) == []
    assert speech_regions_from_probs(np.zeros(0, np.float32), 0) == []
    assert _regions(_frames((0.1, 200))) == []
    # Between the two thresholds never opens a region.
    assert _regions(_frames((0.1, 10), (0.45, 100), (0.1, 10))) == []


def test_negative_threshold() -> None:
    assert negative_threshold(0.5) == pytest.approx(0.35)
    assert negative_threshold(0.1) == 0.01


def test_hysteresis_keeps_a_region_open_between_the_thresholds() -> None:
    probs = _frames((0.1, 5), (0.9, 20), (0.4, 30), (0.1, 20))
    assert _regions(probs) == [(5 * F, 55 * F)]  # ends where it falls below 0.35
    # With threshold 0.1 silence is below 0.01: 0.05 keeps the region open.
    probs = _frames((0.0, 5), (0.3, 20), (0.05, 30), (0.0, 20))
    assert _regions(probs, threshold=0.1) == [(5 * F, 55 * F)]


def test_probabilities_compare_in_their_own_precision() -> None:
    """float32(0.35) is not below 0.5 - 0.15 in float32: the region stays open."""
    probs = np.array(_frames((0.9, 20), (0.35, 30), (0.0, 20)), np.float32)
    assert speech_regions_from_probs(probs, probs.size * F, speech_pad_ms=0) == [(0, 50 * F)]
    as_float64 = [float(p) for p in probs]  # 0.3499999940... < 0.35000000000000003
    assert speech_regions_from_probs(as_float64, probs.size * F, speech_pad_ms=0) == [(0, 20 * F)]


def test_a_recording_with_no_speech_at_the_threshold_gets_its_fallback_regions() -> None:
    quiet = _frames((0.0, 5), (0.3, 20), (0.05, 30), (0.0, 20))
    assert _regions(quiet) == []
    assert _regions(quiet, fallback_threshold=0.15) == [(5 * F, 55 * F)]
    assert _regions(quiet, fallback_threshold=0.6) == []  # not lower: not used
    # One region at the threshold: a quieter stretch elsewhere is not added.
    mixed = _frames((0.9, 20), (0.0, 30), (0.3, 20), (0.0, 20))
    assert _regions(mixed, fallback_threshold=0.15) == [(0, 20 * F)]


def test_short_speech_is_dropped() -> None:
    # 250 ms = 4000 samples: 7 frames (3584) are dropped, 8 frames (4096) kept.
    assert _regions(_frames((0.1, 5), (0.9, 7), (0.1, 30))) == []
    assert _regions(_frames((0.1, 5), (0.9, 8), (0.1, 30))) == [(5 * F, 13 * F)]
    assert _regions(_frames((0.1, 5), (0.9, 7), (0.1, 30)), min_speech_ms=0) == [(5 * F, 12 * F)]


def test_short_silence_is_bridged() -> None:
    # 300 ms = 4800 samples: a region ends on the 11th quiet frame (10 * 512 >= 4800).
    bridged = _frames((0.9, 20), (0.1, 10), (0.9, 20), (0.1, 20))
    assert _regions(bridged) == [(0, 50 * F)]
    split = _frames((0.9, 20), (0.1, 11), (0.9, 20), (0.1, 20))
    assert _regions(split) == [(0, 20 * F), (31 * F, 51 * F)]
    # Longer silences needed: the trailing 20 quiet frames do not end it either.
    assert _regions(split, min_silence_ms=1000) == [(0, len(split) * F)]


def test_padding_is_clamped_and_close_neighbours_split_the_gap() -> None:
    probs = _frames((0.1, 2), (0.9, 20), (0.1, 12), (0.9, 20), (0.1, 40), (0.9, 20), (0.1, 2))
    n = len(probs) * F
    raw = _regions(probs)
    assert raw == [(2 * F, 22 * F), (34 * F, 54 * F), (94 * F, n)]
    pad = 200 * 16  # 200 ms
    padded = _regions(probs, speech_pad_ms=200)
    gap = 12 * F  # 384 ms < two pads: each side takes half
    assert padded == [
        (0, 22 * F + gap // 2),  # clamped at the start of the recording
        (34 * F - gap // 2, 54 * F + pad),
        (94 * F - pad, n),  # clamped at its end
    ]
    assert padded[0][1] == padded[1][0]


def test_speech_running_to_the_end_ends_with_the_recording() -> None:
    probs = _frames((0.1, 10), (0.9, 30))
    n = len(probs) * F - 100  # the last frame is partial
    assert _regions(probs, n=n) == [(10 * F, n)]
    assert _regions(probs, n=n, speech_pad_ms=30) == [(10 * F - 480, n)]
    # Too short a tail is dropped: 8 frames less the partial frame's 100 samples.
    tail = _frames((0.1, 10), (0.9, 8))
    assert _regions(tail, n=len(tail) * F - 100) == []


def test_a_long_region_is_cut_at_its_longest_pause() -> None:
    # 2 s regions, unpadded: a region may grow to 32000 - 512 samples (61.5 frames).
    probs = _frames(
        (0.9, 10), (0.1, 5), (0.9, 10), (0.1, 8), (0.9, 10), (0.1, 4), (0.9, 23), (0.1, 30)
    )
    regions = _regions(probs, max_speech_s=2.0)
    # At frame 62 the longest pause (frames 25-32) becomes the cut: the region ends where
    # that pause began and the rest, from where it ended, goes on as a new region.
    assert regions == [(0, 25 * F), (33 * F, 70 * F)]
    # Without a length limit the whole run is one region.
    assert _regions(probs) == [(0, 70 * F)]


def test_of_equally_long_pauses_the_first_is_the_cut() -> None:
    probs = _frames((0.9, 10), (0.1, 5), (0.9, 10), (0.1, 5), (0.9, 30), (0.1, 30))
    # The limit is reached at frame 62, inside the final pause (from frame 60): the
    # cut forgets that pause, which then counts from frame 62 and ends the new region there.
    assert _regions(probs, max_speech_s=2.0) == [(0, 10 * F), (15 * F, 62 * F)]


def test_a_long_region_without_a_long_pause_is_cut_where_it_is() -> None:
    probs = _frames((0.9, 150), (0.1, 30))
    # Cut at frame 62, which is skipped; the next region opens on frame 63.
    assert _regions(probs, max_speech_s=2.0) == [(0, 62 * F), (63 * F, 125 * F), (126 * F, 150 * F)]
    # Pauses of 98 ms or less (3 frames = 96 ms) are no place to cut.
    probs = _frames((0.9, 20), (0.1, 3), (0.9, 60), (0.1, 30))
    assert _regions(probs, max_speech_s=2.0)[0] == (0, 62 * F)
    probs = _frames((0.9, 20), (0.1, 4), (0.9, 60), (0.1, 30))
    assert _regions(probs, max_speech_s=2.0)[0] == (0, 20 * F)


RULES = [
    {},
    {"threshold": 0.3, "min_silence_ms": 100, "speech_pad_ms": 30},
    {"min_speech_ms": 0, "min_silence_ms": 0, "speech_pad_ms": 0},
    {"max_speech_s": 2.0, "speech_pad_ms": 100},
    {"max_speech_s": 1.5, "min_silence_ms": 600, "threshold": 0.6, "speech_pad_ms": 400},
]


@pytest.mark.parametrize("rules", RULES)
def test_the_same_regions_as_silero_on_random_probabilities(rules: dict[str, float]) -> None:
    reference = import_silero_vad().get_speech_timestamps_from_probs
    rng = np.random.default_rng(7)
    for trial in range(150):
        # Runs of speech, silence and in-between values, like a real recording's.
        runs = [
            (rng.choice([0.02, 0.2, 0.4, 0.55, 0.95]), int(rng.integers(1, 40)))
            for _ in range(int(rng.integers(0, 30)))
        ]
        probs = np.array(_frames(*runs), np.float32)
        probs += rng.normal(0, 0.05, probs.size).astype(np.float32)
        n = max(0, probs.size * F - int(rng.integers(0, F)))
        ours = speech_regions_from_probs(probs, n, **{"speech_pad_ms": 200, **rules})
        theirs = reference(
            probs,
            audio_length_samples=n,
            threshold=rules.get("threshold", 0.5),
            min_speech_duration_ms=rules.get("min_speech_ms", 250),
            min_silence_duration_ms=rules.get("min_silence_ms", 300),
            speech_pad_ms=rules.get("speech_pad_ms", 200),
            max_speech_duration_s=rules.get("max_speech_s", float("inf")),
        )
        assert ours == [(r["start"], r["end"]) for r in theirs], f"trial {trial}"


# --- the model on real recordings ---------------------------------------------------------


def _continuous_speech(reference_model) -> np.ndarray:
    """About 75 s of LibriSpeech speech without a pause as long as ``min_silence_ms``: the
    utterances' speech (found by silero-vad, unpadded) back to back."""
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    speech_of = import_silero_vad().get_speech_timestamps_sequence
    parts: list[np.ndarray] = []
    for r in rows:
        x = decode_audio(root / r["path"]).samples
        parts += [
            x[st["start"] : st["end"]] for st in speech_of(x, reference_model, speech_pad_ms=0)
        ]
        if sum(p.size for p in parts) > 75 * SAMPLE_RATE:
            break
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def recordings(reference_model) -> dict[str, np.ndarray]:
    return {
        "jfk": decode_audio(require_data("asr", "jfk") / "jfk.flac").samples,
        "conversation": two_speaker_conversation().samples,
        "meeting": meeting_minute()[0],
        "continuous": _continuous_speech(reference_model),
    }


@pytest.fixture(scope="module")
def reference_model():
    return import_silero_vad().load_silero_vad(onnx=True, sequence=True)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad(VadSettings())


@pytest.fixture(scope="module")
def carried() -> SileroVad:
    """Silero's state carried through the whole recording only, as silero-vad runs it."""
    return SileroVad(VadSettings(restart_s=0))


def _reference_regions(model, samples: np.ndarray, s: VadSettings) -> list[tuple[int, int]]:
    stamps = import_silero_vad().get_speech_timestamps_sequence(
        samples,
        model,
        threshold=s.threshold,
        sampling_rate=SAMPLE_RATE,
        min_speech_duration_ms=s.min_speech_ms,
        min_silence_duration_ms=s.min_silence_ms,
        speech_pad_ms=s.speech_pad_ms,
        max_speech_duration_s=s.max_chunk_s,
    )
    return [(st["start"], st["end"]) for st in stamps]


# Strong-intensity angry RAVDESS clips in which Silero's speech probability never
# reaches 0.5 (peaks 0.35 and 0.44), of actors 06 and 18.
SHOUTED = ("Actor_06/03-01-05-02-02-01-06.flac", "Actor_18/03-01-05-02-02-01-18.flac")


@pytest.mark.slow
def test_shouted_speech_that_silero_scores_low_still_gets_a_region(vad) -> None:
    root = require_data("emotion", "ravdess", "audio")
    strict = SileroVad(VadSettings(fallback_threshold=0.5))  # off
    for name in SHOUTED:
        samples = decode_audio(root / name).samples
        assert vad.speech_probabilities(samples).max() < 0.5, name
        assert strict.speech_regions(samples) == [], name
        (span,) = vad.speech_regions(samples)
        assert span.end - span.start > 2.0, name  # the sentence: 3.2 s and 2.4 s


@pytest.mark.slow
def test_at_the_fallback_only_a_tune_over_drums_of_the_non_speech_sounds_gets_a_region(
    vad,
) -> None:
    sounds = non_speech()
    # A synthetic tune over drums reaches Silero's 0.15 for 0.7 s; nothing else does.
    assert [name for name, x in sounds.items() if vad.speech_regions(x)] == ["tune and drums"]
    strict = SileroVad(VadSettings(fallback_threshold=0.5))
    assert [name for name, x in sounds.items() if strict.speech_regions(x)] == []


@pytest.mark.slow
def test_probabilities_match_silero(carried, reference_model, recordings) -> None:
    for name, samples in recordings.items():
        ours = carried.speech_probabilities(samples)
        theirs = reference_model.audio_forward(samples)
        assert ours.shape == theirs.shape == (-(-samples.size // F),), name
        np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=name)
        assert ours.max() > 0.9 and ours.min() < 0.1, name


@pytest.mark.slow
@pytest.mark.parametrize("cores", [1, 2])  # the two readings one after another / side by side
def test_each_frame_takes_the_larger_of_the_carried_and_a_restarted_silero_state(
    reference_model, recordings, cores, monkeypatch
) -> None:
    from ethostral_serve.backends.vad import silero

    monkeypatch.setattr(silero, "default_cpu_threads", lambda: cores)
    restart_s = 8.0
    vad = SileroVad(VadSettings(restart_s=restart_s))
    every, warmup = round(restart_s * SAMPLE_RATE / F), round(RESTART_WARMUP_S * SAMPLE_RATE / F)
    for name in ("meeting", "continuous"):
        samples = recordings[name]
        n_frames = -(-samples.size // F)
        fresh = []
        for first in range(0, n_frames, every):
            begin, end = max(first - warmup, 0), min(first + every, n_frames)
            # silero-vad's own model, reset at ``begin`` and run to ``end``
            fresh.append(
                reference_model.audio_forward(samples[begin * F : end * F])[first - begin :]
            )
        carried = reference_model.audio_forward(samples)
        want = np.maximum(carried, np.concatenate(fresh))
        ours = vad.speech_probabilities(samples)
        np.testing.assert_allclose(ours, want, atol=1e-6, err_msg=name)
        assert (ours > carried + 0.1).any(), name  # the restarts do change some frames


@pytest.mark.slow
def test_a_recording_no_longer_than_restart_s_is_read_once(carried, recordings) -> None:
    samples = recordings["jfk"][: 8 * SAMPLE_RATE]
    np.testing.assert_array_equal(
        SileroVad(VadSettings(restart_s=8.0)).speech_probabilities(samples),
        carried.speech_probabilities(samples),
    )


def test_restart_s_is_off_or_at_least_two_seconds(monkeypatch) -> None:
    from pydantic import ValidationError

    from ethostral_serve.settings import Settings

    assert VadSettings().restart_s == 8.0
    assert VadSettings(restart_s=0).restart_s == 0.0
    for bad in (0.5, -1.0):
        with pytest.raises(ValidationError, match="restart_s"):
            VadSettings(restart_s=bad)
    monkeypatch.setenv("ETHOSTRAL_VAD__RESTART_S", "0")
    assert Settings().vad.restart_s == 0.0


def _ami(name: str) -> np.ndarray:
    return decode_audio(require_data("diarization", "pyannote-debug") / f"{name}.wav").samples


@pytest.mark.slow
def test_a_quiet_voice_after_a_loud_passage_is_found_again_by_the_restarts(vad, carried) -> None:
    """Two excerpts of one AMI meeting back to back: after ``trn07``, the state Silero
    carries scores the first 14 s of ``trn08`` as silence, which ``trn08`` alone is not."""
    first, second = _ami("trn07"), _ami("trn08")
    joined = np.concatenate([first, second])
    start = -(-first.size // F)
    span = slice(start, start + round(14 * SAMPLE_RATE / F))
    alone = int((carried.speech_probabilities(second)[: span.stop - start] >= 0.5).sum())
    drifted = int((carried.speech_probabilities(joined)[span] >= 0.5).sum())
    restarted = int((vad.speech_probabilities(joined)[span] >= 0.5).sum())
    assert alone > 80 and drifted < 5  # frames of 32 ms: 102 and 1 when measured
    assert restarted >= 0.9 * alone

    def speech_in_span(spans) -> float:
        lo, hi = first.size / SAMPLE_RATE, first.size / SAMPLE_RATE + 14
        return sum(max(0.0, min(s.end, hi) - max(s.start, lo)) for s in spans)

    assert speech_in_span(carried.speech_regions(joined)) < 1.0
    assert speech_in_span(vad.speech_regions(joined)) > 3.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        VadSettings(restart_s=0),
        VadSettings(
            threshold=0.3, min_speech_ms=100, min_silence_ms=100, speech_pad_ms=30, restart_s=0
        ),
        VadSettings(
            threshold=0.6, min_silence_ms=500, speech_pad_ms=400, max_chunk_s=8.0, restart_s=0
        ),
    ],
    ids=["defaults", "eager", "short-chunks"],
)
def test_regions_match_silero_on_real_speech(reference_model, recordings, settings) -> None:
    vad = SileroVad(settings)
    for name, samples in recordings.items():
        want = _reference_regions(reference_model, samples, settings)
        assert want, name
        spans = vad.speech_regions(samples)
        assert [(round(s.start * SAMPLE_RATE), round(s.end * SAMPLE_RATE)) for s in spans] == want
        probs = vad.speech_probabilities(samples)
        assert (
            speech_regions_from_probs(
                probs,
                samples.size,
                threshold=settings.threshold,
                min_speech_ms=settings.min_speech_ms,
                min_silence_ms=settings.min_silence_ms,
                speech_pad_ms=settings.speech_pad_ms,
                max_speech_s=settings.max_chunk_s,
            )
            == want
        ), name


@pytest.mark.slow
def test_continuous_speech_is_cut_to_the_chunk_length(vad, recordings) -> None:
    """The long recording really exercises the length limit (and matches silero above)."""
    samples = recordings["continuous"]
    s = vad.settings
    uncut = speech_regions_from_probs(
        vad.speech_probabilities(samples),
        samples.size,
        threshold=s.threshold,
        min_speech_ms=s.min_speech_ms,
        min_silence_ms=s.min_silence_ms,
        speech_pad_ms=s.speech_pad_ms,
    )
    assert max(end - start for start, end in uncut) > s.max_chunk_s * SAMPLE_RATE
    spans = vad.speech_regions(samples)
    assert len(spans) > len(uncut)
    assert all(span.end - span.start <= s.max_chunk_s for span in spans)


@pytest.mark.slow
def test_concurrent_recordings_get_their_own_regions(vad, recordings) -> None:
    names = ["conversation", "meeting", "continuous"]
    alone = {name: vad.speech_regions(recordings[name]) for name in names}
    start = threading.Barrier(len(names))
    together: dict[str, list] = {}

    def run(name: str) -> None:
        start.wait()
        together[name] = vad.speech_regions(recordings[name])

    threads = [threading.Thread(target=run, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone


def test_empty_samples_have_no_regions(vad) -> None:
    assert vad.speech_regions(np.zeros(0, np.float32)) == []
    assert vad.speech_probabilities(np.zeros(0, np.float32)).size == 0


def test_a_missing_model_file_is_a_load_error(monkeypatch) -> None:
    from ethostral_serve.backends.vad import silero

    with pytest.raises(ModelLoadError, match=r"no-such-model\.onnx not found"):
        silero.silero_model_path("no-such-model.onnx")
    monkeypatch.setattr(silero, "SEQUENCE_MODEL", "gone.onnx")
    with pytest.raises(ModelLoadError, match=r"gone\.onnx not found.*reinstall silero-vad"):
        silero.SileroVad(VadSettings())


def test_a_missing_package_is_a_load_error(monkeypatch) -> None:
    import importlib.util

    from ethostral_serve.backends.vad import silero

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install silero-vad"):
        silero.SileroVad(VadSettings())


def test_a_broken_model_file_is_a_load_error(tmp_path) -> None:
    from ethostral_serve.backends.onnx_session import cpu_onnx_session
    from ethostral_serve.backends.vad.silero import SILERO

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="could not load Silero VAD"):
        cpu_onnx_session(broken, SILERO)


@pytest.mark.slow
def test_the_vads_never_import_torch_or_silero_vad() -> None:
    jfk = require_data("asr", "jfk") / "jfk.flac"
    script = f"""
import json, sys
import numpy as np
from ethostral_serve.audio import decode_audio
from ethostral_serve.backends.vad.silero import SileroVad
from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad, VadStreamState
from ethostral_serve.settings import VadSettings

samples = decode_audio({str(jfk)!r}).samples
regions = SileroVad(VadSettings()).speech_regions(samples)
[(probs, _)] = SileroStreamingVad().step([(samples, VadStreamState())])
print(json.dumps({{
    "regions": len(regions),
    "max_prob": float(np.max(probs)),
    "torch": "torch" in sys.modules,
    "silero_vad": "silero_vad" in sys.modules,
}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["regions"] > 0 and result["max_prob"] > 0.9
    assert result["torch"] is False
    assert result["silero_vad"] is False
