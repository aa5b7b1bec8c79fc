"""The Inference Endpoint client on its own: the wire format, retries and backoff,
Retry-After, timeouts, the concurrency limit and the errors it raises. The endpoint is a
scripted transport here (the real handler is in test_endpoint_handler.py); sleeping and
the clock are injected, so nothing waits on real time."""

from __future__ import annotations

import base64
import email.utils
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import pytest

from ethostral_serve.backends.endpoint.client import EndpointAsr
from ethostral_serve.backends.endpoint.wire import (
    MAX_WINDOWS,
    MalformedAnswerError,
    decode_request,
    decode_results,
    encode_request,
    encode_results,
)
from ethostral_serve.backends.ethostral import tagged_result
from ethostral_serve.errors import BackendUnavailableError, ConfigurationError
from ethostral_serve.settings import EndpointSettings, Settings

URL = "https://ethostral.example.endpoints.huggingface.cloud/"
RAW = "[angry] stop"


def _answer(request: httpx2.Request) -> dict[str, Any]:
    """Results for every window of the request: ``RAW``, one token per character."""
    windows = json.loads(request.content)["inputs"]["audio"]
    one = {
        "raw": RAW,
        "token_spans": [[k, k + 1] for k in range(len(RAW))],
        "token_probabilities": [0.5] * len(RAW),
    }
    return {"results": [one] * len(windows)}


class Endpoint:
    """A scripted endpoint: ``script`` gives each request's answer in turn (a status, a
    (status, headers) pair, an exception to raise, or a callable); afterwards, results."""

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.requests: list[httpx2.Request] = []
        self.client = httpx2.Client(transport=httpx2.MockTransport(self.respond))

    def respond(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else 200
        if callable(step) and not isinstance(step, type):
            return step(request)
        if isinstance(step, Exception):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        if status == 200:
            return httpx2.Response(200, json=_answer(request))
        return httpx2.Response(status, headers=headers, json={"error": f"status {status}"})


def _asr(
    endpoint: Endpoint, sleeps: list[float] | None = None, token: str | None = "hf_test", **knobs
) -> EndpointAsr:
    settings = EndpointSettings(url=URL, **knobs)
    sink = sleeps if sleeps is not None else []
    return EndpointAsr(
        settings, token, session=lambda: endpoint.client, sleep=sink.append, clock=lambda: 1e9
    )


def _windows(n: int, seconds: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.uniform(-0.5, 0.5, int(16000 * seconds)).astype(np.float32) for _ in range(n)]


def _send(asr: EndpointAsr, n: int = 1) -> list:
    return asr.transcribe_segments(_windows(n), [None] * n)


# the wire format


def test_a_request_round_trips_and_s16le_is_16_bit_pcm() -> None:
    quantized = np.round(_windows(1)[0] * 32768) / 32768  # exactly representable in 16 bits
    loud = np.array([1.5, -2.0, 0.25], np.float32)  # clipped to the 16-bit range
    body = encode_request([quantized, loud], ["en", None], [None, "calm"], 64, "s16le")
    assert body["inputs"]["encoding"] == "s16le" and body["inputs"]["sampling_rate"] == 16000
    pcm = np.frombuffer(base64.b64decode(body["inputs"]["audio"][1]), "<i2")
    assert pcm.tolist() == [32767, -32768, 8192]
    batch = decode_request(json.loads(json.dumps(body)))
    assert np.array_equal(batch.audios[0], quantized.astype(np.float32))
    assert batch.languages == ["en", None] and batch.adapters == [None, "calm"]
    assert batch.max_new_tokens == 64
    exact = decode_request(encode_request(_windows(1), [None], [None], None, "f32le"))
    assert np.array_equal(exact.audios[0], _windows(1)[0]) and exact.max_new_tokens is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop("inputs"), '"inputs" object'),
        (lambda b: b["inputs"].update(audio=[]), "non-empty list"),
        (lambda b: b["inputs"].update(audio=["not base64!"]), r"audio\[0\] is not valid base64"),
        (lambda b: b["inputs"].update(audio=["AAAA"]), "whole number of s16le samples"),
        (lambda b: b["inputs"].update(encoding="mp3"), "use one of s16le, f32le"),
        (lambda b: b["inputs"].update(sampling_rate=8000), "only 16000 Hz"),
        (lambda b: b["inputs"].update(languages=["en", "fr"]), "one entry per window"),
        (lambda b: b["inputs"].update(adapters=[3]), "strings or null"),
        (lambda b: b.update(parameters={"max_new_tokens": 0}), "from 1 to 4096"),
        (lambda b: b.update(parameters={"max_new_tokens": True}), "from 1 to 4096"),
        (lambda b: b.update(parameters=[1]), "parameters must be a JSON object"),
    ],
)
def test_the_handler_side_says_what_is_wrong_with_a_request(change, message) -> None:
    body = encode_request(_windows(1), [None], [None])
    change(body)
    with pytest.raises(ValueError, match=message):
        decode_request(body)


