"""Live drafts: which model writes them, and compute threads built at a lower priority."""

from __future__ import annotations

import os
import threading

import pytest
from speech import two_speaker_conversation

from benchmarks.common import wer_counts
from ethostral_serve.backends.whisper import at_cpu_priority


def _own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _nice_of_a_thread_started_now() -> int:
    seen: list[int] = []
    child = threading.Thread(target=lambda: seen.append(_own_nice()))
    child.start()
    child.join()
    return seen[0]


def _policy_of_a_thread_started_now() -> int:
    seen: list[int] = []
    child = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    child.start()
    child.join()
    return seen[0]


def test_threads_started_while_building_run_at_the_lower_priority() -> None:
    base = _own_nice()
    assert at_cpu_priority("low", _nice_of_a_thread_started_now) == min(19, base + 10)
    assert at_cpu_priority("idle", _policy_of_a_thread_started_now) == os.SCHED_IDLE
    # the caller keeps its own priority, and 'normal' changes nothing
    assert _own_nice() == base and os.sched_getscheduler(0) != os.SCHED_IDLE
    assert at_cpu_priority("normal", _nice_of_a_thread_started_now) == base
    with pytest.raises(ValueError, match="unknown CPU priority"):
        at_cpu_priority("urgent", _nice_of_a_thread_started_now)


def test_an_error_while_building_reaches_the_caller() -> None:
    def broken() -> None:
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        at_cpu_priority("low", broken)


@pytest.mark.slow
def test_english_streams_are_drafted_by_the_draft_model_others_by_the_asr_model(
    engine, monkeypatch
) -> None:
    model = engine.model
    drafter = model.load_drafter()
    assert drafter is not model.asr
    assert not drafter.multilingual and drafter.languages == ("en",)  # tiny.en by default
    calls: list[str] = []
    for name, asr in (("draft", drafter), ("asr", model.asr)):
        real = asr.partial_texts
        monkeypatch.setattr(
            asr,
            "partial_texts",
            lambda a, langs, real=real, name=name: calls.append(name) or real(a, langs),
        )
    talk = two_speaker_conversation(turns_each=1)
    a_start, a_end, _ = talk.truth[0]
    first = talk.samples[int(a_start * 16000) : int(a_end * 16000)]
    text, _ = model.partial_text(first, "en")
    assert calls == ["draft"]
    reference = talk.reference.split()[: len(text.split())]
    wer, _ = wer_counts([" ".join(reference)], [text])
    assert text and wer < 0.5  # a real draft of what was said
    model.partial_text(first, None)  # language unknown: an English-only drafter can't tell
    model.partial_text(first, "fr")
    assert calls == ["draft", "asr", "asr"]


@pytest.mark.slow
def test_without_a_draft_model_the_asr_model_drafts(settings) -> None:
    from ethostral_serve.backends.embedded import EmbeddedSpeechModel

    plain = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"draft_model": None})}
    )
    model = EmbeddedSpeechModel(plain, with_emotion=False)
    assert model.load_drafter() is model.asr
    model.settings = settings.model_copy(
        update={"stream": settings.stream.model_copy(update={"draft_model": ""})}
    )
    assert model.load_drafter() is model.asr  # ETHOSTRAL_STREAM__DRAFT_MODEL= (empty)
