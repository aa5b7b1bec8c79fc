"""Progress reports: stage weights, monotonic fractions, and how the listener is carried."""

from __future__ import annotations

import contextvars
import threading

import pytest

from ethostral_serve.pipeline import progress
from ethostral_serve.pipeline.progress import STAGE_WEIGHTS, STAGES, listening, report


class Heard:
    """A listener that records every (stage, fraction) it hears."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, stage: str, fraction: float) -> None:
        self.calls.append((stage, fraction))

    @property
    def fractions(self) -> list[float]:
        return [fraction for _, fraction in self.calls]


def start_of(stage: str) -> float:
    """The summed weights of the stages before ``stage``, computed independently."""
    index = list(STAGE_WEIGHTS).index(stage)
    return sum(list(STAGE_WEIGHTS.values())[:index])


def test_weights_sum_to_one_and_stages_follow_their_order() -> None:
    assert sum(STAGE_WEIGHTS.values()) == pytest.approx(1.0)
    assert all(weight >= 0 for weight in STAGE_WEIGHTS.values())
    assert STAGES == ("decode", "vad", "diarize", "asr", "segment", "emotion")


def test_report_without_listener_is_a_noop() -> None:
    assert report("asr", 1, 2) is None
    assert report("emotion") is None


def test_report_outside_the_block_reaches_no_listener() -> None:
    heard = Heard()
    with listening(heard):
        report("decode")
    report("asr", 1, 2)
    assert heard.calls == [("decode", 0.0)]


def test_stage_start_is_the_sum_of_the_earlier_weights() -> None:
    for stage in STAGES:
        assert progress.stage_start(stage) == pytest.approx(start_of(stage))


def test_asr_half_way_is_the_earlier_stages_plus_half_of_asr() -> None:
    heard = Heard()
    with listening(heard):
        report("asr", 1, 2)
    expected = (
        STAGE_WEIGHTS["decode"]
        + STAGE_WEIGHTS["vad"]
        + STAGE_WEIGHTS["diarize"]
        + STAGE_WEIGHTS["asr"] / 2
    )
    assert heard.calls == [("asr", pytest.approx(expected))]


def test_fractions_follow_the_stage_weights() -> None:
    heard = Heard()
    with listening(heard):
        for stage in STAGES:
            report(stage, 0, 4)
            report(stage, 4, 4)
    expected = []
    for stage in STAGES:
        expected += [start_of(stage), start_of(stage) + STAGE_WEIGHTS[stage]]
    assert heard.fractions == pytest.approx(expected)
    assert heard.fractions[-1] == pytest.approx(1.0)


def test_fraction_never_goes_backwards() -> None:
    heard = Heard()
    with listening(heard):
        report("asr", 0.8)
        asr_value = heard.fractions[-1]
        report("diarize", 0)
        report("vad", 0)  # an earlier stage reporting late
        report("asr", 0.2)  # the same stage reporting less
        report("decode")
    assert asr_value == pytest.approx(start_of("asr") + 0.8 * STAGE_WEIGHTS["asr"])
    assert all(fraction >= asr_value for fraction in heard.fractions[1:])
    assert heard.fractions[2:] == [heard.fractions[1]] * 3
    assert heard.fractions == sorted(heard.fractions)
    # the stage named is the one reporting, even when the fraction held still
    assert [stage for stage, _ in heard.calls] == ["asr", "diarize", "vad", "asr", "decode"]


def test_fractions_stay_within_zero_and_one() -> None:
    heard = Heard()
    with listening(heard):
        report("decode", -5, 10)  # negative done clamps to the stage start
        report("decode", 0, 0)  # no units at all: the stage is done
        report("asr", 30, 10)  # done past total clamps to the stage end
        report("emotion", 99, 1)
        report("emotion", 1, -1)
    assert heard.fractions == pytest.approx(
        [0.0, STAGE_WEIGHTS["decode"], start_of("segment"), 1.0, 1.0]
    )
    assert all(0.0 <= fraction <= 1.0 for fraction in heard.fractions)


def test_done_past_total_clamps_to_the_end_of_the_stage() -> None:
    heard = Heard()
    with listening(heard):
        report("vad", 7, 2)
    assert heard.calls == [("vad", pytest.approx(start_of("diarize")))]


def test_listener_is_restored_after_nested_blocks() -> None:
    outer, inner = Heard(), Heard()
    with listening(outer):
        report("asr", 1, 2)
        with listening(inner):
            report("decode")  # the inner run starts afresh: its own fractions
            report("vad", 1, 1)
        report("diarize", 1, 1)
    report("emotion", 1, 1)
    assert outer.calls == [
        ("asr", pytest.approx(start_of("asr") + STAGE_WEIGHTS["asr"] / 2)),
        ("diarize", pytest.approx(start_of("asr") + STAGE_WEIGHTS["asr"] / 2)),  # held
    ]
    assert inner.calls == [("decode", 0.0), ("vad", pytest.approx(start_of("diarize")))]


def test_listener_is_restored_when_the_block_raises() -> None:
    outer, inner = Heard(), Heard()
    with listening(outer):
        with pytest.raises(RuntimeError), listening(inner):
            raise RuntimeError("boom")
        report("decode")
    assert outer.calls == [("decode", 0.0)]
    assert inner.calls == []


def test_copied_context_carries_the_listener_into_a_thread() -> None:
    heard = Heard()
    with listening(heard):
        context = contextvars.copy_context()
    # The block has ended here, yet the copy still holds its listener.
    worker = threading.Thread(target=context.run, args=(report, "asr", 1, 2))
    worker.start()
    worker.join()
    assert heard.calls == [("asr", pytest.approx(start_of("asr") + STAGE_WEIGHTS["asr"] / 2))]


def test_a_plain_thread_does_not_inherit_the_listener() -> None:
    heard = Heard()
    with listening(heard):
        worker = threading.Thread(target=report, args=("asr", 1, 2))
        worker.start()
        worker.join()
    assert heard.calls == []


def test_a_raising_listener_stops_the_caller() -> None:
    class Cancelled(Exception):
        pass

    def cancelled(stage: str, fraction: float) -> None:
        raise Cancelled(f"{stage} at {fraction}")

    reached = []
    with listening(cancelled), pytest.raises(Cancelled, match="asr"):
        report("asr", 1, 2)
        reached.append("after report")
    assert reached == []


def test_unknown_stage_raises_value_error() -> None:
    heard = Heard()
    with listening(heard), pytest.raises(ValueError, match="unknown stage 'transcode'"):
        report("transcode", 1, 2)
    assert heard.calls == []
    with pytest.raises(ValueError, match="unknown stage"):
        progress.stage_start("transcode")


def test_reports_from_two_threads_reach_the_listener_one_at_a_time_in_order() -> None:
    """Stages on different threads report at once (diarization beside ASR): while the
    listener hears one report, another thread's report waits, so fractions never arrive
    out of order."""
    inside = threading.Event()
    release = threading.Event()
    heard: list[float] = []
    entered: list[str] = []

    def listener(stage: str, fraction: float) -> None:
        entered.append(stage)
        if len(entered) == 1:
            inside.set()
            assert release.wait(10)
        heard.append(fraction)

    with listening(listener):
        first = threading.Thread(target=contextvars.copy_context().run, args=(report, "asr", 1, 1))
        first.start()
        assert inside.wait(10)
        second_done = threading.Event()

        def second_report() -> None:
            report("decode", 1, 1)
            second_done.set()

        second = threading.Thread(target=contextvars.copy_context().run, args=(second_report,))
        second.start()
        # the first report is still being heard: the second cannot get through
        assert not second_done.wait(0.3)
        release.set()
        first.join(10)
        second.join(10)
    assert second_done.is_set()
    asr_done = progress.stage_start("asr") + STAGE_WEIGHTS["asr"]
    assert heard == [pytest.approx(asr_done), pytest.approx(asr_done)]
