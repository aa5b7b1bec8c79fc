"""The forwarding backends' call pattern, with fake deployment handles (no Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ethostral_serve.errors import BackendUnavailableError, UnsupportedLanguageError
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionResult,
    Span,
    TimedEmotion,
    WindowResult,
    WordTiming,
)
from ethostral_serve.serve.remote import ModelInfo, RemoteSpeechModel, RemoteVad, WindowJob


@dataclass
class _Done:
    value: Any
    method: _Method

    def result(self, timeout_s: float | None = None) -> Any:
        self.method.outstanding -= 1
        return self.value


@dataclass
class _Method:
    fn: Any
    calls: list[Any] = field(default_factory=list)
    outstanding: int = 0
    most_outstanding: int = 0

    def remote(self, *args: Any) -> _Done:
        self.calls.append(args)
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        return _Done(self.fn(*args), self)


NERVOUS = EmotionResult("Fearful", 0.7, -0.3, 0.6, -0.4)


class _FakeModelHandle:
    """Answers like the EthostralModel deployment: one word per window, named by index;
    windows whose index is in ``tagged`` carry an inline emotion 0.2 s in. A window sent
    without a language is heard as ``detected`` (0.8), or with ``detected[index]``'s
    ranking; an unsure language vote's check settles on ``settled`` (else on the vote's
    leader)."""

    def __init__(
        self,
        detected: str | dict[int, tuple[tuple[str, float], ...]] = "fr",
        reads_states: bool = True,
        classifies: bool = True,
        tagged: tuple[int, ...] = (),
        detects: bool = True,
        settled: str | None = None,
    ) -> None:
        self.settle_language = _Method(
            lambda windows, candidates: settled if settled is not None else candidates[0]
        )
        self.info = _Method(
            lambda: ModelInfo(
                ("en", "fr"), True, reads_states, classifies, detects_language=detects
            )
        )
        self.detects = detects
        self.tagged = tagged
        self.transcribe_window = _Method(self._window)
        self.classify_segment = _Method(
            lambda x: (
                EmotionResult("Calm", 0.5, 0.1, -0.1, 0.0)
                if x.frames is not None
                else EmotionResult("Sad", 0.5, -0.5, -0.2, -0.3)
            )
        )
        self.detected = detected
        self.partial_text = _Method(
            lambda audio, language, adapter: (f"d{int(audio[0])}", language or "und")
        )

    def _window(self, job: WindowJob) -> WindowResult:
        if job.audio.size == 0:
            return WindowResult.empty(job.language)
        index = int(job.audio[0])
        frames = np.full((int(len(job.audio) / 320), 4), index, np.float16)
        inline = [TimedEmotion(0.2, NERVOUS, 0.3)] if index in self.tagged else []
        language, probability, ranking = job.language, 0.8, ()
        if job.language is None and self.detects:
            if isinstance(self.detected, str):
                language = self.detected
            else:
                ranking = self.detected[index]
                language, probability = ranking[0]
        return WindowResult(
            [WordTiming(f" w{index}", 0.1, 0.3, 0.9)],
            language,
            probability,
            frames,
            inline,
            language_ranking=ranking,
        )


def _chunks(n: int, seconds: int = 2) -> tuple[np.ndarray, list[Chunk]]:
    """``n`` windows of ``seconds``, window i (from 1) holding the value i."""
    size = 16000 * seconds
    samples = np.zeros(size * n, np.float32)
    chunks = []
    for i in range(n):
        samples[size * i : size * (i + 1)] = i + 1
        span = Span(float(seconds * i), float(seconds * (i + 1)))
        chunks.append(Chunk((span,), (0.0,)))
    return samples, chunks


def test_the_first_windows_vote_on_the_language_then_the_rest_go_with_it() -> None:
    handle = _FakeModelHandle(detected="fr")
    model = RemoteSpeechModel(handle, language_windows=2)
    samples, chunks = _chunks(4)
    transcript = model.transcribe(samples, chunks, None)
    languages = [args[0].language for args in handle.transcribe_window.calls]
    assert languages == [None, None, "fr", "fr"]  # no window sent twice
    assert transcript.language == "fr" and transcript.language_probability == 0.8
    assert [w.text for w in transcript.words] == [" w1", " w2", " w3", " w4"]
    assert [round(w.start, 2) for w in transcript.words] == [0.1, 2.1, 4.1, 6.1]


def test_a_window_heard_in_another_language_than_the_vote_is_sent_again() -> None:
    # Far-field English whose first window Whisper hears as Welsh: the vote of three
    # equally long windows puts English ahead, (0.3 + 0.7 + 0.6) / 3 against 1.1 / 3.
    handle = _FakeModelHandle(
        detected={
            1: (("cy", 0.6), ("en", 0.3)),
            2: (("en", 0.7), ("cy", 0.2)),
            3: (("en", 0.6), ("cy", 0.3)),
        }
    )
    model = RemoteSpeechModel(handle, language_windows=3)
    samples, chunks = _chunks(4, seconds=6)
    transcript = model.transcribe(samples, chunks, None)
    sent = [(int(a[0].audio[0]), a[0].language) for a in handle.transcribe_window.calls]
    assert sent == [(1, None), (2, None), (3, None), (1, "en"), (4, "en")]
    assert transcript.language == "en"
    assert transcript.language_probability == pytest.approx(1.6 / 3)
    assert [w.text for w in transcript.words] == [" w1", " w2", " w3", " w4"]
    # 0.53 is unsure: the deployment's draft check was asked, with the three windows
    ((windows, candidates),) = handle.settle_language.calls
    assert [int(w[0]) for w in windows] == [1, 2, 3] and candidates == ["en", "cy"]


def test_an_unsure_vote_over_windows_too_short_to_draft_keeps_its_leader() -> None:
    handle = _FakeModelHandle(
        detected={1: (("cy", 0.6), ("en", 0.3)), 2: (("en", 0.4), ("cy", 0.3))}, settled="en"
    )
    samples, chunks = _chunks(2)  # 2 s windows: nothing worth drafting
    transcript = RemoteSpeechModel(handle, language_windows=2).transcribe(samples, chunks, None)
    assert transcript.language == "cy" and handle.settle_language.calls == []


def test_an_unsure_vote_goes_to_the_language_the_draft_check_settles_on() -> None:
    handle = _FakeModelHandle(
        detected={1: (("en", 0.5), ("de", 0.4)), 2: (("de", 0.5), ("en", 0.4))}, settled="de"
    )
    samples, chunks = _chunks(3, seconds=5)
    transcript = RemoteSpeechModel(handle, language_windows=2).transcribe(samples, chunks, None)
    sent = [(int(a[0].audio[0]), a[0].language) for a in handle.transcribe_window.calls]
    assert sent == [(1, None), (2, None), (1, "de"), (3, "de")]
    assert transcript.language == "de" and transcript.language_probability == pytest.approx(0.45)


def test_a_sure_vote_is_not_checked() -> None:
    handle = _FakeModelHandle(detected={1: (("de", 0.9),), 2: (("de", 0.8), ("en", 0.1))})
    samples, chunks = _chunks(2)
    transcript = RemoteSpeechModel(handle, language_windows=2).transcribe(samples, chunks, None)
    assert transcript.language == "de" and handle.settle_language.calls == []


def test_with_one_voting_window_the_first_window_decides() -> None:
    handle = _FakeModelHandle(detected={1: (("cy", 0.6), ("en", 0.3))})
    model = RemoteSpeechModel(handle, language_windows=1)
    samples, chunks = _chunks(3)
    transcript = model.transcribe(samples, chunks, None)
    languages = [args[0].language for args in handle.transcribe_window.calls]
    assert languages == [None, "cy", "cy"] and transcript.language == "cy"


def test_a_model_that_detects_no_language_gets_every_window_at_once() -> None:
    handle = _FakeModelHandle(detects=False)
    samples, chunks = _chunks(3)
    transcript = RemoteSpeechModel(handle).transcribe(samples, chunks, None)
    assert [a[0].language for a in handle.transcribe_window.calls] == [None, None, None]
    assert handle.transcribe_window.most_outstanding == 3  # not one by one
    assert transcript.language == "und"


def test_given_language_sends_every_window_at_once() -> None:
    handle = _FakeModelHandle()
    samples, chunks = _chunks(3)
    transcript = RemoteSpeechModel(handle).transcribe(samples, chunks, "en")
    assert [a[0].language for a in handle.transcribe_window.calls] == ["en", "en", "en"]
    assert transcript.language == "en"


def test_emotion_reads_the_encoder_frames_inside_each_segment() -> None:
    handle = _FakeModelHandle(reads_states=True)
    model = RemoteSpeechModel(handle)
    samples, chunks = _chunks(2)
    transcript = model.transcribe(samples, chunks, "en")
    results = model.emotions(samples, transcript, [Span(0.2, 1.0), Span(2.5, 3.5)])
    assert [r.label for r in results] == ["Calm", "Calm"]
    sent = [args[0].frames for args in handle.classify_segment.calls]
    assert {float(f[0, 0]) for f in sent[:1]} == {1.0} and {float(f[0, 0]) for f in sent[1:]} == {
        2.0
    }


def test_emotion_sends_audio_when_the_model_cannot_read_states() -> None:
    handle = _FakeModelHandle(reads_states=False)
    model = RemoteSpeechModel(handle)
    samples, chunks = _chunks(1)
    transcript = model.transcribe(samples, chunks, "en")
    (result,) = model.emotions(samples, transcript, [Span(0.5, 1.5)])
    assert result.label == "Sad"
    (job,) = handle.classify_segment.calls[0]
    assert job.frames is None and len(job.audio) == 16000


def test_inline_emotions_win_and_only_the_other_segments_are_classified() -> None:
    handle = _FakeModelHandle(tagged=(2,))  # window 2 (2 s to 4 s) has a tag at 2.2 s
    model = RemoteSpeechModel(handle)
    samples, chunks = _chunks(2)
    transcript = model.transcribe(samples, chunks, "en")
    assert [(e.time, e.emotion.label) for e in transcript.emotions] == [(2.2, "Fearful")]
    results = model.emotions(samples, transcript, [Span(0.2, 1.0), Span(2.0, 3.5)])
    assert [r.label for r in results] == ["Calm", "Fearful"]
    assert results[1].confidence == 0.7
    assert len(handle.classify_segment.calls) == 1  # the tagged segment is not sent


def test_without_a_classifier_untagged_segments_get_no_emotion() -> None:
    handle = _FakeModelHandle(classifies=False, tagged=(1,))
    model = RemoteSpeechModel(handle)
    samples, chunks = _chunks(2)
    transcript = model.transcribe(samples, chunks, "en")
    results = model.emotions(samples, transcript, [Span(0.0, 1.0), Span(2.0, 3.5)])
    assert results[0] is not None and results[0].label == "Fearful"
    assert results[1] is None
    assert handle.classify_segment.calls == []


def test_language_is_checked_against_the_deployments_list() -> None:
    model = RemoteSpeechModel(_FakeModelHandle())
    assert model.check_language(" EN ") == "en"
    with pytest.raises(UnsupportedLanguageError, match="klingon"):
        model.check_language("klingon")


def test_one_request_keeps_a_bounded_number_of_calls_in_flight() -> None:
    handle = _FakeModelHandle()
    model = RemoteSpeechModel(handle, max_windows_in_flight=3, max_segments_in_flight=4)
    samples, chunks = _chunks(10)
    transcript = model.transcribe(samples, chunks, "en")
    assert len(transcript.words) == 10
    assert handle.transcribe_window.most_outstanding == 3
    spans = [Span(0.2 * i, 0.2 * i + 0.1) for i in range(10)]
    assert len(model.emotions(samples, transcript, spans)) == 10
    assert handle.classify_segment.most_outstanding == 4


def test_drafts_go_out_as_separate_calls_all_in_flight_at_once() -> None:
    """So the deployment's batched draft method can write them in one batch."""
    handle = _FakeModelHandle()
    model = RemoteSpeechModel(handle)
    clips = [np.full(1600, i, np.float32) for i in range(3)]
    drafts = model.partial_texts(clips, ["en", None, "fr"])
    assert drafts == [("d0", "en"), ("d1", "und"), ("d2", "fr")]
    assert handle.partial_text.most_outstanding == 3
    assert [args[1:] for args in handle.partial_text.calls] == [
        ("en", None),
        (None, None),
        ("fr", None),
    ]
    with pytest.raises(ValueError):
        model.partial_texts(clips, ["en"])


