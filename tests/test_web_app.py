"""The web app in a real browser: Debian's Chromium driven by Playwright, against the real
app (embedded models, a real Redis, jobs, live streams) served by uvicorn on a free
loopback port. The microphone is a WAV of real speech (Chromium's fake capture device).

Every wait is on a DOM condition with a generous timeout; nothing sleeps. Screenshots of
the main views are saved and checked to be PNGs; they go to docs/screenshots/ (which the
README shows) only when ETHOSTRAL_SCREENSHOTS_DIR=docs/screenshots is set, so a plain test
run leaves the checkout as it was.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
import uuid
import wave
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from live_server import serving
from speech import Conversation, two_speaker_conversation

from benchmarks.common import wer_counts
from ethostral_serve.api.app import create_app
from ethostral_serve.api.auth import Access
from ethostral_serve.api.jobs import Jobs
from ethostral_serve.keys import KeyLimits, KeyStore
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.schema import Segment, Session
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import AuthSettings, JobSettings, Settings

T = TypeVar("T")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
expect = sync_api.expect

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WAIT_MS = 240_000  # generous bound on a pipeline run on a loaded 2-core machine
FAST = {"diarize": "false", "emotion": "false", "language": "en"}
MIC_RATE = 48_000
RUN_STAGES = {"decode", "vad", "asr", "diarize", "segment", "emotion"}


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    """The app behind uvicorn: its base URL, and (auth on) a way to make keys."""

    base: str
    settings: Settings
    redis_url: str

    def key(self, name: str) -> tuple[str, str]:
        """A new API key: its id and the secret."""
        keys = KeyStore(self.redis_url, prefix=self.settings.auth.key_prefix)

        async def create() -> tuple[str, str]:
            try:
                key, secret = await keys.create(name, KeyLimits())
                return key.id, secret
            finally:
                await keys.aclose()

        return _off_loop(create())

    def store(self, sessions: list[Session], owner: str) -> None:
        """Store ``sessions`` directly (no pipeline run), owned by the key id ``owner``."""
        store = SessionStore(self.redis_url, key_prefix=f"{self.settings.auth.key_prefix}session:")

        async def save() -> None:
            try:
                for session in sessions:
                    await store.save(session, owner=owner)
            finally:
                await store.aclose()

        _off_loop(save())

    def api(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=WAIT_MS / 1000)


def _off_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a thread of its own: Playwright's sync API runs an event loop on
    the test's thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture(scope="module")
def stream_backends(engine: Any) -> Any:
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return LocalStreamBackends(SileroStreamingVad(), engine.model, engine.diarizer)


@contextmanager
def _service(
    engine: Any, stream_backends: Any, redis_url: str, spool: Path, auth: bool
) -> Iterator[Service]:
    prefix = f"web-{uuid.uuid4().hex[:8]}:"
    settings: Settings = engine.settings.model_copy(
        update={
            "auth": AuthSettings(required=auth, key_prefix=prefix),
            "jobs": JobSettings(spool_dir=spool, spool_host="test"),
            # drafts are never skipped for waiting, so partials come however loaded the
            # machine is
            "stream": engine.settings.stream.model_copy(update={"max_draft_wait_s": 3600.0}),
        }
    )
    runner = PipelineRunner.traced(settings, engine.vad, engine.diarizer, engine.model)
    app = create_app(
        runner,
        SessionStore(redis_url, key_prefix=f"{prefix}session:"),
        settings,
        stream_backends=stream_backends,
        access=Access.from_settings(redis_url, settings),
        jobs=Jobs.from_settings(redis_url, settings),
    )
    with serving(app) as base:
        yield Service(base, settings, redis_url)


@pytest.fixture(scope="module")
def open_service(engine, stream_backends, redis_url, tmp_path_factory) -> Iterator[Service]:
    """API keys off (as serve_config.yaml runs on loopback)."""
    spool = tmp_path_factory.mktemp("spool-open")
    with _service(engine, stream_backends, redis_url, spool, auth=False) as service:
        yield service


@pytest.fixture(scope="module")
def auth_service(engine, stream_backends, redis_url, tmp_path_factory) -> Iterator[Service]:
    """API keys required."""
    spool = tmp_path_factory.mktemp("spool-auth")
    with _service(engine, stream_backends, redis_url, spool, auth=True) as service:
        yield service


# ------------------------------------------------------------------------------ media


@pytest.fixture(scope="module")
def talk() -> Conversation:
    """Two LibriSpeech speakers taking turns, about 23 s."""
    return two_speaker_conversation(turns_each=2)


@pytest.fixture(scope="module")
def talk_wav(talk: Conversation, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("media") / "conversation.wav"
    path.write_bytes(talk.wav_bytes())
    return path


@dataclass
class Mic:
    path: Path
    reference: str
    duration_ms: int
    starts_ms: list[int]  # where each utterance begins


@pytest.fixture(scope="module")
def mic(tmp_path_factory) -> Mic:
    """A 48 kHz WAV of four short utterances of real speech with pauses: the microphone."""
    import soxr

    talk = two_speaker_conversation(turns_each=2, max_utterance_s=6.0)
    samples = soxr.resample(talk.samples, 16_000, MIC_RATE)
    samples = np.concatenate([samples, np.zeros(MIC_RATE, np.float32)])
    path = tmp_path_factory.mktemp("mic") / "mic-48k.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(MIC_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    starts = [round(1000 * start) for start, _, _ in talk.truth]
    return Mic(path, talk.reference, round(1000 * len(samples) / MIC_RATE), starts)


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(mic: Mic) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic.path}%noloop",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


# Records what the page showed, however briefly: each job state added to the progress
# panel (with the progress bar's value then), and each upload-progress label.
RECORDER = """
window.__seen = {stages: [], labels: []};
new MutationObserver((records) => {
  for (const r of records) {
    for (const n of r.addedNodes) {
      const el = n.nodeType === 1 ? n : n.parentElement;
      if (!el) continue;
      if (n.nodeType === 1 && n.matches('.stages li')) {
        const bar = document.querySelector('.job-panel progress');
        window.__seen.stages.push({status: n.dataset.status, stage: n.dataset.stage,
                                   progress: bar ? bar.value : null});
      }
      if (el.id === 'progress-label') window.__seen.labels.push(el.textContent);
    }
  }
}).observe(document, {childList: true, subtree: true});
"""


class Page:
    """A Playwright page that fails the test on a script error or a CSP violation."""

    def __init__(self, browser: Any, base: str, **context: Any) -> None:
        self.base = base
        self.context = browser.new_context(accept_downloads=True, **context)
        self.context.add_init_script(RECORDER)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.problems: list[str] = []
        self.page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        self.page.on(
            "console",
            lambda msg: (
                self.problems.append(f"console: {msg.text}")
                if msg.type == "error" and "Content Security Policy" in msg.text
                else None
            ),
        )

    def goto(self, route: str) -> Any:
        self.page.goto(f"{self.base}/{route}")
        return self.page

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def open_page(browser, open_service) -> Iterator[Page]:
    page = Page(browser, open_service.base, viewport={"width": 1280, "height": 900})
    yield page
    page.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ETHOSTRAL_SCREENSHOTS_DIR (docs/screenshots to refresh the
    README's), else a directory pytest cleans up."""
    chosen = os.environ.get("ETHOSTRAL_SCREENSHOTS_DIR")
    return Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")


