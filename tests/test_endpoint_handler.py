"""The Inference Endpoint handler (``deploy/hf-endpoint/handler.py``) on tiny Voxtrals,
served the way Inference Endpoints serves it (``local_server.py``: POST JSON →
handler(data) → JSON) on a real local HTTP server, with the service's endpoint speech
model pointed at it: what comes back equals what the local Ethostral model gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from speech import two_speaker_conversation
from tiny_voxtral import TAGGED_SCRIPT, build_tiny_adapter, build_tiny_voxtral

from ethostral_serve.audio import Audio
from ethostral_serve.backends.endpoint import EndpointSpeechModel
from ethostral_serve.backends.endpoint.handler import repository_settings
from ethostral_serve.backends.ethostral_speech import EthostralSpeechModel
from ethostral_serve.errors import BackendUnavailableError
from ethostral_serve.settings import EthostralSettings, Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "hf-endpoint"
sys.path.insert(0, str(DEPLOY))
from local_server import load_handler, serving  # noqa: E402

TOKENS = 48  # the byte-level tiny tokenizer writes a token per character


def test_the_repository_directory_fills_what_the_environment_leaves_unset(
    tmp_path: Path, monkeypatch
) -> None:
    import ethostral_serve.backends.endpoint.handler as handler

    monkeypatch.setattr(handler, "_cuda_available", lambda: False)
    adapter = tmp_path / "adapter-repo"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    section = repository_settings(adapter, EthostralSettings())
    assert section.adapter == str(adapter)
    assert section.base_model == "mistralai/Voxtral-Mini-3B-2507" and section.device == "cpu"
    base = tmp_path / "base-repo"
    base.mkdir()
    (base / "config.json").write_text("{}")
    assert repository_settings(base, EthostralSettings()).base_model == str(base)
    pulled = tmp_path / "pulled"  # the layout `ethostral models pull` writes
    for sub, name in (("voxtral", "config.json"), ("adapter", "adapter_config.json")):
        (pulled / sub).mkdir(parents=True)
        (pulled / sub / name).write_text("{}")
    section = repository_settings(pulled, EthostralSettings())
    assert (section.base_model, section.adapter) == (
        str(pulled / "voxtral"),
        str(pulled / "adapter"),
    )
    monkeypatch.setenv("ETHOSTRAL_ETHOSTRAL__ADAPTER", "org/other-adapter")  # the env wins
    section = repository_settings(pulled, Settings().ethostral)
    assert (section.base_model, section.adapter) == (str(pulled / "voxtral"), "org/other-adapter")
    monkeypatch.setattr(handler, "_cuda_available", lambda: True)
    assert repository_settings(pulled, EthostralSettings()).device == "cuda"
    assert repository_settings(pulled, EthostralSettings(device="cpu")).device == "cpu"


@pytest.fixture(scope="module")
def tagging_repo(tagging_voxtral) -> Path:
    """A model repository holding ``voxtral/`` and ``adapter/`` (the tagging adapter)."""
    base, adapter = tagging_voxtral
    assert (base.parent / "voxtral", base.parent / "adapter") == (base, adapter)
    return base.parent


TOKENS_VARIABLE = "ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS"


def _load_with_tokens(repo: Path, load: Callable[[Path], Any] = load_handler) -> Any:
    """The handler loaded with ``max_new_tokens`` TOKENS from the endpoint's environment
    (as its variables set it); the environment is left as it was."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(TOKENS_VARIABLE, str(TOKENS))
        return load(repo)


