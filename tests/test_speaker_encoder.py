"""resemblyzer's speaker encoder exported to ONNX: equal to resemblyzer (mel frames and
embeddings) on real speech, exported once, re-made when damaged, and torch-free at run
time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from speech import two_speaker_conversation

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.diarization import speaker_encoder
from ethostral_serve.backends.diarization.speaker_encoder import (
    EXPORT_FORMAT,
    WEIGHTS_SHA256,
    SpeakerEncoder,
    ensure_speaker_encoder,
    model_dir,
)
from ethostral_serve.errors import ModelLoadError

pytestmark = pytest.mark.slow

FILES = ("speaker_encoder.onnx", "mel.npz", "spec.json")


@pytest.fixture(scope="module")
def folder() -> Path:
    """The export in the user's model cache (made here if set-up has not made it)."""
    from ethostral_serve.settings import Settings

    return ensure_speaker_encoder(Settings().cache_dir)


@pytest.fixture(scope="module")
def encoder(folder: Path) -> SpeakerEncoder:
    return SpeakerEncoder(folder)


@pytest.fixture(scope="module")
def resemblyzer():
    """resemblyzer's own mel function and torch encoder, the reference."""
    import torch
    from resemblyzer import VoiceEncoder, audio

    model = VoiceEncoder(device="cpu", verbose=False).eval()

    def embed(mels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(mels))).numpy()

    return audio.wav_to_mel_spectrogram, embed


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 40 s of two real LibriSpeech voices, at the encoder's training level."""
    x = two_speaker_conversation().samples
    return x * np.float32(10 ** (-30 / 20) / np.sqrt(np.mean(np.square(x))))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# -- mel frames ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:n_fft=400 is too large")  # librosa, on short input
