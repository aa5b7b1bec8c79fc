"""Tracing: off (and weave never imported) unless a project and a W&B key are configured."""

from __future__ import annotations

import contextvars
import logging
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from ethostral_serve.settings import TracingSettings
from ethostral_serve.tracing import (
    NoopTracer,
    WeaveTracer,
    make_tracer,
    summarise_inputs,
    summarise_value,
)

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "0" * 40


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No W&B credential anywhere: no key variables, and a HOME without a netrc."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WEAVE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _double(x: int) -> int:
    return 2 * x


def test_tracing_off_never_imports_weave(tmp_path: Path) -> None:
    code = (
        "import os, sys\n"
        "from ethostral_serve.settings import TracingSettings\n"
        "from ethostral_serve.tracing import make_tracer\n"
        "f = lambda: 1\n"
        "t = make_tracer(TracingSettings())\n"  # key set, no project
        "assert t.op('x', f) is f and not t.enabled\n"
        "del os.environ['WANDB_API_KEY']\n"
        "t = make_tracer(TracingSettings(weave_project='team/proj'))\n"  # project, no key
        "assert t.op('x', f) is f and not t.enabled\n"
        "print(sorted(m for m in sys.modules if m == 'weave' or m.startswith('weave.')))\n"
    )
    drop = {"WEAVE_DISABLED", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(WANDB_API_KEY=FAKE_KEY, HOME=str(tmp_path))  # HOME: no ~/.netrc
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_noop_returns_the_function_itself() -> None:
    tracer = NoopTracer()
    assert tracer.op("double", _double) is _double
    assert tracer.enabled is False


def test_project_without_key_is_noop(
    no_credentials: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ethostral_serve.tracing"):
        tracer = make_tracer(TracingSettings(weave_project="team/proj"))
    assert isinstance(tracer, NoopTracer)
    assert "no W&B API key" in caplog.text


def test_netrc_entry_counts_as_a_key(no_credentials: Path, fake_weave: types.ModuleType) -> None:
    netrc = no_credentials / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    tracer = make_tracer(TracingSettings(weave_project="team/proj"))
    assert isinstance(tracer, WeaveTracer)


def test_netrc_entry_for_another_host_does_not_count(no_credentials: Path) -> None:
    netrc = no_credentials / ".netrc"
    netrc.write_text(f"machine example.com\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    assert isinstance(make_tracer(TracingSettings(weave_project="team/proj")), NoopTracer)


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_weave_disabled_is_noop(
    monkeypatch: pytest.MonkeyPatch, fake_weave: types.ModuleType, value: str
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WEAVE_DISABLED", value)
    assert isinstance(make_tracer(TracingSettings(weave_project="team/proj")), NoopTracer)
    fake_weave.init.assert_not_called()


@pytest.fixture
def fake_weave(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A stand-in ``weave`` package (isolates the unit: no network, no real client)."""
    weave = types.ModuleType("weave")
    weave.init = mock.Mock(name="weave.init")  # type: ignore[attr-defined]
    weave.op = mock.Mock(  # type: ignore[attr-defined]
        name="weave.op", side_effect=lambda fn, name, **_: _recording(fn, name)
    )
    iface = types.ModuleType("weave.wandb_interface")
    auth = types.ModuleType("weave.wandb_interface.auth")
    auth.get_wandb_credentials = lambda: object()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "weave", weave)
    monkeypatch.setitem(sys.modules, "weave.wandb_interface", iface)
    monkeypatch.setitem(sys.modules, "weave.wandb_interface.auth", auth)
    yield weave


def _recording(fn: Any, name: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wrapper.calls.append(name)  # type: ignore[attr-defined]
        return fn(*args, **kwargs)

    wrapper.calls = []  # type: ignore[attr-defined]
    return wrapper


def test_with_key_and_project_uses_weave(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, fake_weave: types.ModuleType
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    tracer = make_tracer(TracingSettings(weave_project="team/proj"))
    assert isinstance(tracer, WeaveTracer) and tracer.enabled
    fake_weave.init.assert_called_once()
    assert fake_weave.init.call_args.args == ("team/proj",)
    traced = tracer.op("pipeline.double", _double)
    fake_weave.op.assert_called_once_with(
        _double,
        name="pipeline.double",
        postprocess_inputs=summarise_inputs,
        postprocess_output=summarise_value,
    )
    assert traced(21) == 42
    assert traced.calls == ["pipeline.double"]  # type: ignore[attr-defined]


def test_init_raising_falls_back_to_noop(
    no_credentials: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_weave: types.ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    fake_weave.init.side_effect = ConnectionError("trace server unreachable")
    with caplog.at_level(logging.WARNING, logger="ethostral_serve.tracing"):
        tracer = make_tracer(TracingSettings(weave_project="team/proj"))
    assert isinstance(tracer, NoopTracer)
    assert any(
        r.levelno == logging.WARNING and "trace server unreachable" in r.getMessage()
        for r in caplog.records
    )


def test_weave_finding_no_credential_never_calls_init(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, fake_weave: types.ModuleType
) -> None:
    """If weave's own lookup disagrees with ours, weave.init (which would prompt) is skipped."""
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setattr(
        sys.modules["weave.wandb_interface.auth"], "get_wandb_credentials", lambda: None
    )
    assert isinstance(make_tracer(TracingSettings(weave_project="team/proj")), NoopTracer)
    fake_weave.init.assert_not_called()


def test_op_wrapping_failure_runs_untraced(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch, fake_weave: types.ModuleType
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    fake_weave.op.side_effect = TypeError("cannot wrap")
    tracer = make_tracer(TracingSettings(weave_project="team/proj"))
    assert tracer.op("double", _double) is _double


def test_nested_ops_become_child_calls_in_real_weave(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real weave ops and call context; only the trace server is an in-memory recorder.

    weave 0.54 ships no offline/local trace server, so ``weave.init`` is replaced by
    installing a real ``WeaveClient`` over a mock server that records what it is sent.
    """
    weave = pytest.importorskip("weave")
    from weave.trace.context import weave_client_context
    from weave.trace.weave_client import WeaveClient

    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    server = mock.MagicMock(name="trace_server")
    server.obj_create.return_value.digest = "digest0"
    client = WeaveClient("team", "proj", server, ensure_project_exists=False)

    def offline_init(project: str, **_: Any) -> WeaveClient:
        weave_client_context.set_weave_client_global(client)
        return client

    monkeypatch.setattr(weave, "init", offline_init)
    seen: dict[str, tuple[str, str | None, str]] = {}

    def record(key: str) -> None:
        call = weave.require_current_call()
        seen[key] = (call.id, call.parent_id, call.trace_id)

    try:
        tracer = make_tracer(TracingSettings(weave_project="team/proj"))
        assert isinstance(tracer, WeaveTracer)

        def stage(x: int) -> int:
            record("stage")
            return x + 1

        def threaded_stage(x: int) -> int:
            record("threaded")
            return x * 10

        traced_stage = tracer.op("asr", stage)
        traced_threaded = tracer.op("diarize", threaded_stage)

        def pipeline(x: int) -> int:
            record("pipeline")
            with ThreadPoolExecutor(max_workers=1) as pool:
                # As in pipeline/compose.py: the copied context carries the current call.
                pending = pool.submit(contextvars.copy_context().run, traced_threaded, x)
                return traced_stage(x) + pending.result()

        assert tracer.op("transcribe", pipeline)(1) == 12
        client.flush()
    finally:
        weave_client_context.set_weave_client_global(None)

    root_id, root_parent, trace_id = seen["pipeline"]
    assert root_parent is None
    assert seen["stage"][1:] == (root_id, trace_id)
    assert seen["threaded"][1:] == (root_id, trace_id)
    # What the client sent to the trace server: op refs look like weave:///team/proj/op/NAME:DIGEST
    started = [c.args[0].req["start"] for c in server.call_processor.enqueue_start.call_args_list]
    names = {s["op_name"].split("/op/")[1].split(":")[0]: s["parent_id"] for s in started}
    assert names == {"transcribe": None, "asr": root_id, "diarize": root_id}


def test_traces_record_array_shapes_not_audio() -> None:
    import io

    samples = np.zeros(16000 * 60, np.float32)
    summary = summarise_inputs(
        {"samples": samples, "source": io.BytesIO(b"abc"), "raw": b"\0" * 10, "n": 3}
    )
    assert summary["samples"] == {"array": [960000], "dtype": "float32"}
    assert summary["source"] == {"file": "BytesIO"}
    assert summary["raw"] == {"bytes": 10}
    assert summary["n"] == 3
    assert summarise_value([samples[:5], samples[:7]]) == [
        {"array": [5], "dtype": "float32"},
        {"array": [7], "dtype": "float32"},
    ]
