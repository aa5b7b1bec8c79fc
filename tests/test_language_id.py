"""A file's language: the vote over its first windows, the draft check of an unsure vote,
and the embedded Whisper deciding on real audio where its first window misleads it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_data
from speech import two_speaker_conversation

from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.pipeline.language_id import (
    DraftCheck,
    LanguageVote,
    checked_language,
    checked_windows,
    compression_ratio,
    recognised_check,
    top_languages,
)
from ethostral_serve.pipeline.types import Chunk, Span


def test_top_languages_sorts_and_keeps_the_most_probable() -> None:
    ranked = [("la", 0.1), ("en", 0.6), ("cy", 0.2), ("de", 0.05), ("fr", 0.03), ("it", 0.02)]
    assert top_languages(ranked, size=3) == (("en", 0.6), ("cy", 0.2), ("la", 0.1))
    assert len(top_languages(ranked)) == 5


def test_the_vote_weights_each_window_by_its_seconds() -> None:
    vote = LanguageVote(most_windows=3)
    vote.add((("cy", 0.8), ("en", 0.2)), seconds=5.0)  # a short window heard as Welsh
    vote.add((("en", 0.6), ("cy", 0.3)), seconds=25.0)
    code, p = vote.leader() or ("", 0.0)
    assert code == "en" and p == pytest.approx((0.2 * 5 + 0.6 * 25) / 30)
    assert vote.probability("cy") == pytest.approx((0.8 * 5 + 0.3 * 25) / 30)
    assert vote.probability("de") == 0.0
    assert vote.candidates() == ["en", "cy"] and not vote.full


def test_the_vote_counts_only_its_first_windows_with_a_ranking() -> None:
    vote = LanguageVote(most_windows=2)
    vote.add((), seconds=10.0)  # too short to identify: not counted
    assert vote.leader() is None and not vote.full and not vote.unsure
    vote.add((("cy", 0.9),), seconds=10.0)
    vote.add((("cy", 0.9),), seconds=10.0)
    assert vote.full and vote.windows == 2
    vote.add((("en", 1.0),), seconds=100.0)  # past the vote: ignored
    assert vote.leader() == ("cy", pytest.approx(0.9))


def test_one_window_is_whispers_own_rule_and_a_tie_goes_to_the_first_heard() -> None:
    vote = LanguageVote(most_windows=1)
    vote.add((("la", 0.33), ("en", 0.16)), seconds=27.0)
    vote.add((("en", 0.9),), seconds=27.0)
    assert vote.leader() == ("la", pytest.approx(0.33))
    tie = LanguageVote()
    tie.add((("de", 0.5), ("en", 0.5)), seconds=1.0)
    assert tie.leader() == ("de", 0.5)
    with pytest.raises(ValueError, match="at least one window"):
        LanguageVote(most_windows=0)


def test_a_vote_is_unsure_below_its_sure_share_and_with_a_rival() -> None:
    sure = LanguageVote(sure=0.75)
    sure.add((("en", 0.9), ("cy", 0.1)), seconds=10.0)
    assert not sure.unsure
    unsure = LanguageVote(sure=0.75)
    unsure.add((("cy", 0.55), ("en", 0.43)), seconds=17.0)
    assert unsure.unsure
    alone = LanguageVote(sure=0.75)
    alone.add((("en", 0.5),), seconds=3.0)  # nothing to check it against
    assert not alone.unsure


def test_compression_ratio_finds_loops() -> None:
    assert compression_ratio("") == 0.0
    plain = "He should register the positions of the ships before the tide turns."
    assert compression_ratio(plain) < 1.5
    assert compression_ratio("Mae'r gweithio'r " * 12) > 2.4


def test_a_draft_fails_as_whisper_judges_a_failed_decoding() -> None:
    assert not DraftCheck(20.0, -0.5, 1.6).failed
    assert DraftCheck(20.0, -0.3, 6.2).failed  # a loop, however sure of itself
    assert DraftCheck(20.0, -1.08, 1.9).failed  # text the model barely believes


def test_the_candidate_whose_drafts_fail_least_is_kept() -> None:
    welsh = [DraftCheck(22.0, -1.08, 1.9), DraftCheck(23.0, -0.26, 6.2)]
    english = [DraftCheck(22.0, -0.48, 1.5), DraftCheck(23.0, -0.73, 1.5)]
    translated = [DraftCheck(22.0, -0.6, 1.5), DraftCheck(23.0, -1.2, 1.6)]
    drafts = {"cy": welsh, "en": english, "de": translated}
    drafted: list[str] = []

    def drafts_in(language: str) -> list[DraftCheck]:
        drafted.append(language)
        return drafts[language]

    assert checked_language(["cy", "en"], drafts_in) == "en"
    # the more probable drafted clean: nothing after it is drafted
    drafted.clear()
    assert checked_language(["en", "cy"], drafts_in) == "en" and drafted == ["en"]
    # equally failed drafts: the more probable stays
    assert checked_language(["de", "cy"], lambda _: translated) == "de"
    with pytest.raises(ValueError, match="no candidate"):
        checked_language([], drafts_in)


def test_an_unsure_vote_is_checked_on_its_first_three_windows_of_five_seconds() -> None:
    assert checked_windows([4.9, 5.0, 30.0, 2.0, 12.0, 8.0]) == [1, 2, 4]
    assert checked_windows([0.7, 4.0]) == []


def test_a_recognition_fails_where_whisper_had_to_decode_again() -> None:
    # parts: (avg_logprob, compression_ratio, tokens, temperature)
    clean = recognised_check(20.0, [(-0.2, 1.4, 30, 0.0), (-0.5, 1.6, 10, 0.0)])
    assert clean == DraftCheck(20.0, pytest.approx(-0.275), 1.6) and not clean.failed
    # a part decoded again at a temperature: its first, beam decoding failed the test
    fell_back = recognised_check(20.0, [(-0.2, 1.4, 30, 0.0), (-0.6, 2.0, 10, 0.4)])
    assert fell_back.fell_back and fell_back.failed
    assert recognised_check(20.0, [(-0.3, 2.6, 40, 0.0)]).failed  # a loop
    assert recognised_check(20.0, [(-1.2, 1.5, 40, 0.0)]).failed  # barely believed
    assert not recognised_check(8.0, []).failed  # nothing decoded: nothing failed


# The embedded Whisper base on real audio.


@pytest.fixture(scope="module")
def asr(settings):
    from ethostral_serve.backends.whisper import WhisperAsr

    return WhisperAsr(settings.asr, settings.cache_dir)


@pytest.fixture(scope="module")
def meeting_excerpt() -> np.ndarray:
    """17 s of a real far-field AMI meeting in English (pyannote-debug trn08), which
    Whisper base's language identification hesitates over between Welsh and English:
    Welsh first on one machine, English first (0.59 against 0.38) on another."""
    return decode_audio(require_data("diarization", "pyannote-debug", "trn08.wav")).samples


@pytest.fixture(scope="module")
def german() -> np.ndarray:
    """20 s of German: one EmoDB speaker's first ten clips, joined."""
    folder = require_data("emotion", "emodb")
    lines = (folder / "labels.tsv").read_text(encoding="utf-8").splitlines()[1:11]
    return np.concatenate([decode_audio(folder / line.split("\t")[0]).samples for line in lines])


