"""Diarization error of the configured diarizer (default: the embedded, overlap-aware one).

    .venv/bin/python -m benchmarks.diarization [--seeds 0 1 2 3 4] [--out DIR]
        [--set key=value] [--repeat N] [--no-ami] [--far-field] [--long] [--groups SET ...]
        [--files WAV ... --rttm RTTM ... [--uem UEM ...]] [--sessions [--counts] | --streams]

Builds LibriSpeech test-other conversations (1, 2 and 4 speakers, whole utterances
separated by random 0.3-1.5 s pauses, RTTM written while concatenating), and reads the
AMI excerpts of pyannote-debug and the pyannote-sample call. Scores with
pyannote.metrics DER (collar 0.25 s, overlap scored); missed, false alarm and confusion
are percentages of reference speech; "exclusive bound" is the lowest DER any
one-speaker-at-a-time diarization can reach on the file (overlapped speech). Timing is
diarizer time only (VAD excluded), in milliseconds per second of audio. ``--set``
overrides a ``DiarizerSettings`` field (``--set backend=resemblyzer``: the earlier
diarizer). ``--sessions`` scores what users get instead: the Session's segments, built
from the recognised words, next to the same words with the reference speakers.
``--streams`` sends each file through a live stream and scores its stored session, with
the live speakers and after the speaker pass over the whole stream. "ami-minute" files
join consecutive AMI excerpts of one meeting into a minute. ``--far-field`` adds the 2-
and 4-speaker conversations as a distant microphone hears them ("far-field-*": each
speaker at its own level and through its own synthetic room response, room noise).
``--files`` adds recordings of your own with RTTM references as the set "files" (``--groups
files`` to run only those).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, machine, print_table
from ethostral_serve.pipeline.ports import DiarizerBackend, VadBackend
from ethostral_serve.pipeline.types import Span, SpeakerTurn, WordTiming
from ethostral_serve.settings import Settings

SAMPLE_RATE = 16_000
COLLAR = 0.25


@dataclass
class Case:
    """One recording with its reference: ``(start, end, speaker)`` turns, seconds."""

    group: str
    uri: str
    samples: np.ndarray
    reference: list[tuple[float, float, str]]
    uem: tuple[float, float] | None = None
    speakers: int = field(init=False)

    def __post_init__(self) -> None:
        self.speakers = len({s for _, _, s in self.reference})

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / SAMPLE_RATE


def librispeech_by_speaker() -> dict[str, list[np.ndarray]]:
    """Decoded test-other utterances, grouped by speaker, in file order."""
    from ethostral_serve.audio import decode_audio

    root = DATA / "asr" / "librispeech-test-other"
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out: dict[str, list[np.ndarray]] = {}
    for row in rows:
        out.setdefault(row["speaker"], []).append(decode_audio(root / row["path"]).samples)
    return out


def make_conversation(
    utterances: dict[str, list[np.ndarray]],
    n_speakers: int,
    min_duration_s: float,
    seed: int,
    pause_s: tuple[float, float] = (0.3, 1.5),
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Concatenate utterances of ``n_speakers`` random speakers, alternating speakers.

    Each turn is a whole utterance of a speaker other than the previous one, followed by
    a pause drawn from ``pause_s``; stops once ``min_duration_s`` is reached (or the
    utterances run out). Returns the samples and the reference turns.
    """
    rng = np.random.default_rng(seed)
    speakers = [str(s) for s in rng.choice(sorted(utterances), n_speakers, replace=False)]
    pools = {s: list(rng.permutation(len(utterances[s]))) for s in speakers}
    parts: list[np.ndarray] = [np.zeros(int(rng.uniform(*pause_s) * SAMPLE_RATE), np.float32)]
    reference: list[tuple[float, float, str]] = []
    t = len(parts[0]) / SAMPLE_RATE
    previous: str | None = None
    while t < min_duration_s:
        choices = [s for s in speakers if pools[s] and (s != previous or len(speakers) == 1)]
        if not choices:
            break
        speaker = str(rng.choice(choices))
        utt = utterances[speaker][int(pools[speaker].pop())]
        reference.append((t, t + len(utt) / SAMPLE_RATE, speaker))
        pause = np.zeros(int(rng.uniform(*pause_s) * SAMPLE_RATE), np.float32)
        parts += [utt, pause]
        t += (len(utt) + len(pause)) / SAMPLE_RATE
        previous = speaker
    return np.concatenate(parts).astype(np.float32), reference