def test_a_request_holds_at_most_the_largest_batch_size_of_windows() -> None:
    from annotated_types import Le

    bounds = EndpointSettings.model_fields["batch_size"].metadata
    limit = [m.le for m in bounds if isinstance(m, Le)]
    assert limit == [MAX_WINDOWS] == [64]
    short = [np.zeros(160, np.float32)] * (MAX_WINDOWS + 1)
    assert len(decode_request(encode_request(short[:-1], [None] * 64, [None] * 64)).audios) == 64
    with pytest.raises(ValueError, match="holds 65 windows; a request may hold at most 64"):
        decode_request(encode_request(short, [None] * 65, [None] * 65))


def test_windows_longer_than_30_s_and_non_finite_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than 30 s"):
        decode_request(encode_request(_windows(1, 30.5), [None], [None]))
    nan = np.array([0.0, np.nan], np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        decode_request(encode_request([nan], [None], [None], encoding="f32le"))


def test_results_round_trip_into_the_same_tagged_result() -> None:
    local = tagged_result("[angry] stop", [(0, 4), (4, 8), (8, 12)], [0.9, 0.8, 0.7])
    (remote,) = decode_results(json.loads(json.dumps(encode_results([local]))), 1)
    assert remote == local
    assert remote.text == "stop" and remote.emotion is not None
    assert remote.emotion.label == "Angry" and remote.emotion.confidence == pytest.approx(0.72)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], '"results" list'),
        ({"results": []}, "0 results for 1 windows"),
        ({"results": ["x"]}, "is not an object"),
        ({"results": [{"raw": 3, "token_spans": [], "token_probabilities": []}]}, "raw"),
        ({"results": [{"raw": "ab", "token_spans": [[0, 1]], "token_probabilities": []}]}, "equal"),
        ({"results": [{"raw": "ab", "token_spans": [[1, 3]], "token_probabilities": [1]}]}, "span"),
        (
            {"results": [{"raw": "ab", "token_spans": [[0, 1]], "token_probabilities": [2]}]},
            "is not in",
        ),
        (
            {"results": [{"raw": "ab", "token_spans": [[0, 1]], "token_probabilities": [None]}]},
            "probability",
        ),
    ],
)
def test_a_malformed_answer_is_refused_with_what_is_wrong(payload, message) -> None:
    with pytest.raises(MalformedAnswerError, match=message.replace("[", r"\[")):
        decode_results(payload, 1)


# retries, backoff, Retry-After


def test_503s_are_retried_with_doubling_backoff_then_succeed() -> None:
    endpoint = Endpoint(503, 503, 502)
    sleeps: list[float] = []
    (result,) = _send(_asr(endpoint, sleeps, retry_backoff_s=0.5))
    assert result.text == "stop" and result.emotion is not None
    assert result.emotion.label == "Angry"
    assert sleeps == [0.5, 1.0, 2.0] and len(endpoint.requests) == 4
    request = endpoint.requests[-1]
    assert request.method == "POST" and str(request.url) == URL
    assert request.headers["authorization"] == "Bearer hf_test"
    assert request.headers["content-type"] == "application/json"


def test_an_endpoint_that_stays_down_is_a_503_model_unavailable() -> None:
    endpoint = Endpoint(*[503] * 10)
    sleeps: list[float] = []
    asr = _asr(endpoint, sleeps, max_retries=4, retry_backoff_s=1.0, retry_max_backoff_s=3.0)
    with pytest.raises(
        BackendUnavailableError, match=r"unavailable \(HTTP 503; 5 attempts\)"
    ) as err:
        _send(asr)
    assert err.value.status_code == 503
    assert sleeps == [1.0, 2.0, 3.0, 3.0]  # capped at retry_max_backoff_s
    assert len(endpoint.requests) == 5
    assert URL not in err.value.detail  # users read it; the log has the URL


def test_retry_after_is_honoured_in_seconds_and_as_a_date() -> None:
    date = email.utils.formatdate(1e9 + 30, usegmt=True)  # the injected clock is at 1e9 s
    endpoint = Endpoint((429, {"Retry-After": "7"}), (503, {"Retry-After": date}), 500)
    sleeps: list[float] = []
    _send(_asr(endpoint, sleeps, retry_backoff_s=1.0))
    assert sleeps == [7.0, 30.0, 4.0]  # without Retry-After: the backoff, doubled per attempt


