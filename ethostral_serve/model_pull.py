"""Download the production models (Voxtral base, the LoRA adapter, the pyannote
pipeline) from the Hugging Face hub into a local directory, for offline use later.

Each goes into its own folder under the target directory; the settings that point
the service at them are returned, so ``ethostral models pull`` can print them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ethostral_serve.errors import ModelLoadError
from ethostral_serve.settings import hf_token


@dataclass(frozen=True)
class PullTarget:
    """One hub repository to fetch, the folder it goes to, and the setting it fills."""

    repo_id: str
    folder: str
    setting: str  # the ETHOSTRAL_* variable that names the folder


def pull(targets: list[PullTarget], root: Path, revision: str | None = None) -> dict[str, Path]:
    """Download every target into ``root/<folder>``; return ``{setting: folder path}``.

    The token comes from ``HF_TOKEN`` (gated repositories need one). A failed download
    raises :class:`ModelLoadError` naming the repository and why.
    """
    from huggingface_hub import snapshot_download

    token = hf_token()
    done: dict[str, Path] = {}
    for target in targets:
        folder = root / target.folder
        try:
            snapshot_download(
                repo_id=target.repo_id, local_dir=folder, revision=revision, token=token
            )
        except Exception as exc:  # the hub raises many kinds: network, auth, not found
            raise ModelLoadError(
                f"could not download {target.repo_id!r}: {type(exc).__name__}: {exc} "
                "(no network? gated repositories need HF_TOKEN and accepted terms)"
            ) from exc
        done[target.setting] = folder
    return done