def welsh_first(asr, monkeypatch) -> None:
    """From now on, where Whisper ranks English first and Welsh second, it ranks Welsh
    first (with English's probability) and English second: how the hesitation between
    the two is settled is what is tested, whichever way the machine's floating point
    tips Whisper's own ranking."""
    ranking = asr._ranking

    def swapped(encoded: object):
        ranked = ranking(encoded)
        if len(ranked) >= 2 and (ranked[0][0], ranked[1][0]) == ("en", "cy"):
            return (("cy", ranked[0][1]), ("en", ranked[1][1]), *ranked[2:])
        return ranked

    monkeypatch.setattr(asr, "_ranking", swapped)


def test_far_field_english_first_heard_as_welsh_is_settled_as_english(
    asr, meeting_excerpt, monkeypatch
) -> None:
    heard = asr.language_ranking(meeting_excerpt)
    assert {heard[0][0], heard[1][0]} == {"en", "cy"} and heard[0][1] < LanguageVote.sure  # unsure
    welsh_first(asr, monkeypatch)
    ranking = asr.language_ranking(meeting_excerpt)
    assert ranking[0][0] == "cy" and ranking[1][0] == "en"  # Whisper's own rule: Welsh
    language, probability = asr.identify_language([meeting_excerpt]) or ("", 0.0)
    assert language == "en" and probability == pytest.approx(ranking[1][1])
    chunk = Chunk((Span(0.0, len(meeting_excerpt) / SAMPLE_RATE),), (0.0,))
    transcript = asr.transcribe(meeting_excerpt, [chunk], None)
    assert transcript.language == "en"
    assert transcript.language_probability == pytest.approx(probability)
    assert len(transcript.words) >= 10


def test_an_unsure_leader_is_checked_on_its_own_recognition(
    asr, meeting_excerpt, monkeypatch
) -> None:
    # trn08 first heard as Welsh: the Welsh beam recognition fails the test (and is not
    # sampled again), so English is drafted, wins, and the window is recognised in
    # English with Whisper's fallback
    welsh_first(asr, monkeypatch)
    drafted, decoded = spy_on_decoding(asr, monkeypatch)
    chunk = Chunk((Span(0.0, len(meeting_excerpt) / SAMPLE_RATE),), (0.0,))
    assert asr.transcribe(meeting_excerpt, [chunk], None).language == "en"
    assert drafted == ["en"] and decoded == [("cy", False), ("en", True)]


