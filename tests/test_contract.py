"""The API contract: Schemathesis, in-process (ASGI), over the real models and a real Redis.

Every check and every phase of ``schemathesis.toml`` (examples, coverage, fuzzing, and
stateful, which follows the OpenAPI links from a new session to its routes) must find 0
failures, with API keys off and on. The same configuration as the live check
(``python -m benchmarks.contract``), seed fixed: about 10 s a run on 2 cores.
"""

from __future__ import annotations

import asyncio
import tomllib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import require_data
from fastapi.testclient import TestClient

from benchmarks.contract import CONFIG, register
from ethostral_serve.api.app import create_app
from ethostral_serve.api.auth import Access
from ethostral_serve.api.jobs import Jobs
from ethostral_serve.keys import KeyStore
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import AuthSettings, JobSettings, Settings

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")

pytestmark = pytest.mark.slow

PHASES = ("examples", "coverage", "fuzzing", "stateful")


@dataclass
class Report:
    """What one Schemathesis run did: failures, responses by (phase, method, path, status)."""

    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    phases: dict[str, str] = field(default_factory=dict)
    responses: Counter[tuple[str, str, str, int]] = field(default_factory=Counter)
    cases: int = 0
    seconds: float = 0.0

    def count(self, phase: str, method: str, path: str, status: int) -> int:
        """Responses of this status to ``method path`` in ``phase``."""
        return self.responses[(phase, method, path, status)]


def check_contract(app: Any, headers: dict[str, str] | None, speech: bytes | None) -> Report:
    """Run schemathesis.toml against ``app`` in-process and report what happened."""
    from schemathesis.engine import events, from_schema

    data = tomllib.loads(CONFIG.read_text())
    data.pop("hooks")  # registered on this schema only, not for the whole process
    if headers:
        data["headers"] = headers
    config = schemathesis.Config.from_dict(data, base_dir=str(CONFIG.parent))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    register(schema.hook, speech)
    report = Report()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            _record(report, event)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            report.errors.append(str(getattr(event, "info", event)))
        elif isinstance(event, events.PhaseFinished):
            report.phases[event.phase.name.value] = event.status.value
        elif isinstance(event, events.EngineFinished):
            report.seconds = event.running_time
            report.failures += [repr(f) for f in event.failures]
    return report


def _record(report: Report, event: Any) -> None:
    recorder = event.recorder
    report.cases += len(recorder.cases)
    for case_id, interaction in recorder.interactions.items():
        case = recorder.cases[case_id].value
        if interaction.response is not None:
            key = (event.phase.value, case.method.upper(), case.operation.path)
            report.responses[(*key, interaction.response.status_code)] += 1
    for checks in recorder.checks.values():
        for check in checks:
            info = check.failure_info
            if info is not None:
                report.failures.append(
                    f"{recorder.label}: {check.name}: {info.failure.title}\n"
                    f"{info.failure.message}\n{info.code_sample}"
                )


def _assert_clean(report: Report) -> None:
    assert not report.failures, "\n\n".join(dict.fromkeys(report.failures))
    assert not report.errors, report.errors
    for phase in PHASES:
        assert report.phases.get(phase) == "success", report.phases


@pytest.fixture(scope="module")
def runner(engine: Any) -> PipelineRunner:
    return PipelineRunner.traced(engine.settings, engine.vad, engine.diarizer, engine.model)


def _with_jobs(settings: Settings, prefix: str, spool: Path, auth: bool = False) -> Settings:
    """Settings of a contract run: its own Redis prefix and spool; jobs run one at a time.
    Whether a job has finished when the stateful phase follows its links depends on the
    machine's speed, so the checks below do not count on either."""
    return settings.model_copy(
        update={
            "auth": AuthSettings(required=auth, key_prefix=prefix),
            "jobs": JobSettings(spool_dir=spool, spool_host="contract", max_running=1),
        }
    )