def test_a_deployment_that_does_not_answer_is_a_503() -> None:
    class _Slow:
        def result(self, timeout_s: float | None = None) -> Any:
            raise TimeoutError  # what Ray's GetTimeoutError is a subclass of

    class _Handle:
        class speech_regions:
            @staticmethod
            def remote(samples: np.ndarray) -> _Slow:
                return _Slow()

    with pytest.raises(BackendUnavailableError, match="VAD deployment did not answer") as err:
        RemoteVad(_Handle(), timeout_s=1.5).speech_regions(np.zeros(10))
    assert err.value.status_code == 503


def test_stream_finals_share_one_window_call_and_get_an_emotion_each() -> None:
    from ethostral_serve.serve.remote import RemoteSpeechModel, RemoteStreamBackends

    handle = _FakeModelHandle()
    backends = RemoteStreamBackends(None, None, RemoteSpeechModel(handle))
    first = np.full(32000, 7.0, np.float32)  # 2 s; the fake names words by the first sample
    second = np.full(16000, 9.0, np.float32)
    results = backends.finals([first, second], "en", emotion=True)
    # read together, the fake's one word sits in the first 2 s: the second utterance came
    # back empty, so it was read again alone, and nothing said is lost
    (joined,), (alone,) = handle.transcribe_window.calls
    assert len(joined.audio) == 48000 and joined.language == "en"
    assert len(alone.audio) == 16000 and alone.language == "en"
    assert [r.text for r in results] == ["w7", "w9"]
    frames = [args[0].frames for args in handle.classify_segment.calls]
    assert [len(f) for f in frames] == [100, 50]  # each utterance's own encoder frames, once
    assert all(r.emotion is not None and r.emotion.label == "Calm" for r in results)
    assert backends.finals([first], "en", emotion=False)[0].emotion is None