@pytest.mark.parametrize("before", [None, "77"], ids=["unset", "set"])
def test_loading_the_endpoint_leaves_the_environment_as_it_was(
    tmp_path: Path, monkeypatch, before: str | None
) -> None:
    if before is None:
        monkeypatch.delenv(TOKENS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(TOKENS_VARIABLE, before)
    seen = _load_with_tokens(tmp_path, lambda repo: os.environ.get(TOKENS_VARIABLE))
    assert seen == str(TOKENS)
    assert os.environ.get(TOKENS_VARIABLE) == before


@pytest.fixture(scope="module")
def endpoint(tagging_repo: Path) -> Iterator:
    """``deploy/hf-endpoint/handler.py`` loaded from the repository like Inference
    Endpoints loads it, served on a local port."""
    handler = _load_with_tokens(tagging_repo)
    assert type(handler).__name__ == "EndpointHandler"
    with serving(handler) as server:
        yield server


def _remote(server, **endpoint: object) -> EndpointSpeechModel:
    return EndpointSpeechModel(
        Settings(speech_model="endpoint", endpoint={"url": server.url, **endpoint})
    )


def _local(tagging_voxtral, **section: object) -> EthostralSpeechModel:
    base, adapter = tagging_voxtral
    settings = {"base_model": str(base), "adapter": str(adapter), "max_new_tokens": TOKENS}
    return EthostralSpeechModel(Settings(speech_model="ethostral", ethostral=settings | section))


@pytest.fixture(scope="module")
def remote(endpoint) -> EndpointSpeechModel:
    # windows batched as the local model batches them (4 per generate call), so both
    # generate over the same batches: padding changes the last bits of probabilities
    return _remote(endpoint, batch_size=4, max_concurrency=1)


@pytest.fixture(scope="module")
def local(tagging_voxtral) -> EthostralSpeechModel:
    return _local(tagging_voxtral)


@pytest.mark.slow
def test_windows_through_the_endpoint_equal_the_local_model(remote, local, endpoint) -> None:
    talk = two_speaker_conversation(turns_each=1)
    s = talk.samples
    windows = [s[: 16000 * 2], s[16000 : 16000 * 5], np.zeros(800, np.float32), s[-16000 * 3 :]]
    languages = ["fr", None, "en", "ja"]
    before = endpoint.calls
    got = remote.transcribe_windows(windows, languages)
    want = local.transcribe_windows(windows, languages)
    assert endpoint.calls == before + 1  # three windows long enough: one request
    for g, w in zip(got, want, strict=True):
        assert (g.words, g.language, g.language_probability, g.emotions) == (
            w.words,
            w.language,
            w.language_probability,
            w.emotions,
        )
    said = " ".join(x.text.strip() for x in got[0].words)
    assert said == "stop that now okay"  # the tags are gone from the words...
    assert [e.emotion.label for e in got[0].emotions] == ["Angry"]  # ...into emotions
    assert got[0].emotions[0].emotion.confidence > 0.9
    assert got[1].language in remote.languages  # detected here by Whisper base
    assert got[2].words == [] and got[3].language == "ja"


@pytest.mark.slow
def test_an_upload_through_the_endpoint_equals_the_local_model(remote, local) -> None:
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.pipeline.compose import TranscribeOptions, transcribe

    talk = two_speaker_conversation(turns_each=1)
    settings = Settings()
    sessions = [
        transcribe(
            Audio(talk.samples),
            "talk.wav",
            TranscribeOptions(diarize=False),
            vad=SileroVad(settings.vad),
            diarizer=None,
            model=model,
            settings=settings,
        )
        for model in (remote, local)
    ]
    got, want = ([(s.start_ms, s.end_ms, s.text, s.emotion) for s in x.segments] for x in sessions)
    assert got == want and got
    assert sessions[0].language == sessions[1].language == "en"
    assert all(emotion is not None and emotion.label == "Angry" for *_, emotion in got)


@pytest.mark.slow
def test_random_audio_dependent_voxtral_is_equal_with_float32_audio(
    tmp_path_factory, monkeypatch
) -> None:
    """A tiny Voxtral that hears its audio (random weights and adapter): with ``f32le``
    the endpoint reads exactly the samples the local model reads."""
    root = tmp_path_factory.mktemp("hearing-voxtral")
    base = build_tiny_voxtral(root / "voxtral", seed=5)
    build_tiny_adapter(base, root / "adapter", seed=6)
    monkeypatch.setenv("ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS", "12")
    handler = load_handler(root)
    monkeypatch.delenv("ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS")
    rng = np.random.default_rng(0)
    windows = [rng.uniform(-0.3, 0.3, 16000 * n).astype(np.float32) for n in (1, 2)]
    local = EthostralSpeechModel(
        Settings(
            speech_model="ethostral",
            ethostral={
                "base_model": str(root / "voxtral"),
                "adapter": str(root / "adapter"),
                "max_new_tokens": 12,
                "detect_language": False,
                "emotion_fallback": False,
            },
        )
    )
    with serving(handler) as server:
        remote = _remote(
            server, audio_encoding="f32le", detect_language=False, emotion_fallback=False
        )
        got = remote.asr.transcribe_segments(windows, ["en", None])
        louder = remote.asr.transcribe_segments([w * 3 for w in windows], ["en", None])
    want = local.asr.transcribe_segments(windows, ["en", None])
    assert got == want
    assert louder != got  # it hears the audio (its probabilities, at least, change)


@pytest.mark.slow
def test_live_drafts_are_local_or_on_the_endpoint(endpoint, remote, local) -> None:
    talk = two_speaker_conversation(turns_each=1)
    audio = talk.samples[16000 : 16000 * 3]
    before = endpoint.calls
    text, language = remote.partial_text(audio, "en")  # Whisper tiny.en here, no request
    assert endpoint.calls == before and "[" not in text and language == "en"
    assert remote.load_drafter() is not None
    assert remote.partial_text(audio, None)[1] == "und"  # Whisper base; drafts name none
    assert endpoint.calls == before
    on_endpoint = _remote(endpoint, drafts="endpoint", detect_language=False)
    assert on_endpoint.load_drafter() is None
    text, language = on_endpoint.partial_text(audio, "en")
    assert endpoint.calls == before + 1
    assert (text, language) == local.partial_text(audio, "en")
    assert text and "stop that now okay".startswith(text)  # capped, tags dropped


@pytest.mark.slow
def test_the_handler_refuses_what_it_cannot_run_and_checks_the_token(endpoint, monkeypatch) -> None:
    audio = two_speaker_conversation(turns_each=1).samples[: 16000 * 2]
    unknown = _remote(endpoint, adapters=["calm"], detect_language=False, emotion_fallback=False)
    with pytest.raises(BackendUnavailableError, match="HTTP 400: unknown adapter 'calm'"):
        unknown.transcribe_windows([audio], ["en"], ["calm"])
    guarded = endpoint.token
    endpoint.token = "hf_secret"
    try:
        plain = _remote(endpoint, detect_language=False, emotion_fallback=False)
        with pytest.raises(BackendUnavailableError, match="refused the service's token"):
            plain.transcribe_windows([audio], ["en"])
        monkeypatch.setenv("HF_TOKEN", "hf_secret")
        allowed = _remote(endpoint, detect_language=False, emotion_fallback=False)
        (result,) = allowed.transcribe_windows([audio], ["en"])
        assert result.words
    finally:
        endpoint.token = guarded


@pytest.mark.slow
def test_the_staged_repository_imports_its_own_copy_of_the_package(
    tmp_path: Path, tagging_repo: Path
) -> None:
    """``stage.py`` writes handler.py, requirements.txt and the package into a repository
    clone; the handler there imports that copy and transcribes."""
    from stage import stage

    repo = tmp_path / "repo"
    (repo / "adapter").mkdir(parents=True)
    for f in (tagging_repo / "adapter").iterdir():
        (repo / "adapter" / f.name).write_bytes(f.read_bytes())
    written = stage(repo)
    assert (repo / "handler.py").read_text() == (DEPLOY / "handler.py").read_text()
    assert "transformers>=5,<6" in (repo / "requirements.txt").read_text()
    assert (repo / "ethostral_serve" / "backends" / "endpoint" / "wire.py") in written
    assert not list(repo.rglob("*.npz")) and not list(repo.rglob("__pycache__"))
    script = f"""
import importlib.util, json, sys
sys.path.insert(0, {str(repo)!r})
spec = importlib.util.spec_from_file_location("handler", {str(repo / "handler.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import ethostral_serve
print(json.dumps(ethostral_serve.__file__))
import numpy as np
from ethostral_serve.backends.endpoint.wire import encode_request
handler = module.EndpointHandler({str(repo)!r})
out = handler(encode_request([np.zeros(16000, np.float32)], ["en"], [None]))
print(json.dumps(out["results"][0]["raw"]))
"""
    env = {
        **os.environ,
        "ETHOSTRAL_ETHOSTRAL__BASE_MODEL": str(tagging_repo / "voxtral"),
        "ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS": str(TOKENS),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    package, raw = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    assert Path(package).is_relative_to(repo)
    assert raw == TAGGED_SCRIPT