def test_the_api_keeps_its_openapi_contract(
    runner, redis_url: str, settings, tmp_path: Path
) -> None:
    prefix = f"contract-{uuid.uuid4().hex[:8]}:"
    settings = _with_jobs(settings, prefix, tmp_path)
    store = SessionStore(redis_url, key_prefix=f"{prefix}session:")
    speech = (require_data("asr", "jfk") / "jfk.flac").read_bytes()
    app = create_app(runner, store, settings, jobs=Jobs.from_settings(redis_url, settings))
    with TestClient(app):  # the lifespan runs the job worker
        report = check_contract(app, None, speech)
    _assert_clean(report)
    assert (
        report.count("fuzzing", "POST", "/transcribe", 202)
        + report.count("stateful", "POST", "/transcribe", 202)
        >= 1
    )  # jobs were made and their routes answered within the contract
    # The examples (silence, and speech through the whole pipeline) met the schema.
    assert report.count("examples", "POST", "/transcribe", 200) == 2
    # The stateful phase made sessions and followed the links to them.
    assert report.count("stateful", "POST", "/transcribe", 200) >= 1
    assert _links_followed(report) >= 1
    assert report.cases > 300


def test_the_contract_holds_with_api_keys(runner, redis_url: str, engine, tmp_path: Path) -> None:
    prefix = f"contract-{uuid.uuid4().hex[:8]}:"
    settings = _with_jobs(engine.settings, prefix, tmp_path, auth=True)
    secret = asyncio.run(_new_key(redis_url, prefix))
    app = create_app(
        runner,
        SessionStore(redis_url, key_prefix=f"{prefix}session:"),
        settings,
        access=Access.from_settings(redis_url, settings),
        jobs=Jobs.from_settings(redis_url, settings),
    )
    with TestClient(app):
        report = check_contract(app, {"Authorization": f"Bearer {secret}"}, None)
    _assert_clean(report)
    # ignored_auth sent requests without the key and with a wrong one: all refused.
    refused = sum(n for (_, _, _, status), n in report.responses.items() if status == 401)
    assert refused >= 1
    assert _links_followed(report) >= 1


def _links_followed(report: Report) -> int:
    """Requests the stateful phase made by following a link from a new session or job to
    its routes (GET, DELETE, subtitles, events, audio). Which ones, and what they answer,
    depends on whether a job has finished by then, i.e. on the machine's speed."""
    return sum(
        n
        for (phase, _, path, _), n in report.responses.items()
        if phase == "stateful" and path.startswith("/sessions/{session_id}")
    )


async def _new_key(redis_url: str, prefix: str) -> str:
    keys = KeyStore(redis_url, prefix=prefix)
    try:
        _, secret = await keys.create("contract")
    finally:
        await keys.aclose()
    return secret


def test_the_document_lists_what_the_model_accepts(runner, redis_url: str, settings) -> None:
    app = create_app(runner, SessionStore(redis_url), settings)
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
        form = spec["components"]["schemas"]["Body_transcribe"]["properties"]
        assert form["language"]["enum"] == ["", "auto", *runner.model.languages]
        assert form["adapter"]["enum"] == ["", *runner.model.adapters]
        links = spec["paths"]["/transcribe"]["post"]["responses"]["200"]["links"]
        assert {link["operationId"] for link in links.values()} == {
            "get_session",
            "delete_session",
            "session_srt",
            "session_vtt",
        }
        # One path, two routes: a 405 names the methods of both.
        r = client.request("PUT", f"/sessions/{uuid.uuid4()}")
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
        assert r.json() == {"detail": "Method Not Allowed"}


def test_the_config_excludes_no_check() -> None:
    config = tomllib.loads(Path(CONFIG).read_text())
    assert config["checks"] == {"enabled": True}
    assert all(config["phases"][phase]["enabled"] for phase in PHASES)
    assert config["generation"]["deterministic"] is True
