"""The diarization benchmark's scoring helpers, on hand-made references."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.diarization import SAMPLE_RATE, Case, exclusive_oracle, far_field, score


def _case(reference: list[tuple[float, float, str]], duration: float = 20.0) -> Case:
    return Case("test", "synthetic", np.zeros(int(duration * SAMPLE_RATE)), reference)


def test_exclusive_oracle_without_overlap_is_the_reference() -> None:
    case = _case([(1.0, 4.0, "A"), (5.0, 9.0, "B"), (10.0, 12.0, "A")])
    turns = exclusive_oracle(case)
    assert [t[2] for t in turns] == ["A", "B", "A"]
    assert [(round(s, 2), round(e, 2)) for s, e, _ in turns] == [(1, 4), (5, 9), (10, 12)]
    assert score(case, turns).cells()[0] == "0.0"


def test_exclusive_oracle_misses_exactly_the_overlap() -> None:
    # B talks over A from 4 s to 6 s.
    case = _case([(0.0, 6.0, "A"), (4.0, 10.0, "B")])
    turns = exclusive_oracle(case)
    assert [(round(s, 2), round(e, 2), k) for s, e, k in turns] == [(0, 4, "A"), (4, 10, "B")]
    result = score(case, turns)
    # pyannote.metrics' 0.25 s collar removes ±0.125 s around each reference boundary
    # (0, 4, 6 and 10 s) from scoring: 12 s of speech less 1 s of A and B in those
    # windows is 11 s; the overlap less A's collared ends (4-4.125, 5.875-6) is 1.75 s.
    assert result.total == pytest.approx(11.0)
    assert result.missed == pytest.approx(1.75)
    assert result.false_alarm == pytest.approx(0.0)
    assert result.confusion == pytest.approx(0.0)


def test_far_field_copy_keeps_the_reference_and_changes_each_voice() -> None:
    rng = np.random.default_rng(0)
    samples = (0.1 * rng.normal(size=6 * SAMPLE_RATE)).astype(np.float32)
    case = Case("librispeech-2spk", "ls2spk-x", samples, [(0.5, 2.5, "A"), (3.0, 5.5, "B")])
    heard = far_field(case, seed=3)
    assert (heard.group, heard.uri) == ("far-field-2spk", "ff-ls2spk-x")
    assert heard.reference == case.reference and heard.samples.dtype == np.float32
    assert len(heard.samples) == len(case.samples)
    assert float(np.abs(heard.samples).max()) <= 1.0

    def rms(x: np.ndarray, start: float, end: float) -> float:
        part = x[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)].astype(np.float64)
        return float(np.sqrt(np.mean(part**2)))

    # the two voices now sit at different levels, and the pause holds room noise and
    # the first voice's reverberant tail rather than digital silence
    assert abs(np.log10(rms(heard.samples, 0.6, 2.4) / rms(heard.samples, 3.1, 5.4))) > 0.05
    assert rms(heard.samples, 2.6, 2.9) > 0
    np.testing.assert_array_equal(far_field(case, seed=3).samples, heard.samples)
    assert not np.array_equal(far_field(case, seed=4).samples, heard.samples)


def test_meeting_scores_a_sessions_segments_by_their_file_id(tmp_path) -> None:
    """The meeting benchmark reads a Session's segments in seconds and finds each file's
    reference by its stem, or the one file id an RTTM holds."""
    from benchmarks.diarization import read_rttm, reference_for
    from benchmarks.meeting import session_turns

    rttm = tmp_path / "ref.rttm"
    rttm.write_text(
        "SPEAKER ES2004a 1 0.500 2.000 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER ES2004a 1 2.250 1.000 <NA> <NA> B <NA> <NA>\n"
        "SPEAKER IS1009a 1 1.000 1.000 <NA> <NA> C <NA> <NA>\n",
        encoding="utf-8",
    )
    refs = read_rttm(rttm)
    assert reference_for(tmp_path / "ES2004a.wav", refs) == (
        "ES2004a",
        [(0.5, 2.5, "A"), (2.25, 3.25, "B")],
    )
    assert reference_for(tmp_path / "other.wav", refs) is None
    only = {"ES2004a": refs["ES2004a"]}
    assert reference_for(tmp_path / "minute.wav", only) == ("ES2004a", refs["ES2004a"])
    session = {
        "segments": [
            {"speaker": "s0", "start_ms": 480, "end_ms": 2510, "text": "hello"},
            {"speaker": "s1", "start_ms": 2510, "end_ms": 3250, "text": "hi"},
        ]
    }
    hyp = session_turns(session)
    assert hyp == [(0.48, 2.51, "s0"), (2.51, 3.25, "s1")]
    result = score(_case(refs["ES2004a"], 5.0), hyp)
    # only B's overlap with A (2.25-2.5 s, inside the collar) could be missed
    assert result.confusion == pytest.approx(0.0) and result.false_alarm == pytest.approx(0.0)
    with pytest.raises(ValueError, match="segments"):
        session_turns({"detail": "not found"})


def test_emotion_conversation_votes_by_time_inside_each_clip(tmp_path) -> None:
    """``benchmarks.emotion --conversation``: clips joined with a gap, each clip's span in
    the recording, and a clip's label the one covering most of its span."""
    import io

    import soundfile as sf

    from benchmarks.emotion import GAP_S, joined, votes_over
    from ethostral_serve.schema import EMOTION_LABELS, Emotion, Segment

    paths = []
    for k, seconds in enumerate((1.0, 2.5)):
        paths.append(tmp_path / f"{k}.wav")
        sf.write(paths[-1], np.full(int(seconds * SAMPLE_RATE), 0.1, np.float32), SAMPLE_RATE)
    wav, spans = joined(paths)
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == SAMPLE_RATE and len(audio) == int((1.0 + 2.5 + 2 * GAP_S) * SAMPLE_RATE)
    assert spans == [(0.0, 1000.0), (2500.0, 5000.0)]
    assert np.all(audio[SAMPLE_RATE : int(2.5 * SAMPLE_RATE)] == 0)  # the gap is silence

    def segment(start: int, end: int, label: str | None) -> Segment:
        emotion = None
        if label is not None:
            emotion = Emotion(label=label, valence=0, arousal=0, dominance=0, confidence=0.5)
        return Segment(speaker="s0", start_ms=start, end_ms=end, text="x", emotion=emotion)

    segments = [
        segment(0, 900, "Sad"),
        segment(900, 2600, "Angry"),  # 100 ms in the first clip, 100 ms in the second
        segment(2600, 3500, "Happy"),
        segment(3500, 5000, None),  # emotion off: no vote
    ]
    first = votes_over(segments, *spans[0])
    second = votes_over(segments, *spans[1])
    assert first[EMOTION_LABELS.index("Sad")] == 900 and first[EMOTION_LABELS.index("Angry")] == 100
    assert EMOTION_LABELS[int(np.argmax(second))] == "Happy" and second.sum() == 1000
    assert not votes_over(segments, 6000, 7000).any()  # nothing there: no vote