def test_an_unsure_leader_whose_recognition_reads_well_costs_no_draft(asr, monkeypatch) -> None:
    # 30 s of a real AMI meeting (dev01) that Whisper base hears as English, unsure
    samples = decode_audio(require_data("diarization", "pyannote-debug", "dev01.wav")).samples
    ranking = asr.language_ranking(samples)
    assert ranking[0][0] == "en" and ranking[0][1] < LanguageVote.sure
    drafted, decoded = spy_on_decoding(asr, monkeypatch)
    chunk = Chunk((Span(0.0, len(samples) / SAMPLE_RATE),), (0.0,))
    transcript = asr.transcribe(samples, [chunk], None)
    assert transcript.language == "en" and len(transcript.words) >= 20
    assert drafted == [] and decoded == [("en", False)]  # the recognition was the check


def test_a_leader_whose_recognition_fails_but_drafts_better_is_recognised_again(
    asr, monkeypatch
) -> None:
    # 30 s of trn04 whole (its silences too), heard as English, unsure. Where the English
    # beam recognition loops (it did on one machine, not on another: here its check is
    # made to read as a loop), the Welsh drafts fail at least as much, so English stays
    # and the window is decoded again with Whisper's sampling fallback
    samples = decode_audio(require_data("diarization", "pyannote-debug", "trn04.wav")).samples
    ranking = asr.language_ranking(samples)
    assert [code for code, _ in ranking[:2]] == ["en", "cy"] and ranking[0][1] < LanguageVote.sure
    decode = asr._decode_checked

    def english_loops(audio, features, encoded, language, fallback=True):
        result, check = decode(audio, features, encoded, language, fallback)
        if language == "en" and not fallback:
            check = DraftCheck(check.seconds, check.avg_logprob, 2.6)  # a loop's ratio
        return result, check

    monkeypatch.setattr(asr, "_decode_checked", english_loops)
    drafted, decoded = spy_on_decoding(asr, monkeypatch)
    chunk = Chunk((Span(0.0, len(samples) / SAMPLE_RATE),), (0.0,))
    assert asr.transcribe(samples, [chunk], None).language == "en"
    assert drafted == ["cy"] and decoded == [("en", False), ("en", True)]


def spy_on_decoding(asr, monkeypatch) -> tuple[list[str], list[tuple[str, bool]]]:
    """The languages ``asr`` drafts windows in, and those it recognises them in with
    whether the fallback was on, in order, from now on."""
    drafted: list[str] = []
    decoded: list[tuple[str, bool]] = []
    draft, decode = asr._draft_check, asr._decode_checked

    def drafting(encoded, language, seconds):
        drafted.append(language)
        return draft(encoded, language, seconds)

    def decoding(audio, features, encoded, language, fallback=True):
        decoded.append((language, fallback))
        return decode(audio, features, encoded, language, fallback)

    monkeypatch.setattr(asr, "_draft_check", drafting)
    monkeypatch.setattr(asr, "_decode_checked", decoding)
    return drafted, decoded


def test_a_clear_language_is_not_second_guessed(asr, german) -> None:
    ranking = asr.language_ranking(german)
    assert ranking[0][0] == "de" and ranking[0][1] >= 0.75
    assert asr.identify_language([german]) == ("de", pytest.approx(ranking[0][1]))


def test_the_draft_check_keeps_german_against_english(asr, german) -> None:
    assert asr.settle_language([german], ["de", "en"]) == "de"


def test_every_window_is_decoded_in_the_language_its_first_windows_vote_for(
    settings, german
) -> None:
    from ethostral_serve.backends.whisper import WhisperAsr

    # 10 s of German, then two windows of English: the English is the clear majority
    english = two_speaker_conversation(turns_each=3).samples
    samples = np.concatenate([german[: 10 * SAMPLE_RATE], english])
    g = 10.0
    e = len(english) / SAMPLE_RATE
    chunks = [
        Chunk((Span(0.0, g),), (0.0,)),
        Chunk((Span(g, g + e / 2),), (0.0,)),
        Chunk((Span(g + e / 2, g + e),), (0.0,)),
    ]
    by_vote = WhisperAsr(
        settings.asr.model_copy(update={"language_windows": 3}), settings.cache_dir
    )
    transcript = by_vote.transcribe(samples, chunks, None)
    assert transcript.language == "en"
    assert {w.start < g for w in transcript.words} == {True, False}  # every window read
    by_first = WhisperAsr(
        settings.asr.model_copy(update={"language_windows": 1}), settings.cache_dir
    )
    assert by_first.transcribe(samples, chunks, None).language == "de"


def test_windows_too_short_to_draft_leave_the_leader(asr, meeting_excerpt) -> None:
    # 4 s drafts say too little of loops or belief: the vote's leader stands
    short = meeting_excerpt[: 4 * SAMPLE_RATE]
    assert asr.settle_language([short], ["cy", "en"]) == "cy"
    assert asr.settle_language([meeting_excerpt], ["cy", "en"]) == "en"