def test_a_lone_final_without_words_is_not_read_twice() -> None:
    from ethostral_serve.serve.remote import RemoteSpeechModel, RemoteStreamBackends

    handle = _FakeModelHandle()
    backends = RemoteStreamBackends(None, None, RemoteSpeechModel(handle))
    nothing = np.zeros(0, np.float32)  # the fake finds no word in no audio
    (result,) = backends.finals([nothing], "en", emotion=False)
    assert result.words == [] and len(handle.transcribe_window.calls) == 1


def test_stream_finals_take_an_utterances_inline_emotion_over_the_classifier() -> None:
    from ethostral_serve.serve.remote import RemoteSpeechModel, RemoteStreamBackends

    handle = _FakeModelHandle(tagged=(7,))  # the joined window's tag sits 0.2 s in
    backends = RemoteStreamBackends(None, None, RemoteSpeechModel(handle))
    first = np.full(32000, 7.0, np.float32)
    second = np.full(16000, 9.0, np.float32)
    results = backends.finals([first, second], "en", emotion=True)
    assert [r.emotion.label if r.emotion else None for r in results] == ["Fearful", "Calm"]
    assert len(handle.classify_segment.calls) == 1  # only the untagged second utterance
    assert all(r.emotion is None for r in backends.finals([first, second], "en", emotion=False))


