"""Copy the Inference Endpoint handler into a clone of a model repository.

Writes ``handler.py`` and ``requirements.txt`` from this folder and the
``ethostral_serve`` package's Python sources (no bundled models) into DIR, where
Inference Endpoints finds them: it puts the repository directory first on the import
path, so the handler imports the copied package. Commit and push DIR afterwards.

    .venv/bin/python deploy/hf-endpoint/stage.py ~/my-ethostral-adapter
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parents[1] / "ethostral_serve"
FILES = ("handler.py", "requirements.txt")


def stage(target: Path) -> list[Path]:
    """Copy the handler files and the package sources into ``target``; the paths written."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES:
        written.append(Path(shutil.copy2(HERE / name, target / name)))
    package = target / "ethostral_serve"
    if package.exists():
        shutil.rmtree(package)  # no stale modules from an earlier version
    for source in sorted(PACKAGE.rglob("*.py")):
        dest = package / source.relative_to(PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        written.append(Path(shutil.copy2(source, dest)))
    return written


def main(argv: list[str] | None = None) -> int:
    """Stage the handler into the directory given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a clone of the model repository")
    args = parser.parse_args(argv)
    written = stage(args.dir)
    print(
        f"{len(written)} files written under {args.dir}: handler.py, requirements.txt, "
        "ethostral_serve/"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
