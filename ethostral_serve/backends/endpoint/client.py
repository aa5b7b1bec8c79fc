"""Ethostral on a Hugging Face Inference Endpoint, seen from here: batches of windows
sent over HTTP (the format of :mod:`.wire`), with retries, backoff and a limit on the
requests in flight.

Requests go through ``huggingface_hub``'s shared HTTP session (``get_session``: its
proxy and certificate settings, a request id per call) with ``HF_TOKEN`` as the bearer
token. The retry loop is ours rather than ``http_backoff``'s, which sleeps with
``time.sleep`` (tests could not replace it), adds a second to every ``Retry-After``
without a bound and reads only its seconds form.

- 408, 429, 5xx, timeouts and connection errors are retried ``max_retries`` times,
  waiting ``retry_backoff_s``, doubling up to ``retry_max_backoff_s``, or what the
  answer's ``Retry-After`` asks (seconds or an HTTP date) up to ``retry_after_max_s``.
  An endpoint that stays down, asks for a longer wait, answers something that is not
  results, or refuses a request (another 4xx, e.g. the handler's 400 with its error) is
  a :class:`BackendUnavailableError` (503, "model unavailable").
- 401 and 403: the endpoint refused the service's token (``HF_TOKEN``, or an
  ``endpoint.url`` that points elsewhere). Callers get a 503 saying so
  (:class:`BackendUnavailableError`, not an opaque 500), never retried; the log names
  the URL.
- 404 (the URL) and 413 (the batch) are configuration faults: :class:`ConfigurationError`,
  never retried.
- A request holds its slot while it waits to retry, so retries add no load to an
  endpoint that is struggling.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ethostral_serve.backends.endpoint.wire import (
    MalformedAnswerError,
    decode_results,
    encode_request,
)
from ethostral_serve.backends.ethostral import EthostralResult
from ethostral_serve.backends.windows import check_adapter
from ethostral_serve.errors import BackendUnavailableError, ConfigurationError
from ethostral_serve.http_dates import retry_after_seconds
from ethostral_serve.settings import EndpointSettings

log = logging.getLogger("ethostral_serve.endpoint")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TOKEN_STATUS = frozenset({401, 403})
CONFIG_STATUS = {
    404: "does not exist (HTTP 404): check endpoint.url",
    413: "refused a request as too large (HTTP 413): lower endpoint.batch_size",
}
UNAVAILABLE = "the speech model endpoint"  # what users read in a 503 (no URL)


class Slots:
    """A counting semaphore that says how many slots are taken and how many callers wait
    (for logs, and for tests that check the limit without timing)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.in_use = 0
        self.waiting = 0
        self.changed = threading.Condition()

    def __enter__(self) -> Slots:
        with self.changed:
            self.waiting += 1
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.in_use < self.size)
            self.waiting -= 1
            self.in_use += 1
            self.changed.notify_all()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.changed:
            self.in_use -= 1
            self.changed.notify_all()


