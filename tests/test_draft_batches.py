"""Live drafts batched across streams: one Whisper pass writes several drafts."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import require_data

from benchmarks.common import wer_counts
from ethostral_serve.audio import decode_audio
from ethostral_serve.errors import UnknownAdapterError

pytestmark = pytest.mark.slow

# LibriSpeech test-other utterances of one speaker: 2.8 s, 5.1 s and 12.6 s
UTTERANCES = ("1688-142285-0002", "1688-142285-0003", "1688-142285-0001")


@pytest.fixture(scope="module")
def speech() -> list[tuple[np.ndarray, str]]:
    """(samples, reference) of each of ``UTTERANCES``, in that order."""
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = {r["utt_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    return [
        (decode_audio(root / rows[u]["path"]).samples, rows[u]["transcript"]) for u in UTTERANCES
    ]


def _wer(reference: str, text: str) -> float:
    return wer_counts([reference], [text])[0]


@pytest.mark.parametrize("which", ["asr", "draft"])
def test_a_batch_of_drafts_of_different_lengths_gives_the_words_of_each(
    engine, speech, which: str
) -> None:
    whisper = engine.model.asr if which == "asr" else engine.model.load_drafter()
    clips = [samples for samples, _ in speech]
    drafts = whisper.partial_texts(clips, ["en"] * len(clips))
    assert [language for _, language in drafts] == ["en"] * 3
    for (_, reference), (text, _) in zip(speech, drafts, strict=True):
        assert _wer(reference, text) < 0.25, (reference, text)
    # the shortest alone (padded to 3 s, not to the batch's 13 s) says the same words
    alone, _ = whisper.partial_text(clips[0], "en")
    assert _wer(speech[0][1], alone) < 0.25, alone
    assert whisper.partial_text(clips[2], "en") == drafts[2]  # padded alike: one answer


def test_each_draft_of_a_batch_has_its_own_language(engine, speech) -> None:
    """The ASR model (multilingual): ``None`` is detected, a named language is used."""
    clip, reference = speech[1]
    detected, told, french = engine.model.asr.partial_texts([clip] * 3, [None, "en", "fr"])
    assert detected[1] == told[1] == "en" and french[1] == "fr"
    assert detected[0] == told[0] and _wer(reference, told[0]) < 0.25
    assert _wer(reference, french[0]) > 0.5  # told French, it wrote French


def test_too_short_clips_and_empty_batches_give_empty_drafts(engine, speech) -> None:
    asr = engine.model.asr
    clip, reference = speech[0]
    blip = clip[:800]  # 50 ms: too short to read
    drafts = asr.partial_texts([blip, clip, blip], [None, None, "de"])
    assert drafts[0] == ("", "und") and drafts[2] == ("", "de")
    assert drafts[1][1] == "en" and _wer(reference, drafts[1][0]) < 0.25
    assert engine.model.load_drafter().partial_texts([blip], [None]) == [("", "en")]
    assert asr.partial_texts([], []) == []
    assert engine.model.partial_texts([], []) == []
    with pytest.raises(ValueError, match="one language"):
        asr.partial_texts([clip], [])


def test_the_embedded_model_drafts_each_models_share_in_one_batch(
    engine, speech, monkeypatch
) -> None:
    """Drafts the English-only draft model can write go to it together; the rest (language
    unknown or not English) to the ASR model together; answers come back in order."""
    model = engine.model
    drafter = model.load_drafter()
    assert drafter is not model.asr and drafter.languages == ("en",)  # tiny.en by default
    batches: list[tuple[str, int]] = []
    for name, whisper in (("draft", drafter), ("asr", model.asr)):
        real = whisper.partial_texts

        def spy(audios, languages, real=real, name=name):
            batches.append((name, len(audios)))
            return real(audios, languages)

        monkeypatch.setattr(whisper, "partial_texts", spy)
    clips = [samples for samples, _ in speech]
    drafts = model.partial_texts([clips[0], clips[1], clips[2], clips[1]], ["en", None, "en", "fr"])
    assert sorted(batches) == [("asr", 2), ("draft", 2)]
    assert [language for _, language in drafts] == ["en", "en", "en", "fr"]
    for i, (text, _) in zip((0, 1, 2), drafts, strict=False):
        assert _wer(speech[i][1], text) < 0.25, text
    with pytest.raises(UnknownAdapterError):
        model.partial_texts([clips[0]], ["en"], ["calls"])