def test_a_retry_after_longer_than_allowed_fails_at_once() -> None:
    endpoint = Endpoint((503, {"Retry-After": "3600"}))
    sleeps: list[float] = []
    with pytest.raises(BackendUnavailableError, match="asks to retry in 3600 s"):
        _send(_asr(endpoint, sleeps, retry_after_max_s=60))
    assert sleeps == [] and len(endpoint.requests) == 1


def test_timeouts_and_connection_errors_are_retried_then_a_503() -> None:
    seen: list[Any] = []

    def slow(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.extensions["timeout"])
        raise httpx2.ReadTimeout("timed out", request=request)

    endpoint = Endpoint(httpx2.ConnectError("refused"), slow, slow)
    sleeps: list[float] = []
    asr = _asr(endpoint, sleeps, timeout_s=12.5, max_retries=2)
    with pytest.raises(BackendUnavailableError, match=r"no answer within 12.5 s \(ReadTimeout\)"):
        _send(asr)
    assert sleeps == [1.0, 2.0]
    assert seen[0] == {"connect": 12.5, "read": 12.5, "write": 12.5, "pool": 12.5}


def test_a_real_connection_refused_is_a_503() -> None:
    from redis_server import free_port

    settings = EndpointSettings(url=f"http://127.0.0.1:{free_port()}/", max_retries=1)
    sleeps: list[float] = []
    asr = EndpointAsr(settings, None, sleep=sleeps.append)  # huggingface_hub's session
    with pytest.raises(BackendUnavailableError, match="ConnectError"):
        _send(asr)
    assert sleeps == [1.0]


# errors that retrying cannot fix


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_token_is_a_503_saying_so_never_retried(status: int, caplog) -> None:
    endpoint = Endpoint(status)
    sleeps: list[float] = []
    with pytest.raises(BackendUnavailableError) as refused:
        _send(_asr(endpoint, sleeps))
    assert refused.value.status_code == 503
    detail = refused.value.detail
    assert f"refused the service's token (HTTP {status}; HF_TOKEN is set)" in detail
    assert "HF_TOKEN or endpoint.url" in detail and URL not in detail
    assert sleeps == [] and len(endpoint.requests) == 1
    assert any(URL in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    anonymous = Endpoint(401)
    with pytest.raises(BackendUnavailableError, match="HF_TOKEN is not set"):
        _send(_asr(anonymous, token=None))
    assert "authorization" not in anonymous.requests[0].headers


def test_a_refused_token_reaches_api_callers_as_a_503_with_its_detail() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ethostral_serve.api.app import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)
    asr = _asr(Endpoint(403))

    @app.post("/transcribe")
    def transcribe() -> list:
        return _send(asr)

    response = TestClient(app).post("/transcribe")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert "refused the service's token (HTTP 403" in detail and "HF_TOKEN" in detail
    assert response.headers["retry-after"]


def test_a_missing_endpoint_or_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"check endpoint\.url"):
        _send(_asr(Endpoint(404)))
    with pytest.raises(ConfigurationError, match=r"needs endpoint\.url"):
        EndpointAsr(EndpointSettings(), None)
    with pytest.raises(ValueError, match="give an http"):
        EndpointSettings(url="ethostral.example")


def test_a_request_the_handler_refused_is_a_503_with_its_error() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(400, json={"error": "unknown adapter 'calm'; available: none"})

    endpoint = Endpoint(refuse)
    sleeps: list[float] = []
    with pytest.raises(BackendUnavailableError, match="HTTP 400: unknown adapter 'calm'"):
        _send(_asr(endpoint, sleeps))
    assert sleeps == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>gateway</html>", "not JSON"),
        (json.dumps({"results": []}).encode(), r"not transcription results \(0 results for 1"),
        (json.dumps([{"generated_text": "hi"}]).encode(), "not transcription results"),
    ],
)
def test_garbage_from_the_endpoint_is_a_503_not_retried(body: bytes, message: str) -> None:
    endpoint = Endpoint(lambda request: httpx2.Response(200, content=body))
    sleeps: list[float] = []
    with pytest.raises(BackendUnavailableError, match=message):
        _send(_asr(endpoint, sleeps))
    assert sleeps == [] and len(endpoint.requests) == 1