class _Pending:
    """A call no replica takes: each wait for it times out after its slice (on a fake
    clock), and it records being cancelled."""

    def __init__(self, clock: list[float], answer_after: int | None = None) -> None:
        self.clock = clock
        self.calls = 0
        self.cancelled = False
        self.answer_after = answer_after

    def result(self, timeout_s: float | None = None) -> Any:
        self.calls += 1
        if self.answer_after is not None and self.calls > self.answer_after:
            return "answer"
        self.clock[0] += timeout_s or 0.0
        raise TimeoutError

    def cancel(self) -> None:
        self.cancelled = True


def test_a_deployment_without_replicas_fails_fast_instead_of_hanging() -> None:
    from ethostral_serve.serve.remote import wait
    from ethostral_serve.serve.replicas import ReplicaWatch

    clock = [0.0]
    watch = ReplicaWatch(
        lambda: {"EthostralModel": 0, "VAD": 1}, clock=lambda: clock[0], background=False
    )
    call = _Pending(clock)
    with pytest.raises(BackendUnavailableError, match="no running replica for 4 s") as err:
        wait(call, "EthostralModel", timeout_s=600, watch=watch, grace_s=3.0)
    assert err.value.status_code == 503
    # first seen without a replica after the first 2 s slice; 503 once that is 3 s or more
    assert call.cancelled and call.calls == 3