def librispeech_cases(seeds: Sequence[int]) -> list[Case]:
    """1-, 2- and 4-speaker LibriSpeech conversations, one of each per seed."""
    utterances = librispeech_by_speaker()
    cases = []
    for seed in seeds:
        for n, minimum in ((1, 60.0), (2, 70.0), (4, 130.0)):
            samples, ref = make_conversation(utterances, n, minimum, seed=1000 * n + seed)
            cases.append(Case(f"librispeech-{n}spk", f"ls{n}spk-seed{seed}", samples, ref))
    return cases


def far_field(case: Case, seed: int, snr_db: float = 15.0) -> Case:
    """``case`` as a distant microphone in a room would hear it: each speaker at a level
    drawn from -18 to 0 dB and through a room response of their own (RT60 0.4-0.9 s,
    direct-to-reverberant ratio -20 to -5 dB), pink room noise ``snr_db`` below the
    loudest speaker."""
    from scipy.signal import fftconvolve

    from scripts.train_emotion import coloured_noise, synthetic_rir

    rng = np.random.default_rng(seed)
    speakers = sorted({s for _, _, s in case.reference})
    gains = {s: 10 ** (rng.uniform(-18.0, 0.0) / 20) for s in speakers}
    rooms = {}
    for s in speakers:
        rir = synthetic_rir(rng.uniform(0.4, 0.9), rng.uniform(-20.0, -5.0), rng, SAMPLE_RATE)
        rooms[s] = rir / float(np.sqrt(np.sum(rir**2)))  # unit energy: the gain sets the level
    out = np.zeros(len(case.samples) + 2 * SAMPLE_RATE)
    for start, end, speaker in case.reference:
        a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        heard = fftconvolve(case.samples[a:b], rooms[speaker]) * gains[speaker]
        out[a : a + len(heard)] += heard
    out = out[: len(case.samples)]
    level = float(np.sqrt(np.mean(case.samples.astype(np.float64) ** 2))) * max(gains.values())
    noise = coloured_noise(len(out), 1.0, rng)  # pink
    noise *= level / float(np.sqrt(np.mean(noise**2))) / 10 ** (snr_db / 20)
    x = out + noise
    x /= max(1.0, float(np.abs(x).max()))
    group = case.group.replace("librispeech", "far-field")
    return Case(group, f"ff-{case.uri}", x.astype(np.float32), case.reference)


def far_field_cases(clean: Sequence[Case]) -> list[Case]:
    """The 2- and 4-speaker conversations of ``clean`` (:func:`librispeech_cases`) heard
    far-field, each through rooms of its own."""
    return [far_field(c, seed=7 + i) for i, c in enumerate(clean) if not c.group.endswith("1spk")]


def long_far_field_cases(seeds: Sequence[int]) -> list[Case]:
    """Far-field 4-speaker LibriSpeech conversations of about 250 s and 2-speaker ones
    of about 165 s (where their speakers' shared utterances run out), one of each per
    seed: the clustering's fragments of one voice grow with the length."""
    utterances = librispeech_by_speaker()
    cases = []
    for seed in seeds:
        for n in (2, 4):
            samples, ref = make_conversation(utterances, n, 250.0, seed=1000 * n + 3000 + seed)
            clean = Case(f"librispeech-long-{n}spk", f"ls{n}spk-long-seed{seed}", samples, ref)
            cases.append(far_field(clean, seed=70 + seed))
    return cases