def test_offline_mode_is_a_configuration_error(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    settings = EndpointSettings(url=URL, max_retries=0)
    with pytest.raises(ConfigurationError, match="HF_HUB_OFFLINE"):
        _send(EndpointAsr(settings, None))


# batches and the concurrency limit


def test_windows_go_in_requests_of_batch_size_and_come_back_in_order() -> None:
    def echo(request: httpx2.Request) -> httpx2.Response:
        inputs = json.loads(request.content)["inputs"]
        results = [
            {"raw": language, "token_spans": [[0, 2]], "token_probabilities": [1.0]}
            for language in inputs["languages"]
        ]
        return httpx2.Response(200, json={"results": results})

    endpoint = Endpoint(*[echo] * 3)
    asr = _asr(endpoint, batch_size=4, max_concurrency=2, max_new_tokens=99)
    languages = [f"l{i}" for i in range(10)]
    results = asr.transcribe_segments(_windows(10), languages)
    assert [r.raw for r in results] == languages
    sizes = sorted(len(json.loads(r.content)["inputs"]["audio"]) for r in endpoint.requests)
    assert sizes == [2, 4, 4]
    assert {json.loads(r.content)["parameters"]["max_new_tokens"] for r in endpoint.requests} == {
        99
    }
    partial = asr.transcribe_segments(_windows(1), [None], max_new_tokens=5)
    assert partial and json.loads(endpoint.requests[-1].content)["parameters"] == {
        "max_new_tokens": 5
    }


def _wait_for(condition: Callable[[], bool], changed: threading.Condition) -> None:
    with changed:
        assert changed.wait_for(condition, timeout=60), "condition never held"


def test_no_more_than_max_concurrency_requests_are_in_flight() -> None:
    """Six callers at once against a limit of two: two requests reach the endpoint and are
    held there until the other four are seen waiting for a slot; then all finish."""
    active = 0
    most = 0
    lock = threading.Condition()
    release = threading.Event()

    def hold(request: httpx2.Request) -> httpx2.Response:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
            lock.notify_all()
        assert release.wait(60)
        with lock:
            active -= 1
        return httpx2.Response(200, json=_answer(request))

    endpoint = Endpoint(*[hold] * 6)
    asr = _asr(endpoint, max_concurrency=2)
    results: list[Any] = []
    callers = [threading.Thread(target=lambda: results.append(_send(asr))) for _ in range(6)]
    for t in callers:
        t.start()
    _wait_for(lambda: asr.slots.waiting == 4, asr.slots.changed)
    with lock:
        assert lock.wait_for(lambda: active == 2, timeout=60)
    assert asr.slots.in_use == 2 and active == 2  # four ready to go, none let through
    release.set()
    for t in callers:
        t.join(60)
    assert len(results) == 6 and most == 2
    assert asr.slots.in_use == 0 and asr.slots.waiting == 0


def test_a_request_keeps_its_slot_while_it_waits_to_retry() -> None:
    """A retrying request does not let another one in meanwhile: with one slot, the
    second caller waits until the first one's retries are over."""
    order: list[str] = []
    first_sleeping = threading.Event()
    resume = threading.Event()

    def sleep(seconds: float) -> None:
        order.append("sleep")
        first_sleeping.set()
        assert resume.wait(60)

    endpoint = Endpoint(503)
    asr = EndpointAsr(
        EndpointSettings(url=URL, max_concurrency=1),
        None,
        session=lambda: endpoint.client,
        sleep=sleep,
    )
    first = threading.Thread(target=lambda: order.append(f"first {len(_send(asr))}"))
    first.start()
    assert first_sleeping.wait(60)
    second = threading.Thread(target=lambda: order.append(f"second {len(_send(asr))}"))
    second.start()
    _wait_for(lambda: asr.slots.waiting == 1, asr.slots.changed)
    assert len(endpoint.requests) == 1  # the second did not get through
    resume.set()
    first.join(60)
    second.join(60)
    assert order == ["sleep", "first 1", "second 1"]


def test_the_speech_model_is_chosen_by_settings(monkeypatch) -> None:
    """``speech_model: endpoint`` loads the endpoint model, with no Whisper here when
    detection, the fallback and local drafts are all off."""
    from ethostral_serve.backends.endpoint import EndpointSpeechModel
    from ethostral_serve.engine import load_speech_model

    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    endpoint = Endpoint()
    settings = Settings(
        speech_model="endpoint",
        endpoint={
            "url": URL,
            "detect_language": False,
            "emotion_fallback": False,
            "drafts": "endpoint",
            "adapters": ["calm"],
            "batch_size": 3,
            "max_concurrency": 2,
        },
    )
    chosen = load_speech_model(settings)
    assert isinstance(chosen, EndpointSpeechModel)
    model = EndpointSpeechModel(settings, session=lambda: endpoint.client)
    assert model.whisper is None and not model.classifies and model.load_drafter() is None
    assert model.adapters == ("calm",) and model.batch_size == 6
    (result,) = model.transcribe_windows(_windows(1), [None], ["calm"])
    assert [w.text for w in result.words] == [" stop"] and result.language is None
    assert [e.emotion.label for e in result.emotions] == ["Angry"]
    sent = endpoint.requests[0]
    assert sent.headers["authorization"] == "Bearer hf_from_env"
    assert json.loads(sent.content)["inputs"]["adapters"] == ["calm"]