def test_emotion_segments_are_scored_against_the_clip_they_overlap_most() -> None:
    """``benchmarks.emotion``'s calibration figure: each segment with an emotion is right
    when its label is that of the clip it overlaps most; segments with no emotion or
    outside every clip are left out."""
    from benchmarks.emotion import segment_outcomes
    from ethostral_serve.schema import EMOTION_LABELS, Emotion, Segment

    def segment(start: int, end: int, label: str | None, confidence: float) -> Segment:
        emotion = None
        if label is not None:
            emotion = Emotion(label=label, valence=0, arousal=0, dominance=0, confidence=confidence)
        return Segment(speaker="s0", start_ms=start, end_ms=end, text="x", emotion=emotion)

    spans = [(0.0, 1000.0), (2500.0, 5000.0)]
    labels = [EMOTION_LABELS.index("Sad"), EMOTION_LABELS.index("Happy")]
    segments = [
        segment(0, 900, "Sad", 0.9),  # inside the first clip: right
        segment(900, 2800, "Happy", 0.6),  # 100 ms in the first, 300 ms in the second: right
        segment(2800, 4000, "Angry", 0.7),  # in the second clip: wrong
        segment(4000, 5000, None, 0.0),  # emotion off: left out
        segment(6000, 7000, "Sad", 0.8),  # outside every clip: left out
    ]
    assert segment_outcomes(segments, spans, labels) == [(0.9, True), (0.6, True), (0.7, False)]
    assert segment_outcomes([], spans, labels) == []


def test_recordings_of_your_own_become_cases_with_their_reference(tmp_path) -> None:
    """``benchmarks.diarization --files``: each file gets the RTTM turns and UEM of the
    file id named like it; a file with no reference is refused, not scored as silence."""
    import soundfile as sf

    from benchmarks.diarization import file_cases

    wav = tmp_path / "minute.wav"
    sf.write(wav, np.full(2 * SAMPLE_RATE, 0.1, np.float32), SAMPLE_RATE, subtype="PCM_16")
    rttm = tmp_path / "refs.rttm"
    rttm.write_text(
        "SPEAKER minute 1 0.50 1.00 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER minute 1 1.20 0.60 <NA> <NA> B <NA> <NA>\n"
        "SPEAKER other 1 0.00 1.00 <NA> <NA> C <NA> <NA>\n",
        encoding="utf-8",
    )
    uem = tmp_path / "refs.uem"
    uem.write_text("minute 1 0.000 2.000\nother 1 0.000 1.000\n", encoding="utf-8")
    (case,) = file_cases([wav], [rttm], [uem])
    assert (case.group, case.uri, case.speakers, case.uem) == ("files", "minute", 2, (0.0, 2.0))
    assert case.reference == [(0.5, 1.5, "A"), (1.2, pytest.approx(1.8), "B")]
    assert case.duration == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no reference"):
        file_cases([tmp_path / "elsewhere.wav"], [rttm])