def test_a_running_replica_is_waited_for_and_a_returning_one_resets_the_count() -> None:
    from ethostral_serve.serve.remote import wait
    from ethostral_serve.serve.replicas import ReplicaWatch

    clock = [0.0]
    running = {"EthostralModel": 1}
    watch = ReplicaWatch(lambda: dict(running), ttl_s=0.0, clock=lambda: clock[0], background=False)
    slow = _Pending(clock, answer_after=20)  # 40 s of slices with a replica busy on it
    assert wait(slow, "EthostralModel", timeout_s=600, watch=watch, grace_s=3.0) == "answer"
    assert not slow.cancelled
    running["EthostralModel"] = 0
    clock[0] += 1
    assert watch.without_replicas_s("EthostralModel") == 0.0  # first seen without one now
    clock[0] += 2
    assert watch.without_replicas_s("EthostralModel") == 2.0
    running["EthostralModel"] = 1  # replaced
    assert watch.without_replicas_s("EthostralModel") == 0.0
    assert watch.without_replicas_s("Unknown") == 0.0


def test_replica_counts_are_asked_at_most_once_per_ttl() -> None:
    from ethostral_serve.serve.replicas import ReplicaWatch

    clock = [0.0]
    asked = []
    watch = ReplicaWatch(
        lambda: asked.append(1) or {"VAD": 0}, ttl_s=2.0, clock=lambda: clock[0], background=False
    )
    for _ in range(5):
        watch.without_replicas_s("VAD")
    clock[0] += 2.5
    assert watch.without_replicas_s("VAD") == 2.5
    assert len(asked) == 2


def test_a_zero_seen_long_ago_is_not_counted_and_a_slow_controller_blocks_nobody() -> None:
    import threading

    from ethostral_serve.serve.replicas import ReplicaWatch

    clock = [0.0]
    watch = ReplicaWatch(lambda: {"VAD": 0}, ttl_s=2.0, clock=lambda: clock[0], background=False)
    watch.without_replicas_s("VAD")
    clock[0] += 3600  # nobody asked for an hour
    assert watch.without_replicas_s("VAD") == 0.0  # counting starts afresh
    clock[0] += 2.5
    assert watch.without_replicas_s("VAD") == 2.5

    release = threading.Event()
    answered = threading.Event()

    def slow() -> dict[str, int]:
        release.wait(30)
        answered.set()
        return {"VAD": 1}

    waiting = ReplicaWatch(slow, ttl_s=2.0)
    assert waiting.without_replicas_s("VAD") == 0.0  # returns at once: nothing known yet
    release.set()
    assert answered.wait(30)


def test_counts_from_before_a_quiet_spell_are_not_trusted() -> None:
    from ethostral_serve.serve.replicas import ReplicaWatch

    clock = [0.0]
    answers: list[dict[str, int] | Exception] = [{"EthostralModel": 0}, {"EthostralModel": 0}]

    def counts() -> dict[str, int]:
        answer = answers.pop(0) if answers else TimeoutError("the controller is slow")
        if isinstance(answer, Exception):
            raise answer
        return answer

    watch = ReplicaWatch(counts, ttl_s=2.0, clock=lambda: clock[0], background=False)
    watch.without_replicas_s("EthostralModel")
    clock[0] += 2.0
    assert watch.without_replicas_s("EthostralModel") == 2.0
    clock[0] += 30.0  # nobody asked for 30 s; now the refresh does not land
    assert watch.without_replicas_s("EthostralModel") == 0.0  # unknown, not 32 s