def _shot(page: Any, folder: Path, name: str, **options: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), **options)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- helpers

SEGMENTS_JS = """els => els.map(e => ({
  id: e.dataset.segmentId,
  speaker: e.querySelector('.speaker-label').textContent,
  text: e.querySelector('.text').textContent,
  emotion: e.querySelector('.emotion-label')?.textContent ?? null,
}))"""


def _rendered(page: Any, scope: str = ".transcript-view") -> list[dict[str, Any]]:
    return page.eval_on_selector_all(f"{scope} li.segment", SEGMENTS_JS)


def _expected(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "id": s["id"],
            "speaker": s["speaker"],
            "text": s["text"],
            "emotion": s["emotion"]["label"] if s["emotion"] else None,
        }
        for s in session["segments"]
    ]


def _open_transcript(page: Any) -> str:
    """Wait for a transcript view to be shown; its session id."""
    view = page.locator(".transcript-view")
    expect(view).to_be_visible(timeout=WAIT_MS)
    expect(page).to_have_url(re.compile(r"#/sessions/[0-9a-f-]{36}$"))
    return str(view.get_attribute("data-session-id"))


def _upload(page: Any, wav: Path, *checks: str) -> None:
    page.set_input_files("#file", str(wav))
    for name in checks:
        page.check(f"#{name}")
    page.get_by_role("button", name="Transcribe").click()


