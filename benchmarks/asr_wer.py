"""WER of the full pipeline next to bare faster-whisper on the same audio.

    .venv/bin/python -m benchmarks.asr_wer [--limit N] [--language en|auto]

Bare faster-whisper: the same CTranslate2 Whisper base, int8, beam 5, no VAD, the
whole file. Pipeline: decode → VAD → diarize → ASR + emotion (defaults). Texts are
normalised (lower case, punctuation removed) before scoring; WER is corpus-level.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import DATA, librispeech, machine, print_table, wer_counts


def _datasets(limit: int | None) -> dict[str, list[tuple[Path, str]]]:
    sets: dict[str, list[tuple[Path, str]]] = {
        "librispeech-test-other": [(p, ref) for p, _, ref in librispeech(limit)]
    }
    jfk = DATA / "asr" / "jfk"
    sets["jfk (44.1 kHz stereo 24-bit)"] = [
        (jfk / "jfk.flac", (jfk / "jfk.txt").read_text(encoding="utf-8"))
    ]
    vox = DATA / "asr" / "librivox"
    refs = {}
    for line in (vox / "transcripts.trans.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            key, _, text = line.partition(" ")
            refs[key] = text
    sets["librivox"] = [(vox / f"{k}.wav", t) for k, t in sorted(refs.items())]
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="LibriSpeech utterances")
    parser.add_argument("--language", default="en", help="'en' or 'auto'")
    args = parser.parse_args()
    language = None if args.language == "auto" else args.language

    from faster_whisper import WhisperModel

    from ethostral_serve.backends.cores import default_cpu_threads
    from ethostral_serve.backends.whisper_models import resolve_whisper_model
    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.compose import TranscribeOptions
    from ethostral_serve.settings import Settings

    settings = Settings()
    model_dir = resolve_whisper_model(settings.asr.model, settings.cache_dir)
    bare = WhisperModel(
        str(model_dir), device="cpu", compute_type="int8", cpu_threads=default_cpu_threads()
    )
    engine = Engine.load(settings)
    options = TranscribeOptions(language=language)

    rows = []
    for name, items in _datasets(args.limit).items():
        refs, bare_hyps, pipe_hyps = [], [], []
        bare_s = pipe_s = audio_s = 0.0
        for path, ref in items:
            refs.append(ref)
            t0 = time.perf_counter()
            segments, info = bare.transcribe(str(path), language=language, beam_size=5)
            bare_hyps.append(" ".join(s.text for s in segments))
            bare_s += time.perf_counter() - t0
            audio_s += info.duration
            t0 = time.perf_counter()
            session = engine.run(path, path.name, options)
            pipe_hyps.append(" ".join(s.text for s in session.segments))
            pipe_s += time.perf_counter() - t0
        bare_wer, words = wer_counts(refs, bare_hyps)
        pipe_wer, _ = wer_counts(refs, pipe_hyps)
        rows.append(
            [
                name,
                len(items),
                words,
                f"{100 * bare_wer:.1f} %",
                f"{100 * pipe_wer:.1f} %",
                f"{100 * (pipe_wer - bare_wer):+.1f}",
                f"{audio_s / bare_s:.1f}x",
                f"{audio_s / pipe_s:.1f}x",
            ]
        )
    print(
        f"ASR WER, Whisper {settings.asr.model} int8 beam 5, language={args.language}; {machine()}"
    )
    print_table(
        [
            "set",
            "files",
            "ref words",
            "bare faster-whisper WER",
            "pipeline WER",
            "Δ points",
            "bare speed (× real time)",
            "pipeline speed (diarize+emotion)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
