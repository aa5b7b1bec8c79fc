"""The API contract: Schemathesis against a running service, every check, every phase.

    .venv/bin/python -m benchmarks.contract [--url http://127.0.0.1:8000] [--api-key KEY]
        [--audio FILE] [-- EXTRA SCHEMATHESIS ARGS]

Runs ``schemathesis run URL/openapi.json`` with the repository's ``schemathesis.toml``
(all checks; examples, coverage, fuzzing and stateful phases; the stateful phase follows
the OpenAPI links from ``POST /transcribe`` to the new session's routes) and exits with
its status: non-zero on any failure. ``--api-key`` (or ``ETHOSTRAL_API_KEY``) is sent as
``Authorization: Bearer`` when the service requires keys. ``--audio`` adds an upload of
that recording to the examples phase, so a Session with segments, words and emotions is
checked against its schema too (the whole pipeline runs once). It creates sessions and
deletes the ones it finds: point it at a test deployment, or give it a key of its own.

The same hooks serve ``tests/test_contract.py``, which runs the check in-process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serve_upload import wav_bytes

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "schemathesis.toml"
AUDIO_ENV = "ETHOSTRAL_CONTRACT_AUDIO"
TRANSCRIBE = "POST /transcribe"
FORM = "multipart/form-data"
# One positive upload in this many carries a real (silent) recording instead of random
# bytes: it is stored, so the stateful phase has sessions to follow links to. Silence
# costs milliseconds (no speech, so no ASR); random bytes stop at decoding (415).
REAL_UPLOAD_ONE_IN = 4
SPEAKER_FIELDS = ("min_speakers", "num_speakers", "max_speakers")


SILENCE = wav_bytes(np.zeros(8_000, np.float32))


def consistent_speakers(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with its speaker counts ordered min <= num <= max.

    Each count is valid alone (1..50), but the server also refuses counts that contradict
    each other (422), a rule across fields that JSON Schema cannot state. The three share
    one schema, so reordering their values never turns a valid body invalid or back.
    """
    given = [name for name in SPEAKER_FIELDS if type(body.get(name)) is int]
    values = sorted(body[name] for name in given)
    return {**body, **dict(zip(given, values, strict=True))}


def without_callback(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without a ``callback_url``: the server accepts only URLs whose host resolves
    to a public address (422 otherwise), which JSON Schema cannot state."""
    return {k: v for k, v in body.items() if k != "callback_url"}


def has_callback(body: object) -> bool:
    """Whether ``body`` names a callback URL (see :func:`without_callback`)."""
    return isinstance(body, dict) and bool(body.get("callback_url"))


def contradicts(body: object) -> bool:
    """Whether ``body`` holds speaker counts out of order (see :func:`consistent_speakers`)."""
    return isinstance(body, dict) and consistent_speakers(body) != body


def register(hook: Callable[..., Any], speech: bytes | None = None) -> None:
    """Register the contract's hooks with ``hook``: ``schemathesis.hook`` (global, for the
    CLI) or a loaded schema's ``hook`` (that schema only). ``speech``: a recording to add
    to the example uploads.

    Bodies are changed where they are generated (``*_body`` hooks): Schemathesis cannot
    validate a multipart body with a file again, so a case changed after generation
    would count as schema-violating.
    """
    from hypothesis import strategies as st

    def is_upload(context: Any) -> bool:
        return context.operation is not None and context.operation.label == TRANSCRIBE

    @hook("map_body")
    def ordered_speakers(context: Any, body: Any) -> Any:
        if is_upload(context) and isinstance(body, dict):
            return consistent_speakers(without_callback(body))
        return body

    @hook("flatmap_body")
    def real_uploads(context: Any, body: Any) -> Any:
        if not (is_upload(context) and _valid_upload(context.operation, body)):
            return st.just(body)
        real = {**body, "file": SILENCE}
        return st.sampled_from([body] * (REAL_UPLOAD_ONE_IN - 1) + [real])

    @hook("filter_case")
    def no_contradiction(context: Any, case: Any) -> bool:
        # Coverage-phase cases skip the body hooks: drop the schema-valid ones whose
        # counts contradict each other or that name a callback URL (the server's 422 for
        # them is right).
        meta = case.meta
        positive = meta is not None and meta.generation.mode.is_positive
        refused = contradicts(case.body) or has_callback(case.body)
        return not (is_upload(context) and positive and refused)

    @hook("before_add_examples")
    def example_uploads(context: Any, examples: list[Any]) -> None:
        # The schema can hold no binary example: give the examples phase a real upload
        # (silence, and ``speech`` when given, which runs the whole pipeline once).
        if is_upload(context):
            for audio in (SILENCE, speech):
                if audio is not None:
                    body = {"file": audio}
                    examples.append(context.operation.Case(body=body, media_type=FORM))


def _valid_upload(operation: Any, body: Any) -> bool:
    """Whether ``body`` is a schema-valid upload with a non-empty file, so that a real
    recording in its place keeps it valid (a body made to violate the schema keeps
    its random file)."""
    if not isinstance(body, dict) or not isinstance(body.get("file"), bytes | str):
        return False
    data = getattr(body["file"], "data", body["file"])  # Schemathesis wraps bytes as str
    if not data:
        return False
    forms = [b for b in operation.body if b.media_type == FORM]
    return bool(forms) and forms[0].is_valid({**body, "file": "audio"})


def speech_from_env() -> bytes | None:
    """The recording named by ``ETHOSTRAL_CONTRACT_AUDIO``, if any."""
    path = os.environ.get(AUDIO_ENV)
    return Path(path).read_bytes() if path else None


def main(argv: list[str] | None = None) -> int:
    """Run the contract check against a live service; Schemathesis's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("ETHOSTRAL_API_KEY"),
        help="sent as `Authorization: Bearer` (default: $ETHOSTRAL_API_KEY)",
    )
    parser.add_argument("--audio", type=Path, help="a speech recording to upload once")
    parser.add_argument("extra", nargs="*", help="more `schemathesis run` options, after --")
    args = parser.parse_args(argv)
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if binary is None:
        parser.error("schemathesis is not installed: pip install -e '.[dev]'")
    command = [binary, "--config-file", str(CONFIG), "run", f"{args.url.rstrip('/')}/openapi.json"]
    if args.api_key:
        command += ["--header", f"Authorization: Bearer {args.api_key}"]
    env = dict(os.environ)
    if args.audio is not None:
        env[AUDIO_ENV] = str(args.audio.resolve())
    # The config names the hooks module `benchmarks.contract_hooks`, imported from here.
    return subprocess.call([*command, *args.extra], cwd=REPO, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