def _ascii_uri(name: str) -> str:
    """``trñ00`` → ``trn00``: the uri an RTTM uses for a file name."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def read_rttm(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """RTTM ``SPEAKER`` lines by uri: ``(start, end, speaker)``."""
    out: dict[str, list[tuple[float, float, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            start, dur = float(f[3]), float(f[4])
            out.setdefault(f[1], []).append((start, start + dur, f[7]))
    return out


def read_uem(path: Path) -> dict[str, tuple[float, float]]:
    """UEM lines by uri: the scored ``(start, end)``."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        f = line.split()
        if len(f) >= 4:
            out[f[0]] = (float(f[2]), float(f[3]))
    return out


def reference_for(
    path: Path, references: dict[str, list[tuple[float, float, str]]]
) -> tuple[str, list[tuple[float, float, str]]] | None:
    """The RTTM file id and turns that belong to ``path``: its stem (NFC, as RTTMs name
    files), else the only file id there is; None when neither matches."""
    stem = unicodedata.normalize("NFC", path.stem)
    if stem in references:
        return stem, references[stem]
    if len(references) == 1:
        return next(iter(references.items()))
    return None


def file_cases(
    files: Sequence[Path], rttms: Sequence[Path], uems: Sequence[Path] = ()
) -> list[Case]:
    """Recordings of your own with their RTTM references (and UEMs), as the "files" set:
    each file's reference is the RTTM file id named like it (or the only one there is)."""
    from ethostral_serve.audio import decode_audio

    refs: dict[str, list[tuple[float, float, str]]] = {}
    scored: dict[str, tuple[float, float]] = {}
    for rttm in rttms:
        refs.update(read_rttm(rttm))
    for uem in uems:
        scored.update(read_uem(uem))
    cases = []
    for path in files:
        found = reference_for(path, refs)
        if found is None:
            raise ValueError(f"{path}: no reference in {', '.join(map(str, rttms))}")
        uri, reference = found
        cases.append(Case("files", uri, decode_audio(path).samples, reference, scored.get(uri)))
    return cases


def ami_cases() -> list[Case]:
    """The pyannote-debug AMI excerpts (plus the silent file) and the pyannote-sample call."""
    from ethostral_serve.audio import decode_audio

    cases = []
    for root, stem in (("pyannote-debug", "debug.*"), ("pyannote-sample", "sample")):
        folder = DATA / "diarization" / root
        refs: dict[str, list[tuple[float, float, str]]] = {}
        uems: dict[str, tuple[float, float]] = {}
        for rttm in sorted(folder.glob(f"{stem}.rttm")):
            refs.update(read_rttm(rttm))
        for uem in sorted(folder.glob(f"{stem}.uem")):
            uems.update(read_uem(uem))
        for wav in sorted(folder.glob("*.wav")):
            uri = _ascii_uri(unicodedata.normalize("NFC", wav.stem))
            samples = decode_audio(wav).samples
            group = "ami-debug" if root == "pyannote-debug" else "sample-call"
            if uri not in refs:
                group = "silence"
            cases.append(Case(group, uri, samples, refs.get(uri, []), uems.get(uri)))
    return cases


# Consecutive pyannote-debug excerpts of one AMI meeting (the same speakers), joined
# into one-minute meetings.
AMI_MINUTES = (("trn07", "trn08"), ("tst00", "tst01"), ("dev00", "dev01"))


def ami_minutes(cases: Sequence[Case]) -> list[Case]:
    """One-minute AMI meetings: excerpts of the same meeting joined end to end."""
    by_uri = {c.uri: c for c in cases if c.group == "ami-debug"}
    out = []
    for names in AMI_MINUTES:
        if not all(n in by_uri for n in names):
            continue
        samples, reference, offset = [], [], 0.0
        for name in names:
            part = by_uri[name]
            samples.append(part.samples)
            reference += [(s + offset, e + offset, spk) for s, e, spk in part.reference]
            offset += part.duration
        out.append(Case("ami-minute", "+".join(names), np.concatenate(samples), reference))
    return out