DOT_DOT_PATHS = (
    "/assets/../sessions",
    "/assets/%2e%2e/sessions",
    "/assets/%2E%2E/sessions",
    "/assets/.%2e/sessions",
    "/assets/%2e%2e%2fsessions",
    "/assets/..%2f..%2fsessions",
)


def _raw_status(base: str, target: str) -> int:
    """The status of ``GET <target>`` sent exactly as written (no client normalises it)."""
    url = httpx.URL(base)
    with socket.create_connection((url.host, url.port or 80), timeout=60) as conn:
        request = f"GET {target} HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n\r\n"
        conn.sendall(request.encode("ascii"))
        head = b""
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            assert chunk, f"no answer to GET {target}"
            head += chunk
    return int(head.split(b" ", 2)[1])


def _wait_until(page: Any, predicate: str, arg: Any = None, timeout_ms: int = WAIT_MS) -> None:
    """Poll a JS function of ``arg`` until it is truthy. Playwright's wait_for_function
    polls with eval once its first check fails, which the app's CSP (rightly) refuses;
    ``page.evaluate`` is not subject to it."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(predicate, arg):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        page.wait_for_timeout(50)


def _wait_for_playback_in(page: Any, segment: dict[str, Any]) -> None:
    """Wait until the player's position lies inside ``segment`` (the segment is
    highlighted at once; the media element reaches the new position when its seek is
    done, which under load takes a moment)."""
    _wait_until(
        page,
        """([start, end]) => {
            const ms = document.querySelector('.player audio').currentTime * 1000;
            return start - 50 <= ms && ms < end;
        }""",
        arg=[segment["start_ms"], segment["end_ms"]],
    )


def _seen(page: Any) -> dict[str, list[Any]]:
    return page.evaluate("window.__seen")


def _no_horizontal_overflow(page: Any) -> None:
    wide = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert wide[0] <= wide[1], f"content {wide[0]} px wide in a {wide[1]} px viewport"


# ------------------------------------------------------------------------------ tests


def test_page_and_assets_are_served_without_shadowing_the_api(open_service, auth_service):
    """GET / is the page, /assets/* its hashed files (open even with keys on, long-cached);
    API routes, /docs and /openapi.json answer as before."""
    for service in (open_service, auth_service):
        with service.api() as http:
            page = http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-cache"
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assets = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', page.text)
            assert any(a.endswith(".js") for a in assets) and any(
                a.endswith(".css") for a in assets
            )
            for asset in assets:
                r = http.get(f"/{asset}")
                assert r.status_code == 200, asset
                assert "immutable" in r.headers["cache-control"]
            assert http.get("/assets/missing.js").status_code == 404
            assert http.get("/docs").status_code == 200
            spec = http.get("/openapi.json").json()
            assert "/" not in spec["paths"] and not any(
                p.startswith("/assets") for p in spec["paths"]
            )
    with auth_service.api() as http:
        # only the page and its assets are open: the API still wants a key
        assert http.get("/sessions").status_code == 401
        assert http.post("/", content=b"x").status_code in (401, 405)
        assert http.get("/index.html").status_code == 401
    # a dot-dot path under /assets/ is not an asset: it needs a key like the API. Sent as
    # raw request lines: httpx would resolve "/assets/../sessions" to "/sessions" first.
    for target in DOT_DOT_PATHS:
        assert _raw_status(auth_service.base, target) == 401, target
    with open_service.api() as http:
        assert http.get("/sessions").status_code == 200
        assert http.get("/healthz").status_code == 200


def test_upload_shows_the_stored_session_and_syncs_the_player(
    open_page, open_service, talk_wav, screenshots
):
    page = open_page.goto("#/")
    _upload(page, talk_wav, "store_audio")
    sid = _open_transcript(page)
    seen = _seen(page)
    assert "Uploading 100%" in seen["labels"]  # XHR upload progress was shown
    with open_service.api() as http:
        stored = http.get(f"/sessions/{sid}").json()
        srt = http.get(f"/sessions/{sid}/srt").text
        vtt = http.get(f"/sessions/{sid}/vtt").text
    expected = _expected(stored)
    assert len({s["speaker"] for s in expected}) >= 2  # a real two-speaker conversation
    assert all(s["emotion"] for s in expected)
    expect(page.locator(".transcript-view li.segment")).to_have_count(len(expected))
    assert _rendered(page) == expected
    # the speakers' colours differ; the timeline has a valence and an arousal per speaker
    colours = page.eval_on_selector_all(
        ".transcript-view .legend .chip", "els => els.map(e => getComputedStyle(e).backgroundColor)"
    )
    assert len(set(colours)) == len(colours) >= 2
    expect(page.locator(".timeline canvas").first).to_be_visible()
    legend = page.locator(".timeline .u-legend").inner_text()
    assert "s0 valence" in legend and "s1 arousal" in legend

    # the player plays the local file; a segment's time seeks there and highlights it
    audio = page.locator(".player audio")
    expect(audio).to_have_attribute("src", re.compile(r"^blob:"))
    _wait_until(page, "() => document.querySelector('.player audio').readyState >= 1")
    items = page.locator(".transcript-view li.segment")
    second = stored["segments"][1]
    items.nth(1).locator("button.seek").click()
    expect(items.nth(1)).to_have_attribute("aria-current", "true")
    _wait_for_playback_in(page, second)
    expect(items.nth(0)).not_to_have_attribute("aria-current", "true")
    # keyboard: Tab reaches the next segment's button and Enter seeks there
    items.nth(1).locator("button.seek").focus()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(items.nth(2)).to_have_attribute("aria-current", "true")
    _wait_for_playback_in(page, stored["segments"][2])
    # a click on the timeline seeks to the time under the pointer (the x axis spans the file)
    over = page.locator(".timeline .u-over")
    box = over.bounding_box()
    assert box is not None
    over.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})
    _wait_until(
        page,
        "ms => Math.abs(document.querySelector('.player audio').currentTime * 1000 - ms) < 1500",
        arg=0.75 * stored["duration_ms"],
    )
    items.nth(1).locator("button.seek").click()
    expect(items.nth(1)).to_have_attribute("aria-current", "true")
    _shot(page, screenshots, "transcript", full_page=True)

    # downloads: the service's SRT and VTT, and the session as JSON
    for name, body in (("SRT", srt), ("VTT", vtt)):
        with page.expect_download() as download:
            page.get_by_role("button", name=name, exact=True).click()
        assert Path(download.value.path()).read_text(encoding="utf-8") == body
        assert download.value.suggested_filename == f"conversation.{name.lower()}"
    with page.expect_download() as download:
        page.get_by_role("button", name="JSON", exact=True).click()
    assert json.loads(Path(download.value.path()).read_text(encoding="utf-8")) == stored

    # opened afresh (no local file), the session plays the audio the service kept
    page.reload()
    _open_transcript(page)
    expect(audio).to_have_attribute("src", re.compile(r"^blob:"))
    _wait_until(page, "() => document.querySelector('.player audio').readyState >= 1")
    duration = page.evaluate("document.querySelector('.player audio').duration")
    assert abs(duration * 1000 - stored["duration_ms"]) < 500
    assert _rendered(page) == expected


def test_async_job_shows_progress_then_the_transcript(open_page, open_service, talk_wav):
    page = open_page.goto("#/")
    _upload(page, talk_wav, "async")
    sid = _open_transcript(page)
    stages = _seen(page)["stages"]
    statuses = [s["status"] for s in stages]
    # the job's states as the events told them: queued, the stages run, then done
    assert statuses[0] == "queued" and statuses[-1] == "done", stages
    running = {s["stage"] for s in stages if s["status"] == "running" and s["stage"]}
    assert running and running <= RUN_STAGES, stages
    progress = [s["progress"] for s in stages]
    assert progress == sorted(progress) and progress[-1] == 1
    with open_service.api() as http:
        stored = http.get(f"/sessions/{sid}").json()
    assert _rendered(page) == _expected(stored)
    # the upload did not ask the service to keep its audio: opened afresh, none plays
    page.reload()
    _open_transcript(page)
    expect(page.locator(".no-audio")).to_contain_text("did not keep")
    expect(page.locator(".player audio")).to_have_count(0)
    assert _rendered(page) == _expected(stored)


def test_failures_are_shown(open_page, tmp_path):
    page = open_page.goto("#/")
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio at all\n" * 100)
    _upload(page, bad)
    expect(page.locator(".job-panel .status-line")).to_contain_text("Failed:", timeout=WAIT_MS)
    expect(page.locator(".job-panel .status-line")).to_have_class(re.compile("error"))
    page = open_page.goto(f"#/sessions/{uuid.uuid4()}")
    expect(page.get_by_role("status")).to_contain_text("No such session")
    page = open_page.goto("#/nowhere")
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")


@pytest.fixture(scope="module")
def keys(auth_service: Service, talk: Conversation) -> dict[str, tuple[str, str]]:
    """Two API keys, each with one stored session: name -> (key, session id)."""
    out = {}
    for name in ("alice", "bob"):
        _, secret = auth_service.key(name)
        with auth_service.api(secret) as http:
            r = http.post(
                "/transcribe",
                files={"file": (f"{name}.wav", talk.wav_bytes(), "audio/wav")},
                data=FAST,
            )
            assert r.status_code == 200, r.text
        out[name] = (secret, r.json()["id"])
    return out


PAGE = 20  # sessions per page in the list (web/src/sessions-view.ts)


def test_api_key_prompt_session_list_and_delete(browser, auth_service, keys, screenshots):
    alice, alice_sid = keys["alice"]
    _, bob_sid = keys["bob"]
    p = Page(browser, auth_service.base, viewport={"width": 1280, "height": 900})
    try:
        page = p.goto("#/")
        # the page loads without a key: nothing asks for one until the API is called
        expect(page.get_by_role("heading", name="Transcribe a recording")).to_be_visible()
        dialog = page.locator("#key-dialog")
        expect(dialog).not_to_be_visible()
        page.get_by_role("link", name="Sessions", exact=True).click()
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("needs an API key")
        # a wrong key is refused and asked for again
        page.get_by_label("Key", exact=True).fill("eth_not-a-key")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(dialog).to_contain_text("refused the key")
        expect(dialog).to_be_visible()
        page.get_by_label("Key", exact=True).fill(alice)
        page.get_by_role("button", name="Save", exact=True).click()
        expect(dialog).not_to_be_visible()
        rows = page.locator(".session-list li.session-row")
        expect(rows).to_have_count(1)  # only this key's sessions
        expect(rows.first).to_have_attribute("data-session-id", alice_sid)
        expect(page.get_by_role("button", name="Load more")).to_be_hidden()
        assert page.locator(f'[data-session-id="{bob_sid}"]').count() == 0
        assert page.evaluate("localStorage.getItem('ethostral.apiKey')") == alice
        _shot(page, screenshots, "sessions")
        # open it, back, then delete it
        rows.first.get_by_role("link").click()
        assert _open_transcript(page) == alice_sid
        page.go_back()
        expect(rows).to_have_count(1)
        page.once("dialog", lambda d: d.accept())
        rows.first.get_by_role("button", name="Delete alice.wav").click()
        expect(rows).to_have_count(0)
        expect(page.locator(".sessions-view [role=status]")).to_have_text("No sessions yet.")
        with auth_service.api(alice) as http:
            assert http.get(f"/sessions/{alice_sid}").status_code == 404
        with auth_service.api(keys["bob"][0]) as http:
            assert http.get(f"/sessions/{bob_sid}").status_code == 200
        # the key is kept: a new page needs no prompt
        page.reload()
        expect(page.locator(".sessions-view [role=status]")).to_have_text("No sessions yet.")
        expect(dialog).not_to_be_visible()
    finally:
        p.close()


def test_session_list_pages(browser, auth_service):
    """More sessions than a page: "Load more" fetches the next page with the cursor."""
    key_id, secret = auth_service.key("carol")
    sessions = [
        Session(
            filename=f"call-{i:02d}.wav",
            language="en",
            duration_ms=1000 * (i + 1),
            created_at=f"2026-11-{1 + i:02d}T09:00:00.000+00:00",
            segments=[Segment(speaker="s0", start_ms=0, end_ms=900, text="hello", emotion=None)],
        )
        for i in range(PAGE + 5)
    ]
    auth_service.store(sessions, owner=key_id)
    newest_first = [s.id for s in sorted(sessions, key=lambda s: s.created_at, reverse=True)]
    p = Page(browser, auth_service.base, viewport={"width": 1280, "height": 900})
    p.context.add_init_script(f"localStorage.setItem('ethostral.apiKey', {json.dumps(secret)})")
    try:
        page = p.goto("#/sessions")
        rows = page.locator(".session-list li.session-row")
        expect(rows).to_have_count(PAGE)
        more = page.get_by_role("button", name="Load more")
        more.click()
        expect(rows).to_have_count(PAGE + 5)
        expect(more).to_be_hidden()
        ids = page.eval_on_selector_all(".session-row", "els => els.map(e => e.dataset.sessionId)")
        assert ids == newest_first
    finally:
        p.close()


def test_live_stream_refused_for_its_key_asks_for_another(browser, auth_service, keys):
    p = Page(browser, auth_service.base, viewport={"width": 1280, "height": 900})
    p.context.add_init_script("localStorage.setItem('ethostral.apiKey', 'eth_revoked-or-wrong')")
    try:
        page = p.goto("#/live")
        page.get_by_role("button", name="Start recording").click()
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()  # the stream was closed with 4401
        expect(dialog).to_contain_text("unknown or revoked API key")
        page.get_by_label("Key", exact=True).fill(keys["alice"][0])
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.locator(".live-status")).to_have_text("Key saved. Press Start to record.")
        expect(page.get_by_role("button", name="Start recording")).to_be_enabled()
        assert page.evaluate("localStorage.getItem('ethostral.apiKey')") == keys["alice"][0]
    finally:
        p.close()


def test_microphone_partials_then_finals_then_a_stored_session(
    browser, auth_service, keys, mic, screenshots
):
    """The fake microphone plays ``mic`` (48 kHz) into the page, which streams it with the
    API key as a WebSocket subprotocol; the events the socket got are compared with what
    the page shows."""
    alice = keys["alice"][0]
    p = Page(browser, auth_service.base, viewport={"width": 1280, "height": 900})
    p.context.add_init_script(f"localStorage.setItem('ethostral.apiKey', {json.dumps(alice)})")
    events: list[dict[str, Any]] = []
    sockets: list[str] = []

    def on_socket(ws: Any) -> None:
        sockets.append(ws.url)
        ws.on("framereceived", lambda payload: events.append(json.loads(payload)))

    try:
        page = p.goto("#/live")
        page.on("websocket", on_socket)
        keep = page.get_by_label("Keep the audio on the server")
        expect(keep).not_to_be_checked()  # as on the upload page: off unless asked
        keep.check()
        page.get_by_role("button", name="Start recording").click()
        status = page.locator(".live-status")
        # every second of the recording has been sent (the page counts what it sent)
        _wait_until(
            page,
            "ms => Number(document.querySelector('.live-status').dataset.sentMs || 0) > ms",
            mic.duration_ms - 500,  # all the speech; the WAV ends with 1 s of silence
        )
        finals = page.locator(".live-segments li.segment.final")
        expect(finals.first).to_be_visible()
        _shot(page, screenshots, "live")
        page.get_by_role("button", name="Stop").click()
        link = page.locator("a.open-session")
        expect(link).to_be_visible(timeout=WAIT_MS)
        expect(status).to_have_text("Done.")
        sid = str(link.get_attribute("href")).rsplit("/", 1)[1]
        rendered = _rendered(page, ".live-segments")
        drafts = page.eval_on_selector_all(
            ".live-segments li.segment", "els => els.map(e => [e.className, e.dataset.partials])"
        )
        announced = page.locator("#live-announce").inner_text()

        # opened afresh (no local recording), the player loads the audio the service kept
        p.goto(f"#/sessions/{sid}")
        with page.expect_response(lambda r: r.url.endswith(f"/sessions/{sid}/audio")) as got:
            page.reload()
            assert _open_transcript(page) == sid
        assert got.value.status == 200
        assert got.value.headers["content-type"].startswith("audio/ogg")
        expect(page.locator(".player audio")).to_have_attribute("src", re.compile(r"^blob:"))
        _wait_until(page, "() => document.querySelector('.player audio').readyState >= 1")
        played_s = page.evaluate("document.querySelector('.player audio').duration")
        expect(page.locator(".no-audio")).to_have_count(0)
    finally:
        p.close()

    rate = re.search(r"sample_rate=(\d+)", sockets[0])
    # the rate the page's audio runs at: the fake device's own 44.1 kHz with the browser's
    # call processing off (48 kHz with it on), whatever the WAV's rate
    assert rate and int(rate.group(1)) in (44_100, 48_000)
    assert re.search(r"[?&]store_audio=true(&|$)", sockets[0]), sockets[0]
    partials = [e for e in events if e["type"] == "partial"]
    final_events = [e for e in events if e["type"] == "final"]
    assert partials and final_events and events[-1] == {"type": "session", "session_id": sid}
    # each final replaced its partials in place: same element, now final, in start order
    by_id = {e["segment_id"]: e for e in final_events}
    assert [r["id"] for r in rendered] == [
        e["segment_id"] for e in sorted(final_events, key=lambda e: e["start_ms"])
    ]
    for r in rendered:
        f = by_id[r["id"]]
        assert (r["speaker"], r["text"]) == (f["speaker"], f["text"])
        assert r["emotion"] == f["emotion"]["label"]
        assert f["text"] in announced
    assert all("final" in cls and "partial" not in cls for cls, _ in drafts)
    drafted = {e["segment_id"] for e in partials}
    assert drafted <= set(by_id)  # every partial's utterance got its final
    assert [int(n) for _, n in drafts] == [
        sum(e["segment_id"] == r["id"] for e in partials) for r in rendered
    ]
    # the audio arrived at the rate the page said: each utterance's final starts where it
    # was spoken (relative to the first; a wrong rate would stretch these by 9 % or more)
    starts = [f["start_ms"] for f in final_events]
    offset = min(starts) - mic.starts_ms[0]
    for t in mic.starts_ms:
        assert any(abs(s - offset - t) <= 400 for s in starts), (t, offset, sorted(starts))
    # ... and as speech: the finals read like the reference
    wer, _ = wer_counts([mic.reference], [" ".join(r["text"] for r in rendered)])
    assert wer < 0.35, wer
    with auth_service.api(alice) as http:
        stored = http.get(f"/sessions/{sid}")
        kept = http.get(f"/sessions/{sid}/audio")
    assert stored.status_code == 200
    assert set(by_id) <= {s["id"] for s in stored.json()["segments"]}
    assert stored.json()["has_audio"] is True
    assert kept.status_code == 200 and kept.content.startswith(b"OggS")
    assert abs(played_s * 1000 - stored.json()["duration_ms"]) < 500


def test_session_text_is_shown_as_text_never_as_markup(browser, auth_service):
    """A transcript (or file name) that looks like HTML is shown literally: nothing in it
    becomes an element or runs."""
    key_id, secret = auth_service.key("markup")
    markup = '<img src=x onerror="window.__xss=1">'
    session = Session(
        filename=f"{markup}.wav",
        language="en",
        duration_ms=1000,
        segments=[Segment(speaker="s0", start_ms=0, end_ms=900, text=markup, emotion=None)],
    )
    auth_service.store([session], owner=key_id)
    p = Page(browser, auth_service.base, viewport={"width": 1280, "height": 900})
    p.context.add_init_script(f"localStorage.setItem('ethostral.apiKey', {json.dumps(secret)})")
    try:
        page = p.goto("#/sessions")
        row = page.locator(f'.session-list li.session-row[data-session-id="{session.id}"]')
        expect(row).to_contain_text(f"{markup}.wav")
        row.get_by_role("link").click()
        assert _open_transcript(page) == session.id
        expect(page.locator(".transcript-view li.segment .text")).to_have_text(markup)
        expect(page.get_by_role("heading", level=1)).to_contain_text(markup)
        assert page.locator("main img").count() == 0  # no element was made of the text
        assert page.evaluate("typeof window.__xss") == "undefined"
    finally:
        p.close()  # fails on a CSP violation too (an inline handler the policy blocked)


@pytest.fixture(scope="module")
def api_session(open_service: Service, talk: Conversation) -> dict[str, Any]:
    with open_service.api() as http:
        r = http.post("/transcribe", files={"file": ("meeting.wav", talk.wav_bytes(), "audio/wav")})
        assert r.status_code == 200, r.text
    return r.json()


def test_phone_width_has_no_horizontal_overflow(browser, open_service, api_session, screenshots):
    p = Page(
        browser,
        open_service.base,
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        page = p.goto("#/")
        expect(page.get_by_role("heading", name="Transcribe a recording")).to_be_visible()
        _no_horizontal_overflow(page)
        page = p.goto("#/live")
        expect(page.get_by_role("button", name="Start recording")).to_be_visible()
        _no_horizontal_overflow(page)
        page = p.goto("#/sessions")
        expect(page.locator(f'[data-session-id="{api_session["id"]}"]')).to_be_visible()
        _no_horizontal_overflow(page)
        page = p.goto(f"#/sessions/{api_session['id']}")
        _open_transcript(page)
        expect(page.locator(".timeline canvas").first).to_be_visible()
        expect(page.locator(".transcript-view li.segment")).to_have_count(
            len(api_session["segments"])
        )
        _no_horizontal_overflow(page)
        _shot(page, screenshots, "phone")
    finally:
        p.close()