class EndpointAsr:
    """The endpoint as Ethostral's recognizer: ``transcribe_segments`` sends the windows
    in requests of ``batch_size``, at most ``max_concurrency`` in flight from this
    object (all callers together), and reads each window's tagged transcript.

    ``session`` returns the HTTP client for each attempt (default: huggingface_hub's
    ``get_session``); ``sleep`` and ``clock`` (wall time, for ``Retry-After`` dates) are
    there for tests.
    """

    def __init__(
        self,
        settings: EndpointSettings,
        token: str | None,
        session: Callable[[], Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import httpx2

        if not settings.url:
            raise ConfigurationError(
                "speech_model 'endpoint' needs endpoint.url (ETHOSTRAL_ENDPOINT__URL): the "
                "Inference Endpoint's URL"
            )
        if session is None:
            from huggingface_hub.utils import get_session

            session = get_session
        self.settings = settings
        self.url: str = settings.url
        self._token = token
        self._session = session
        self._sleep = sleep
        self._clock = clock
        self._transient = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
        self.slots = Slots(settings.max_concurrency)
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="endpoint")

    @property
    def adapters(self) -> tuple[str, ...]:
        """The named adapters the endpoint serves (``endpoint.adapters``)."""
        return tuple(self.settings.adapters)

    def check_adapter(self, name: str | None) -> str | None:
        """``name`` if the endpoint serves it (None: its default); else
        ``UnknownAdapterError``."""
        return check_adapter(name, self.adapters)

    def load_adapter(self, name: str) -> None:
        """Nothing to load here: the endpoint loads its adapters itself."""
        self.check_adapter(name)

    def unload_adapter(self, name: str) -> None:
        """Nothing to unload here."""

    def transcribe_segments(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        max_new_tokens: int | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[EthostralResult]:
        """Each 16 kHz window's tagged transcript, from requests of ``batch_size`` windows
        sent side by side; ``max_new_tokens`` defaults to ``endpoint.max_new_tokens``
        (None: the endpoint's own)."""
        named = list(adapters) if adapters is not None else [None] * len(audios)
        if not len(audios) == len(languages) == len(named):
            raise ValueError("one language and one adapter (or None) per segment")
        for name in named:
            self.check_adapter(name)
        tokens = max_new_tokens or self.settings.max_new_tokens
        step = self.settings.batch_size
        batches = [
            (list(audios[i : i + step]), list(languages[i : i + step]), named[i : i + step])
            for i in range(0, len(audios), step)
        ]

        def send(
            batch: tuple[list[np.ndarray], list[str | None], list[str | None]],
        ) -> list[EthostralResult]:
            return self.request(*batch, max_new_tokens=tokens)

        if len(batches) <= 1:
            return [r for b in batches for r in send(b)]
        return [r for part in self._pool.map(send, batches) for r in part]

    def request(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None],
        max_new_tokens: int | None = None,
    ) -> list[EthostralResult]:
        """One request: these windows' tagged transcripts (waits for a free slot)."""
        body = encode_request(
            audios, languages, adapters, max_new_tokens, self.settings.audio_encoding
        )
        payload = self._post(json.dumps(body).encode())
        try:
            return decode_results(payload, len(audios))
        except MalformedAnswerError as exc:
            log.warning("the endpoint %s answered something else than results: %s", self.url, exc)
            raise BackendUnavailableError(
                f"{UNAVAILABLE} answered something that is not transcription results ({exc})"
            ) from None

    def _post(self, body: bytes) -> Any:
        """The JSON answer of one POST, retried as the module says."""
        s = self.settings
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        backoff = min(s.retry_backoff_s, s.retry_max_backoff_s)
        problem = ""
        with self.slots:
            for attempt in range(s.max_retries + 1):
                try:
                    response = self._send(body, headers)
                except self._transient as exc:
                    problem, wait = _describe(exc, s.timeout_s), backoff
                else:
                    if response.status_code == 200:
                        return _json(response)
                    self._refuse(response)  # raises unless the status is worth a retry
                    problem = f"HTTP {response.status_code}"
                    asked = self._retry_after(response)
                    if asked is not None and asked > s.retry_after_max_s:
                        raise BackendUnavailableError(
                            f"{UNAVAILABLE} is unavailable ({problem}) and asks to retry in "
                            f"{asked:.0f} s; try again later"
                        )
                    wait = backoff if asked is None else asked
                if attempt == s.max_retries:
                    break
                log.warning(
                    "endpoint %s: %s; retry %d of %d in %.1f s",
                    self.url,
                    problem,
                    attempt + 1,
                    s.max_retries,
                    wait,
                )
                self._sleep(wait)
                backoff = min(backoff * 2, s.retry_max_backoff_s)
        log.warning("endpoint %s: %s after %d attempts; giving up", self.url, problem, attempt + 1)
        raise BackendUnavailableError(
            f"{UNAVAILABLE} is unavailable ({problem}; {attempt + 1} attempts); try again later"
        )

    def _send(self, body: bytes, headers: dict[str, str]) -> Any:
        from huggingface_hub.errors import OfflineModeIsEnabled

        try:
            return self._session().request(
                "POST", self.url, content=body, headers=headers, timeout=self.settings.timeout_s
            )
        except OfflineModeIsEnabled:
            raise ConfigurationError(
                "HF_HUB_OFFLINE is set, so huggingface_hub's HTTP session refuses every "
                f"request, the endpoint's ({self.url}) too: unset it with speech_model "
                "'endpoint'"
            ) from None

    def _refuse(self, response: Any) -> None:
        """Raise for an answer that retrying will not change."""
        status = response.status_code
        if status in RETRY_STATUS:
            return
        if status in TOKEN_STATUS:
            token = "set" if self._token else "not set"
            log.error(
                "endpoint %s refused the token (HTTP %d; HF_TOKEN is %s): set HF_TOKEN to a "
                "token allowed to call it, or check endpoint.url",
                self.url,
                status,
                token,
            )
            raise BackendUnavailableError(
                f"{UNAVAILABLE} refused the service's token (HTTP {status}; HF_TOKEN is "
                f"{token}): the server's HF_TOKEN or endpoint.url needs fixing"
            )
        if status in CONFIG_STATUS:
            what = CONFIG_STATUS[status]
            raise ConfigurationError(f"the speech model endpoint {self.url} {what}")
        detail = _error_text(response)
        log.warning("endpoint %s refused a request: HTTP %d %s", self.url, status, detail)
        raise BackendUnavailableError(
            f"{UNAVAILABLE} could not run the request (HTTP {status}"
            + (f": {detail}" if detail else "")
            + ")"
        )

    def _retry_after(self, response: Any) -> float | None:
        """Seconds the answer's ``Retry-After`` asks to wait (None: it asks nothing)."""
        return retry_after_seconds(response.headers.get("retry-after"), now=self._clock())


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        log.warning("the endpoint answered 200 with a body that is not JSON")
        raise BackendUnavailableError(
            f"{UNAVAILABLE} answered something that is not JSON"
        ) from None


def _error_text(response: Any) -> str:
    """The handler's error message (the toolkit answers ``{"error": "..."}``), shortened."""
    try:
        body = response.json()
        text = body.get("error") if isinstance(body, dict) else None
        text = text if isinstance(text, str) else response.text
    except ValueError:
        text = response.text
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _describe(exc: Exception, timeout_s: float) -> str:
    import httpx2

    if isinstance(exc, httpx2.TimeoutException):
        return f"no answer within {timeout_s:g} s ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