def write_case(case: Case, out: Path) -> None:
    """Write ``<uri>.wav`` (16-bit PCM) and ``<uri>.rttm``."""
    import wave

    out.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(case.samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(out / f"{case.uri}.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    lines = [
        f"SPEAKER {case.uri} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>"
        for s, e, spk in case.reference
    ]
    (out / f"{case.uri}.rttm").write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass
class Score:
    """Error durations in seconds, summed over files."""

    total: float = 0.0
    missed: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0

    def add(self, other: Score) -> None:
        """Accumulate another file's errors."""
        self.total += other.total
        self.missed += other.missed
        self.false_alarm += other.false_alarm
        self.confusion += other.confusion

    def cells(self) -> list[str]:
        """DER, missed, false alarm, confusion as percentages of reference speech."""
        if self.total <= 0:
            return ["-"] * 4
        der = self.missed + self.false_alarm + self.confusion
        return [
            f"{100 * v / self.total:.1f}"
            for v in (der, self.missed, self.false_alarm, self.confusion)
        ]


def exclusive_oracle(case: Case, frame_s: float = 0.01) -> list[tuple[float, float, str]]:
    """The reference made one-speaker-at-a-time: each frame goes to the latest-started turn.

    It has no false alarm and no confusion, and misses only what overlaps another
    speaker, so its DER is the lowest any exclusive diarization (one speaker per
    instant, as transcript segments are) can reach on this file.
    """
    n = int(np.ceil(case.duration / frame_s)) + 1
    latest = np.full(n, -1.0)
    owner = np.full(n, -1)
    names = sorted({spk for _, _, spk in case.reference})
    for s, e, spk in case.reference:
        a, b = round(s / frame_s), round(e / frame_s)
        take = latest[a:b] <= s
        latest[a:b][take] = s
        owner[a:b][take] = names.index(spk)
    turns: list[tuple[float, float, str]] = []
    change = np.flatnonzero(np.diff(owner)) + 1
    for a, b in zip(np.r_[0, change], np.r_[change, n], strict=True):
        if owner[a] >= 0:
            turns.append((a * frame_s, b * frame_s, names[owner[a]]))
    return turns


def score(case: Case, hypothesis: Sequence[tuple[float, float, str]]) -> Score:
    """DER components of one file (collar 0.25 s, overlap scored)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(uri=case.uri), Annotation(uri=case.uri)
    for i, (s, e, spk) in enumerate(case.reference):
        ref[Segment(s, e), i] = spk
    for i, (s, e, spk) in enumerate(hypothesis):
        hyp[Segment(s, e), i] = spk
    lo, hi = case.uem or (0.0, case.duration)
    metric = DiarizationErrorRate(collar=COLLAR, skip_overlap=False)
    d = metric(ref, hyp, uem=Timeline([Segment(lo, hi)]), detailed=True)
    return Score(d["total"], d["missed detection"], d["false alarm"], d["confusion"])


def run(cases: Sequence[Case], overrides: dict[str, str | None], repeat: int) -> None:
    """Diarize every case, print the per-file and per-group tables, then a timing table."""
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.engine import load_diarizer
    from ethostral_serve.settings import DiarizerSettings

    settings = DiarizerSettings.model_validate(overrides)
    vad = SileroVad(Settings().vad)  # ETHOSTRAL_VAD__* apply
    diarizer = load_diarizer(Settings(diarizer=settings))
    print(f"machine: {machine()}, torch threads: {_torch_threads()}")
    print(f"settings: {settings.model_dump()}\n")

    rows, groups, timing = [], {}, {}
    for case in cases:
        regions = vad.speech_regions(case.samples)
        t0 = time.perf_counter()
        turns = diarizer.diarize(case.samples, regions)
        elapsed = time.perf_counter() - t0
        found = len({t.speaker for t in turns})
        sc = score(case, [(t.start, t.end, t.speaker) for t in turns])
        bound = score(case, exclusive_oracle(case)).cells()[0]
        groups.setdefault(case.group, Score()).add(sc)
        spent = timing.setdefault(case.group, [0.0, 0.0])
        spent[0] += elapsed
        spent[1] += case.duration
        rows.append(
            [
                case.group,
                case.uri,
                f"{case.duration:.0f}",
                case.speakers,
                found,
                *sc.cells(),
                f"{1000 * elapsed / case.duration:.1f}",
                bound,
            ]
        )
    headers = ["set", "file", "dur s", "ref spk", "hyp spk", "DER %", "miss %", "FA %"]
    headers += ["conf %", "ms/audio s", "exclusive bound %"]
    print_table(headers, rows)
    print()
    summary = []
    for group, sc in groups.items():
        spent, audio = timing[group]
        n = sum(1 for c in cases if c.group == group)
        summary.append([group, n, f"{audio:.0f}", *sc.cells(), f"{1000 * spent / audio:.1f}"])
    print_table(["set", "files", "audio s", *headers[5:-1]], summary)
    if repeat > 0:
        print()
        _timing(diarizer, vad, cases, repeat)


def _timing(diarizer: DiarizerBackend, vad: VadBackend, cases: Sequence[Case], repeat: int) -> None:
    """Repeat the diarizer on the longest file of each set: wall and CPU ms per audio second.

    Other processes on the machine slow single runs down, so the minimum is the cleaner
    figure of the diarizer's own cost and the median shows the spread.
    """
    longest: dict[str, Case] = {}
    for case in cases:
        if case.reference and (
            case.group not in longest or case.duration > longest[case.group].duration
        ):
            longest[case.group] = case
    rows = []
    for group, case in longest.items():
        regions = vad.speech_regions(case.samples)
        wall, cpu = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            diarizer.diarize(case.samples, regions)
            wall.append(1000 * (time.perf_counter() - t0) / case.duration)
            cpu.append(1000 * (time.process_time() - c0) / case.duration)
        rows.append(
            [
                group,
                case.uri,
                f"{case.duration:.0f}",
                f"{min(wall):.1f}",
                f"{np.median(wall):.1f}",
                f"{min(cpu):.1f}",
                f"{np.median(cpu):.1f}",
            ]
        )
    headers = ["set", "file", "dur s", "wall min", "wall median", "cpu min", "cpu median"]
    print(f"diarizer time in ms per audio second, {repeat} runs each (VAD excluded):")
    print_table(headers, rows)


def session_segments(
    words: Sequence[WordTiming],
    turns: Sequence[SpeakerTurn],
    regions: Sequence[Span],
    settings: Settings,
) -> list[tuple[float, float, str]]:
    """Segments as the pipeline builds them: each word to one speaker, then grouped, the
    edges moved out to the speaker's turn (``segments.extend_to_speech_s``)."""
    from ethostral_serve.pipeline.segments import assign_speakers, extend_to_speech, group_words

    seg = settings.segments
    speakers = assign_speakers(words, turns)
    drafts = group_words(words, speakers, seg.max_segment_s, seg.pause_split_s)
    spans = extend_to_speech(
        [d.span for d in drafts],
        [d.speaker for d in drafts],
        turns,
        regions,
        seg.extend_to_speech_s,
    )
    return [(s.start, s.end, d.speaker) for s, d in zip(spans, drafts, strict=True)]


def run_sessions(
    cases: Sequence[Case],
    overrides: dict[str, str | None],
    counts: bool,
    language: str | None = "en",
) -> None:
    """Score what users get: the Session's segments (VAD → ASR words → speakers).

    Next to each file's DER stands the DER of the same words given the reference
    speakers ("oracle labels": the bound this VAD and ASR leave). With ``counts``, each
    file is also run with its true speaker count given, as a request may. ``language``
    None: each file's language is detected, as for a request without one.
    """
    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.chunks import with_diarized_speech
    from ethostral_serve.pipeline.compose import recognise
    from ethostral_serve.pipeline.types import SpeakerCount
    from ethostral_serve.settings import DiarizerSettings

    settings = Settings(diarizer=DiarizerSettings.model_validate(overrides))
    engine = Engine.load(settings, diarize=True, emotion=False)
    assert engine.diarizer is not None
    print(f"machine: {machine()}; Session segments, collar {COLLAR} s, overlap scored")
    print(f"vad settings: {settings.vad.model_dump()}")
    print(f"diarizer settings: {settings.diarizer.model_dump()}\n")
    rows, groups = [], {}
    min_piece = settings.vad.diarized_speech_min_s
    for case in cases:
        if not case.reference:
            continue
        regions = engine.vad.speech_regions(case.samples)
        reference = [SpeakerTurn(s, e, spk) for s, e, spk in case.reference]
        runs = {"auto": None}
        if counts:
            runs["count given"] = SpeakerCount(num=case.speakers)
        oracle = ""
        for name, count in runs.items():
            # as the pipeline does: the recogniser also reads what the diarizer heard
            turns = engine.diarizer.diarize(case.samples, regions, count)
            heard = with_diarized_speech(regions, turns, min_piece)
            transcript = recognise(engine.model, case.samples, heard, settings.vad, language)
            words = transcript.words
            if name == "auto":
                bound = score(case, session_segments(words, reference, heard, settings))
                groups.setdefault((case.group, "oracle labels"), Score()).add(bound)
                oracle = bound.cells()[0]
            hyp = session_segments(words, turns, heard, settings)
            sc = score(case, hyp)
            groups.setdefault((case.group, name), Score()).add(sc)
            found = len({spk for _, _, spk in hyp})
            rows.append(
                [
                    case.group,
                    case.uri,
                    name,
                    case.speakers,
                    found,
                    *sc.cells(),
                    oracle,
                    transcript.language,
                ]
            )
    headers = ["set", "file", "count", "ref spk", "found", "DER %", "miss %", "FA %", "conf %"]
    print_table([*headers, "oracle labels DER %", "language"], rows)
    print()
    summary = [[g, name, *sc.cells()] for (g, name), sc in sorted(groups.items())]
    print_table(["set", "count", *headers[5:]], summary)


def stream_segments(
    case: Case, backends: object, settings: Settings, language: str | None = "en"
) -> tuple[list[tuple[float, float, str]], list[tuple[float, float, str]], str]:
    """A case sent through a live stream in 100 ms chunks: the stored session's segments
    with the live speakers, and after the speaker pass over the whole stream, and the
    session's language (``language`` None: detected from the finals).

    Each final is recognised alone, as soon as it is due (no grouping under load).
    """
    from ethostral_serve.pipeline.live_stream import LiveStream, StreamParams

    params = StreamParams(language=language, emotion=False)
    live = LiveStream(params, backends, settings, language=language)  # type: ignore[arg-type]
    pcm = (np.clip(case.samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = 2 * SAMPLE_RATE // 10
    for i in range(0, len(pcm), step):
        for due in live.step(live.decode(pcm[i : i + step])):
            if due.kind == "final":
                live.final_events([due])
    for due in live.tracker.finish():
        if due.kind == "final":
            live.final_events([due])

    def spans() -> list[tuple[float, float, str]]:
        return [(s.start_ms / 1000, s.end_ms / 1000, s.speaker) for s in live.session().segments]

    online = spans()
    live.refine_speakers()
    return online, spans(), live.session().language


def run_streams(
    cases: Sequence[Case], overrides: dict[str, str | None], language: str | None = "en"
) -> None:
    """Score live streams' stored sessions: live speakers only, and after the pass over
    the whole stream (``ETHOSTRAL_STREAM__REFINE_SPEAKERS_MAX_S``)."""
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad
    from ethostral_serve.engine import Engine
    from ethostral_serve.settings import DiarizerSettings

    settings = Settings(diarizer=DiarizerSettings.model_validate(overrides))
    engine = Engine.load(settings, diarize=True, emotion=False)
    vad = SileroStreamingVad(settings.vad.restart_s)
    backends = LocalStreamBackends(vad, engine.model, engine.diarizer)
    print(f"machine: {machine()}; live streams' stored sessions, collar {COLLAR} s")
    print(f"vad settings: {settings.vad.model_dump()}")
    print(f"diarizer settings: {settings.diarizer.model_dump()}\n")
    rows, groups = [], {}
    for case in cases:
        if not case.reference:
            continue
        online, refined, heard = stream_segments(case, backends, settings, language)
        for name, hyp in (("live speakers", online), ("whole-stream pass", refined)):
            sc = score(case, hyp)
            groups.setdefault((case.group, name), Score()).add(sc)
            found = len({spk for _, _, spk in hyp})
            rows.append([case.group, case.uri, name, case.speakers, found, *sc.cells(), heard])
    headers = ["set", "file", "speakers", "ref spk", "found", "DER %", "miss %", "FA %"]
    print_table([*headers, "conf %", "language"], rows)
    print()
    summary = [[g, name, *sc.cells()] for (g, name), sc in sorted(groups.items())]
    print_table(["set", "speakers", "DER %", "miss %", "FA %", "conf %"], summary)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=None, help="write the built wav + rttm here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-ami", action="store_true", help="LibriSpeech conversations only")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs per set (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    parser.add_argument(
        "--sessions",
        action="store_true",
        help="score the Session's segments (VAD, ASR words, speakers) instead of raw turns",
    )
    parser.add_argument(
        "--counts", action="store_true", help="with --sessions: also run with the true count"
    )
    parser.add_argument(
        "--language",
        default="en",
        help="with --sessions or --streams: the language the files are sent with ('auto': "
        "detected, as for a request without one)",
    )
    parser.add_argument(
        "--groups", nargs="*", default=[], help="only these sets (e.g. ami-minute sample-call)"
    )
    parser.add_argument(
        "--far-field",
        action="store_true",
        help="also the 2- and 4-speaker LibriSpeech conversations as a distant microphone "
        "hears them (levels, room responses, noise)",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="also far-field 4-speaker conversations of about 250 s (2-speaker: 165 s)",
    )
    parser.add_argument(
        "--streams",
        action="store_true",
        help="score live streams' stored sessions (live speakers, then the whole-stream pass)",
    )
    parser.add_argument(
        "--files", nargs="+", type=Path, default=[], help="recordings of your own (set 'files')"
    )
    parser.add_argument(
        "--rttm", nargs="+", type=Path, default=[], help="with --files: their references"
    )
    parser.add_argument("--uem", nargs="+", type=Path, default=[], help="with --files: UEMs")
    args = parser.parse_args()
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    overrides: dict[str, str | None] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = None if value.lower() == "none" else value

    cases: list[Case] = []
    if args.files:
        if not args.rttm:
            parser.error("--files needs --rttm")
        try:
            cases += file_cases(args.files, args.rttm, args.uem)
        except ValueError as exc:
            parser.error(str(exc))
    if set(args.groups) != {"files"}:  # the built sets need ../shared's data
        built = librispeech_cases(args.seeds)
        if args.far_field:
            built += far_field_cases(built)
        if args.long:
            built += long_far_field_cases(args.seeds)
        if args.out is not None:
            for case in built:
                write_case(case, args.out)
        if not args.no_ami:
            ami = ami_cases()
            built += ami + ami_minutes(ami)
        cases = built + cases
    if args.groups:
        cases = [c for c in cases if c.group in args.groups]
    if args.streams:
        run_streams(cases, overrides, None if args.language == "auto" else args.language)
    elif args.sessions:
        run_sessions(
            cases, overrides, args.counts, None if args.language == "auto" else args.language
        )
    else:
        run(cases, overrides, args.repeat)


if __name__ == "__main__":
    main()