@pytest.mark.parametrize("n", [0, 1, 7, 159, 160, 161, 399, 401, 16_000, 16_037, 160_017])
def test_mel_equals_resemblyzers(encoder, resemblyzer, speech, n) -> None:
    wav_to_mel, _ = resemblyzer
    wav = speech[3 * SAMPLE_RATE : 3 * SAMPLE_RATE + n]
    assert len(wav) == n
    want = wav_to_mel(wav)
    got = encoder.mel(wav)
    assert got.shape == want.shape == (n // 160 + 1, 40)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_mel_is_the_same_across_blocks(encoder, resemblyzer, speech, monkeypatch) -> None:
    wav_to_mel, _ = resemblyzer
    monkeypatch.setattr(speaker_encoder, "_MEL_BLOCK_FRAMES", 7)
    wav = speech[: 2 * SAMPLE_RATE + 93]
    np.testing.assert_allclose(encoder.mel(wav), wav_to_mel(wav), rtol=1e-5, atol=1e-8)


# -- embeddings ------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [100, 160])
def test_equal_windows_embed_as_torch_does(
    encoder, resemblyzer, speech, frames, monkeypatch
) -> None:
    _, torch_embed = resemblyzer
    mel = encoder.mel(speech)
    mels = np.stack([mel[f : f + frames] for f in range(0, len(mel) - frames, 50)])
    assert len(mels) > 20
    monkeypatch.setattr(speaker_encoder, "_BATCH", 8)  # several batches, one short
    got = encoder.embed(mels)
    want = torch_embed(mels)
    assert got.shape == (len(mels), 256)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cosines(got, want).min() >= 0.9999
    # a window's embedding does not depend on the batch it is in
    np.testing.assert_allclose(encoder.embed(mels[3:4])[0], got[3], atol=1e-5)


def test_ragged_windows_embed_as_torch_does_each_alone(encoder, resemblyzer, speech) -> None:
    _, torch_embed = resemblyzer
    mel = encoder.mel(speech)
    lengths = [57, 100, 57, 73, 160, 12, 100, 1]
    starts = np.random.default_rng(0).integers(0, len(mel) - 160, len(lengths))
    mels = [mel[s : s + n] for s, n in zip(starts, lengths, strict=True)]
    got = encoder.embed_ragged(mels)
    want = np.concatenate([torch_embed(m[None]) for m in mels])
    assert got.shape == (len(mels), 256)
    assert _cosines(got, want).min() >= 0.9999


def test_no_windows(encoder) -> None:
    assert encoder.embed(np.zeros((0, 100, 40), np.float32)).shape == (0, 256)
    assert encoder.embed_ragged([]).shape == (0, 256)


def test_silence_embeds_to_a_finite_vector(encoder) -> None:
    emb = encoder.embed(encoder.mel(np.zeros(SAMPLE_RATE, np.float32))[None, :100])
    assert np.isfinite(emb).all()


# -- the export ------------------------------------------------------------------------------


def test_the_export_is_made_once_and_reused(folder) -> None:
    from ethostral_serve.settings import Settings

    cache = Settings().cache_dir
    assert folder == model_dir(cache)
    assert all((folder / name).is_file() for name in FILES)
    spec = json.loads((folder / "spec.json").read_text())
    assert spec["format"] == EXPORT_FORMAT
    assert spec["weights_sha256"] == WEIGHTS_SHA256
    assert (spec["n_fft"], spec["hop_length"], spec["n_mels"]) == (400, 160, 40)
    assert spec["max_error"] <= speaker_encoder.MAX_EMBEDDING_ERROR
    mtimes = [(folder / name).stat().st_mtime_ns for name in FILES]
    assert ensure_speaker_encoder(cache) == folder
    assert [(folder / name).stat().st_mtime_ns for name in FILES] == mtimes
    with np.load(folder / "mel.npz") as mel:
        assert mel["filters"].shape == (40, 201)
        assert mel["window"].shape == (400,)


def _damage(folder: Path, how: str) -> None:
    spec = folder / "spec.json"
    if how == "onnx missing":
        (folder / "speaker_encoder.onnx").unlink()
    elif how == "onnx truncated":
        onnx = folder / "speaker_encoder.onnx"
        onnx.write_bytes(onnx.read_bytes()[:1000])
    elif how == "mel missing":
        (folder / "mel.npz").unlink()
    elif how == "spec corrupt":
        spec.write_text("{not json")
    elif how == "old format":
        spec.write_text(json.dumps({**json.loads(spec.read_text()), "format": 0}))


@pytest.mark.parametrize(
    "how", ["onnx missing", "onnx truncated", "mel missing", "spec corrupt", "old format"]
)
def test_a_damaged_export_is_remade(folder, encoder, speech, tmp_path, how) -> None:
    copy = model_dir(tmp_path)
    shutil.copytree(folder, copy)
    before = (copy / "spec.json").stat().st_mtime_ns
    assert ensure_speaker_encoder(tmp_path) == copy  # intact: kept as it is
    assert (copy / "spec.json").stat().st_mtime_ns == before
    _damage(copy, how)
    assert ensure_speaker_encoder(tmp_path) == copy
    assert (copy / "spec.json").stat().st_mtime_ns != before
    assert sorted(p.name for p in copy.iterdir()) == sorted(FILES)  # no staging left
    assert json.loads((copy / "spec.json").read_text())["format"] == EXPORT_FORMAT
    mels = encoder.mel(speech[: 2 * SAMPLE_RATE])[None, :160]
    np.testing.assert_allclose(SpeakerEncoder(copy).embed(mels), encoder.embed(mels), atol=1e-5)


@pytest.mark.parametrize("check", ["MAX_EMBEDDING_ERROR", "MAX_MEL_ERROR"])
def test_an_export_that_fails_its_check_is_not_kept(tmp_path, monkeypatch, check) -> None:
    monkeypatch.setattr(speaker_encoder, check, -1.0)  # no export can pass
    with pytest.raises(ModelLoadError, match="differ"):
        ensure_speaker_encoder(tmp_path)
    assert list(model_dir(tmp_path).iterdir()) == []
    with pytest.raises(ModelLoadError, match="could not load the speaker encoder"):
        SpeakerEncoder(model_dir(tmp_path))


def test_other_weights_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(speaker_encoder, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(ModelLoadError, match="expected 0000"):
        ensure_speaker_encoder(tmp_path)
    assert not any(model_dir(tmp_path).glob("*"))


# -- run time without torch --------------------------------------------------------------------

_NO_TORCH = """
import json, sys
import numpy as np
from pathlib import Path
from ethostral_serve.backends.diarization.embedded import OverlapAwareDiarizer
from ethostral_serve.backends.diarization.resemblyzer import ResemblyzerDiarizer
from ethostral_serve.pipeline.types import Span
from ethostral_serve.settings import DiarizerSettings

samples = np.load(sys.argv[1])
regions = [Span(a, b) for a, b in json.loads(Path(sys.argv[2]).read_text())]
cache = Path(sys.argv[3])
speakers = {}
for name, cls in (("embedded", OverlapAwareDiarizer), ("resemblyzer", ResemblyzerDiarizer)):
    turns = cls(DiarizerSettings(), cache).diarize(samples, regions)
    speakers[name] = len({t.speaker for t in turns})
banned = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "resemblyzer", "librosa"})
print(json.dumps({"speakers": speakers, "banned": banned}))
"""


def test_diarizing_imports_neither_torch_nor_resemblyzer_nor_librosa(folder, tmp_path) -> None:
    from ethostral_serve.backends.diarization.segmentation import ensure_segmentation_model
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.settings import Settings, VadSettings

    cache = Settings().cache_dir
    ensure_segmentation_model(cache)  # both exports exist, as after set-up
    conversation = two_speaker_conversation()
    regions = SileroVad(VadSettings()).speech_regions(conversation.samples)
    np.save(tmp_path / "samples.npy", conversation.samples)
    (tmp_path / "regions.json").write_text(json.dumps([[r.start, r.end] for r in regions]))
    args = [tmp_path / "samples.npy", tmp_path / "regions.json", cache]
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_NO_TORCH), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["banned"] == []
    assert result["speakers"] == {"embedded": 2, "resemblyzer": 2}
