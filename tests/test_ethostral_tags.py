"""Inline tags in Ethostral transcripts, on messy outputs."""

from __future__ import annotations

import pytest

from ethostral_serve.backends.emotion import EMOTION_VAD_NORMS
from ethostral_serve.backends.ethostral_tags import (
    TAG_LABELS,
    normalise_tag,
    parse_tags,
    tag_emotion,
)
from ethostral_serve.schema import EMOTION_LABELS


def test_tags_are_stripped_and_read_in_order() -> None:
    parsed = parse_tags("[nervous] So... [laughs] I think it went well.")
    assert parsed.text == "So... I think it went well."
    assert [(t.name, t.label) for t in parsed.tags] == [("nervous", "Fearful"), ("laughs", "Happy")]
    assert parsed.tags[0].start == 0 and parsed.tags[0].end == len("[nervous]")


def test_events_without_emotion_and_unknown_tags_are_removed_without_a_label() -> None:
    parsed = parse_tags("Well [coughs] I [mumbles] agree.")
    assert parsed.text == "Well I agree."
    coughs, mumbles = parsed.tags
    assert coughs.known and coughs.label is None
    assert not mumbles.known and mumbles.label is None
    assert parsed.emotion_tags == ()


def test_a_tag_inside_a_word_joins_the_word() -> None:
    parsed = parse_tags("That is hel[laughs]larious.")
    assert parsed.text == "That is hellarious."
    assert [t.name for t in parsed.tags] == ["laughs"]


def test_an_unclosed_bracket_before_a_known_tag_is_that_tag() -> None:
    parsed = parse_tags("[sad I lost it")
    assert parsed.text == "I lost it"
    assert [(t.name, t.label) for t in parsed.tags] == [("sad", "Sad")]
    two_words = parse_tags("ok [clears throat so")
    assert two_words.text == "ok so" and two_words.tags[0].name == "clears throat"


def test_an_unclosed_bracket_before_speech_is_dropped_and_the_words_kept() -> None:
    parsed = parse_tags("I said [maybe we should go")
    assert parsed.text == "I said maybe we should go"
    assert parsed.tags == ()


def test_stray_and_doubled_brackets() -> None:
    assert parse_tags("yes] no").text == "yes no"
    parsed = parse_tags("[[Happy!]] great [ ANGRY ]news")
    assert parsed.text == "great news"
    assert [t.label for t in parsed.tags] == ["Happy", "Angry"]


def test_long_bracketed_text_is_speech_not_a_tag() -> None:
    speech = "this whole sentence was said in an aside to the room"
    parsed = parse_tags(f"and [{speech}] then")
    assert parsed.text == f"and {speech} then"
    assert parsed.tags == ()


def test_only_tags_leaves_empty_text_and_spaces_are_tidied() -> None:
    assert parse_tags("[laughs] [sighs]").text == ""
    assert parse_tags("Hello [happy] , world [sad] !").text == "Hello, world!"


@pytest.mark.parametrize(
    ("inner", "name"), [(" Nervous: ", "nervous"), ("CLEARS  throat", "clears throat")]
)
def test_tag_names_are_normalised(inner: str, name: str) -> None:
    assert normalise_tag(inner) == name


def test_every_tag_maps_to_a_spec_label_with_norms() -> None:
    for label in TAG_LABELS.values():
        if label is not None:
            assert label in EMOTION_LABELS and label in EMOTION_VAD_NORMS


def test_the_most_probable_emotion_tag_gives_the_segment_its_emotion() -> None:
    parsed = parse_tags("[calm] Fine. [coughs] [angry] No!")
    emotion = tag_emotion(parsed, [0.55, 0.99, 0.81])  # the cough's probability is ignored
    assert emotion is not None and emotion.label == "Angry"
    assert emotion.confidence == pytest.approx(0.81)
    assert (emotion.valence, emotion.arousal, emotion.dominance) == EMOTION_VAD_NORMS["Angry"]
    tie = tag_emotion(parse_tags("[sad] a [happy] b"), [0.5, 0.5])
    assert tie is not None and tie.label == "Sad"


def test_no_emotion_tag_means_no_emotion_and_probabilities_must_match_tags() -> None:
    assert tag_emotion(parse_tags("[coughs] plain words"), [0.9]) is None
    assert tag_emotion(parse_tags("plain words"), []) is None
    with pytest.raises(ValueError, match="one probability per tag"):
        tag_emotion(parse_tags("[sad] x"), [])
