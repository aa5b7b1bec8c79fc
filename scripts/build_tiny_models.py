"""Build tiny production models for a smoke test without a GPU or a model hub.

Writes ``DIR/voxtral`` (a random Voxtral with its processor and a byte-level tekken
tokenizer, deaf to the audio), ``DIR/adapter`` (a peft LoRA adapter trained here, in
about 10 s, to make it write ``[angry] stop that now [coughs] okay`` for any audio)
and ``DIR/pyannote`` (a random speaker-diarization pipeline directory), the layout
``ethostral models pull`` writes, with the same builders the tests use.
``configs/ethostral-tiny.yaml`` serves them:

    .venv/bin/python scripts/build_tiny_models.py /tmp/ethostral-tiny
    serve run configs/ethostral-tiny.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Build the three model directories under the given directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="where to write voxtral/, adapter/, pyannote/")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_pyannote import build_tiny_pyannote
    from tiny_voxtral import build_tagging_adapter, build_tiny_voxtral

    root: Path = args.dir
    base = build_tiny_voxtral(root / "voxtral", deaf=True)
    build_tagging_adapter(base, root / "adapter")
    build_tiny_pyannote(root / "pyannote")
    print(f"tiny Voxtral, LoRA adapter and pyannote pipeline written under {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
