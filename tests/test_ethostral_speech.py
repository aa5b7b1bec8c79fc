"""Ethostral selected as the speech model: word and tag times, emotion per segment (tag
or fallback), language detection, and the whole pipeline on a tiny random Voxtral."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from speech import two_speaker_conversation
from tiny_voxtral import build_tiny_adapter, build_tiny_voxtral

from ethostral_serve.audio import Audio
from ethostral_serve.backends.ethostral import EthostralResult
from ethostral_serve.backends.ethostral_speech import (
    EthostralSpeechModel,
    draft_text,
    timed_emotions,
    timed_words,
)
from ethostral_serve.backends.ethostral_tags import parse_tags, tag_emotion
from ethostral_serve.backends.windows import span_emotions
from ethostral_serve.errors import UnsupportedLanguageError
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionInput,
    EmotionResult,
    Span,
    TimedEmotion,
    Transcript,
)
from ethostral_serve.settings import Settings


def _result(raw: str, char_probs: list[float], tag_probs: tuple[float, ...]) -> EthostralResult:
    """A result as if every character of ``raw`` were one generated token."""
    tagged = parse_tags(raw)
    return EthostralResult(
        tagged.text,
        raw,
        tagged,
        tag_probs,
        tag_emotion(tagged, tag_probs),
        tuple((k, k + 1) for k in range(len(raw))),
        tuple(char_probs),
    )


def test_words_and_tags_are_timed_by_their_share_of_the_text() -> None:
    raw = "[nervous] So, hel[laughs]lo there [coughs]"
    probs = [1.0] * len(raw)
    probs[raw.index("S")] = 0.5  # "So," has three tokens: mean (0.5 + 1 + 1) / 3
    for k in range(raw.index("[laughs]"), raw.index("[laughs]") + 8):
        probs[k] = 0.1  # the tag inside "hello"
    result = _result(raw, probs, (0.8, 0.3, 0.9))
    assert result.text == "So, hello there"  # 15 characters over 3 s: 0.2 s each
    words = timed_words(result, 3.0)
    assert [w.text for w in words] == [" So,", " hello", " there"]
    assert [(round(w.start, 3), round(w.end, 3)) for w in words] == [
        (0.0, 0.6),
        (0.8, 1.8),
        (2.0, 3.0),
    ]
    assert words[0].probability == pytest.approx(2.5 / 3)
    assert words[1].probability == 1.0  # the tag's tokens inside the word do not count
    emotions = timed_emotions(result, 3.0)
    # "coughs" carries no emotion; "laughs" sits after "So, hel" (7 characters)
    assert [(round(e.time, 3), e.emotion.label, e.emotion.confidence) for e in emotions] == [
        (0.0, "Fearful", 0.8),
        (1.4, "Happy", 0.3),
    ]
    assert {e.until for e in emotions} == {3.0}  # each holds to the window's end at most
    assert timed_words(_result("[sad]", [1.0] * 5, (0.5,)), 2.0) == []
    (only,) = timed_emotions(_result("[sad]", [1.0] * 5, (0.5,)), 2.0)
    assert only.time == 0.0 and only.emotion.label == "Sad"


def test_a_tag_right_after_a_word_belongs_to_the_segment_after_it() -> None:
    raw = "[calm] stop that.[angry] Okay go"
    result = _result(raw, [1.0] * len(raw), (0.6, 0.9))
    words = timed_words(result, 2.0)
    first, second = Span(words[0].start, words[1].end), Span(words[2].start, words[3].end)
    transcript = Transcript("en", 1.0, words, None, timed_emotions(result, 2.0))
    out = span_emotions(np.zeros(32000, np.float32), transcript, [first, second], False, None)
    assert [e.label for e in out if e is not None] == ["Calm", "Angry"]


def test_a_draft_cut_inside_a_tag_drops_the_tag_being_written() -> None:
    assert draft_text("[angry] stop that now [cou") == "stop that now"
    assert draft_text("[angry] stop that now [") == "stop that now"
    assert draft_text("[angry] stop [coughs] now") == "stop now"
    assert draft_text("[nervous so") == "so"  # an unclosed known tag is still a tag
    long = "[" + "x" * 50
    assert draft_text(long) == "x" * 50  # too long for a tag: bracketed speech


def test_a_span_takes_its_most_probable_tag_else_the_classifier() -> None:
    calm = EmotionResult("Calm", 0.4, 0.3, -0.5, 0.1)
    sad = EmotionResult("Sad", 0.6, -0.6, -0.3, -0.3)
    happy = EmotionResult("Happy", 0.9, 0.8, 0.5, 0.4)
    transcript = Transcript(
        "en", 1.0, [], None, [TimedEmotion(1.0, sad, 2.0), TimedEmotion(1.5, happy, 2.0)]
    )
    sent: list[EmotionInput] = []

    def classify(inputs: list[EmotionInput]) -> list[EmotionResult]:
        sent.extend(inputs)
        return [calm] * len(inputs)

    samples = np.arange(16000 * 5, dtype=np.float32)
    spans = [Span(0.0, 1.2), Span(0.5, 2.0), Span(3.0, 4.0), Span(1.7, 1.9), Span(0.0, 0.9)]
    out = span_emotions(samples, transcript, spans, False, classify)
    # the most probable tag inside; else the one in force (its text ran to 2.0 s); else
    # the classifier, also before the first tag
    assert out == [sad, happy, calm, happy, calm]
    x, y = sent  # only the untagged spans were classified, each from its own audio
    assert x.frames is None and x.audio is not None and x.audio[0] == 3 * 16000
    assert y.audio is not None and y.audio[0] == 0
    assert span_emotions(samples, transcript, spans, False, None)[2] is None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ethostral-speech")
    base = build_tiny_voxtral(root / "base")
    return base, build_tiny_adapter(base, root / "adapter")


def _settings(tiny: tuple[Path, Path], **extra: object) -> Settings:
    base, adapter = tiny
    section = {"base_model": str(base), "adapter": str(adapter), "max_new_tokens": 12}
    return Settings(speech_model="ethostral", ethostral={**section, **extra})


@pytest.fixture(scope="module")
def model(tiny) -> EthostralSpeechModel:
    from ethostral_serve.engine import load_speech_model

    loaded = load_speech_model(_settings(tiny))
    assert isinstance(loaded, EthostralSpeechModel)
    return loaded


@pytest.mark.slow
def test_windows_are_transcribed_in_one_batch_with_times_inside_each(model) -> None:
    talk = two_speaker_conversation(turns_each=1)
    windows = [talk.samples[: 16000 * 2], talk.samples[16000 : 16000 * 4], np.zeros(800)]
    results = model.transcribe_windows(windows, ["fr", None, "en"])
    assert [len(r.words) > 0 for r in results] == [True, True, False]  # 50 ms: no words
    for r, w in zip(results[:2], windows[:2], strict=True):
        duration = len(w) / 16000
        assert all(0.0 <= x.start <= x.end <= duration + 1e-9 for x in r.words)
        assert r.words[-1].end == pytest.approx(duration)  # the text spans the window
        assert all(0.0 < x.probability <= 1.0 for x in r.words)
        assert not any("[" in x.text for x in r.words)
        assert len(r.frames) == 0  # no encoder states: emotion reads audio
    assert results[0].language == "fr"
    # no language given: Whisper base picks one of Voxtral's, and Voxtral is told it
    assert results[1].language in model.languages and results[1].language_probability < 1.0
    heard = results[1].language_ranking  # what Whisper heard, for the file's language vote
    assert heard[0] == (results[1].language, results[1].language_probability)
    alone = model.transcribe_windows([windows[1]], [results[1].language])
    assert [w.text for w in alone[0].words] == [w.text for w in results[1].words]


@pytest.mark.slow
def test_the_pipeline_runs_on_ethostral_with_fallback_emotions(model, tiny) -> None:
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.pipeline.compose import TranscribeOptions, transcribe

    settings = _settings(tiny)
    talk = two_speaker_conversation(turns_each=1)
    session = transcribe(
        Audio(talk.samples),
        "talk.wav",
        TranscribeOptions(language="en", diarize=False),
        vad=SileroVad(settings.vad),
        diarizer=None,
        model=model,
        settings=settings,
    )
    assert session.language == "en" and session.segments
    duration = len(talk.samples) / 16000
    for segment in session.segments:
        assert segment.text and "[" not in segment.text
        assert 0 <= segment.start_ms <= segment.end_ms <= round(duration * 1000)
        assert segment.emotion is not None  # a tag's, or the fallback model's
    # the chunks' times are mapped back to the original timeline
    regions = SileroVad(settings.vad).speech_regions(talk.samples)
    assert session.segments[0].start_ms >= round(regions[0].start * 1000) - 1


@pytest.mark.slow
def test_without_fallback_or_detection_whisper_is_not_loaded(tagging_voxtral) -> None:
    bare = EthostralSpeechModel(
        _settings(tagging_voxtral, emotion_fallback=False, detect_language=False, max_new_tokens=48)
    )
    assert bare.whisper is None and not bare.classifies and not bare.detects_language
    talk = two_speaker_conversation(turns_each=1)
    chunk = Chunk((Span(1.0, 3.0),), (0.0,))
    transcript = bare.transcribe(talk.samples, [chunk], None)
    assert transcript.language == "und"  # Voxtral does not say which language it heard
    spans = [Span(0.0, 0.9), Span(1.0, 3.0)]  # no tag covers the first
    emotions = bare.emotions(talk.samples, transcript, spans)
    assert emotions[0] is None and emotions[1] is not None and emotions[1].label == "Angry"
    with pytest.raises(RuntimeError, match="without the fallback"):
        bare.classify([EmotionInput(audio=talk.samples[:16000])])


@pytest.mark.slow
def test_detection_off_is_off_even_with_the_fallback_loaded(tagging_voxtral) -> None:
    model = EthostralSpeechModel(_settings(tagging_voxtral, detect_language=False))
    assert model.whisper is not None and model.classifies  # loaded for the fallback
    talk = two_speaker_conversation(turns_each=1)
    transcript = model.transcribe(talk.samples, [Chunk((Span(1.0, 3.0),), (0.0,))], None)
    assert transcript.language == "und"
    assert model.partial_text(talk.samples[16000:48000], None)[1] == "und"


@pytest.mark.slow
def test_a_detected_language_voxtral_lacks_is_reported_and_voxtral_guesses(
    tagging_voxtral, monkeypatch
) -> None:
    model = EthostralSpeechModel(_settings(tagging_voxtral, max_new_tokens=48))
    assert model.whisper is not None
    told: list[list[str | None]] = []
    transcribe_segments = model.asr.transcribe_segments

    def spy(audios, languages, **kwargs):
        told.append(list(languages))
        return transcribe_segments(audios, languages, **kwargs)

    # Whisper, isolated: it hears Japanese, which Voxtral does not know
    monkeypatch.setattr(model.whisper, "identify_language", lambda windows: ("ja", 0.9))
    monkeypatch.setattr(model.asr, "transcribe_segments", spy)
    talk = two_speaker_conversation(turns_each=1)
    transcript = model.transcribe(talk.samples, [Chunk((Span(1.0, 3.0),), (0.0,))], None)
    assert (transcript.language, transcript.language_probability) == ("ja", 0.9)
    assert told == [[None]]  # Voxtral was told nothing rather than a wrong language
    assert " ".join(w.text.strip() for w in transcript.words) == "stop that now okay"


@pytest.mark.slow
def test_languages_partials_and_the_fallback_classifier(model) -> None:
    assert model.check_language(" FR ") == "fr" and model.check_language("auto") is None
    with pytest.raises(UnsupportedLanguageError, match="ja"):
        model.check_language("ja")
    talk = two_speaker_conversation(turns_each=1)
    text, language = model.partial_text(talk.samples[: 16000 * 2], None)
    assert "[" not in text and language == "und"  # drafts do not identify the language
    assert model.partial_text(np.zeros(100, np.float32), "de") == ("", "de")
    (emotion,) = model.classify([EmotionInput(audio=talk.samples[:32000])])
    assert emotion.label and 0.0 <= emotion.confidence <= 1.0
    with pytest.raises(ValueError, match="audio"):
        model.classify([EmotionInput(frames=np.zeros((5, 512), np.float16))])


@pytest.mark.slow
def test_an_adapter_that_writes_tags_gives_the_segments_their_emotion(tagging_voxtral) -> None:
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.pipeline.compose import TranscribeOptions, transcribe

    base, adapter = tagging_voxtral
    section = {"base_model": str(base), "max_new_tokens": 48}
    settings = Settings(speech_model="ethostral", ethostral={**section, "adapter": str(adapter)})
    talk = two_speaker_conversation(turns_each=1)
    run = {
        "vad": SileroVad(settings.vad),
        "diarizer": None,
        "settings": settings,
    }
    session = transcribe(
        Audio(talk.samples),
        "talk.wav",
        TranscribeOptions(diarize=False),
        model=EthostralSpeechModel(settings),
        **run,
    )
    assert session.language == "en"  # told by Whisper base
    text = " ".join(s.text for s in session.segments)
    assert text.replace("stop that now okay", "").strip() == ""  # tags gone, once per window
    for segment in session.segments:  # the tag, or the tag still in force in its window
        emotion = segment.emotion
        assert emotion is not None and emotion.label == "Angry"  # [angry]; not [coughs]
        assert emotion.confidence > 0.9  # the model's probability of writing the tag
        assert emotion.valence < 0 < emotion.arousal  # the label's norms
    # without the adapter the base writes no such sentence
    plain = Settings(speech_model="ethostral", ethostral={**section, "emotion_fallback": False})
    session = transcribe(
        Audio(talk.samples),
        "talk.wav",
        TranscribeOptions(language="en", diarize=False),
        model=EthostralSpeechModel(plain),
        **run,
    )
    assert "stop that now" not in " ".join(s.text for s in session.segments)


@pytest.mark.slow
def test_the_cli_transcribes_with_a_named_adapter(tagging_voxtral, monkeypatch, capsys) -> None:
    import json

    from conftest import require_data

    from ethostral_serve.cli import main

    base, adapter = tagging_voxtral
    monkeypatch.setenv("ETHOSTRAL_SPEECH_MODEL", "ethostral")
    monkeypatch.setenv("ETHOSTRAL_ETHOSTRAL__BASE_MODEL", str(base))
    monkeypatch.setenv("ETHOSTRAL_ETHOSTRAL__ADAPTERS", json.dumps({"angry": str(adapter)}))
    monkeypatch.setenv("ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS", "48")
    jfk = require_data("asr", "jfk", "jfk.flac")
    args = ["transcribe", str(jfk), "--no-diarize", "--format", "jsonl", "-q"]
    assert main([*args, "--adapter", "angry"]) == 0
    session = json.loads(capsys.readouterr().out)
    assert " ".join(s["text"] for s in session["segments"]).startswith("stop that now okay")
    assert session["segments"][0]["emotion"]["label"] == "Angry"
    assert main([*args, "--adapter", "calm"]) == 2  # not configured
    assert "unknown adapter 'calm'; available: angry" in capsys.readouterr().err
