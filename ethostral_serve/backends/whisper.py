"""Speech recognition with faster-whisper, keeping the encoder states for emotion.

Each ASR window (a :class:`Chunk` of at most 30 s of speech) is encoded once; that
encoder output both drives decoding (beam search, word timestamps) and is kept, frame by
frame on the original timeline, so the emotion model reads it without a second pass.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.cores import default_cpu_threads
from ethostral_serve.backends.whisper_models import resolve_whisper_model
from ethostral_serve.backends.windows import (
    FRAME_S,
    MIN_WINDOW_SAMPLES,
    check_language,
    transcript_from_windows,
)
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.language_id import (
    DRAFT_TOKENS_PER_S,
    DraftCheck,
    LanguageRanking,
    LanguageVote,
    checked_language,
    checked_windows,
    compression_ratio,
    recognised_check,
    top_languages,
)
from ethostral_serve.pipeline.types import Chunk, Transcript, WindowResult, WordTiming
from ethostral_serve.settings import AsrSettings, Settings

T = TypeVar("T")

# Tokens one decoding pass of a window may write. faster-whisper's default is Whisper's
# whole text context (448 with the prompt); OpenAI's reference decoder writes at most
# half of it (224). A pass that loops on a phrase (far-field or noisy audio) runs to
# the cap, then again at each fallback temperature, so the cap bounds its cost; speech
# needs far fewer (the same words on clean and meeting audio, measured). 220 keeps the
# longest prompt (1 + 223 previous tokens + 4) within 448, which faster-whisper checks.
MAX_NEW_TOKENS = 220


def host_array(storage: object) -> np.ndarray:
    """A CTranslate2 StorageView as a numpy array, copied off the GPU when it is on one."""
    if getattr(storage, "device", "cpu") != "cpu":
        import ctranslate2

        storage = storage.to_device(ctranslate2.Device.cpu)  # type: ignore[attr-defined]
    return np.asarray(storage)


def seed_sampling(seed: int) -> None:
    """Seed CTranslate2's random sampling.

    Each CTranslate2 thread seeds its generator once, from this seed, the first time it
    samples, so seeding before a model's first call makes a fresh process repeatable
    (with one worker, calls meet the same generator in the same order)."""
    import ctranslate2

    ctranslate2.set_random_seed(seed)


def encoder_input(features: np.ndarray, max_frames: int, pad_frames: int) -> np.ndarray:
    """Log-mel ``features`` (mels, n) as the encoder reads them: cut to ``max_frames``
    (Whisper's 30 s), then padded to ``pad_frames`` if they fit in it, else to
    ``max_frames``.

    The padding is silence: Whisper's log-mel floor, 8 log10 units below the loudest
    bin, which its ``(x + 4) / 4`` scaling puts at ``max - 2``; it is what features of
    audio padded with zeros hold. (faster-whisper pads the features with zeros, a level
    of sound: with a 20 s input Whisper then repeated or invented words after short
    clips, RAVDESS WER 13.3 % against 3.5 % with silence, measured.)
    """
    x = features[:, :max_frames]
    target = pad_frames if x.shape[1] <= pad_frames else max_frames
    silence = float(x.max()) - 2.0 if x.size else 0.0
    return np.pad(x, ((0, 0), (0, target - x.shape[1])), constant_values=silence)


def resumed_input(features: np.ndarray, max_frames: int, pad_frames: int) -> np.ndarray:
    """The encoder input for ``features`` as faster-whisper hands them to its encoder.

    Where decoding resumes inside a window (Whisper left its last segment unfinished),
    faster-whisper encodes the rest of the window padded with zeros to 30 s: a level of
    sound, not silence, and a full 30 s pass for what is often a second or two. Such
    trailing all-zero frames are replaced here as :func:`encoder_input` pads a window
    (silence, to ``pad_frames`` when the rest fits). Anything else (a window padded
    here already, a batch) is returned unchanged.
    """
    if not isinstance(features, np.ndarray) or features.ndim != 2 or features.shape[1] == 0:
        return features
    if features[:, -1].any():
        return features
    heard = np.flatnonzero(features.any(axis=0))
    if len(heard) == 0:
        return features
    return encoder_input(features[:, : heard[-1] + 1], max_frames, pad_frames)


@functools.cache
def window_model_class() -> type:
    """faster-whisper's ``WhisperModel`` whose encoder reads a resumed window's rest
    padded with silence (:func:`resumed_input`); imported on first use."""
    from faster_whisper import WhisperModel

    class WindowWhisperModel(WhisperModel):  # type: ignore[misc]
        pad_frames = 0  # set by WhisperAsr once the model is loaded

        def encode(self, features: np.ndarray) -> Any:
            fe = self.feature_extractor
            return super().encode(resumed_input(features, fe.nb_max_frames, self.pad_frames))

    return WindowWhisperModel


def pad_frames(seconds: float, frame_s: float, max_frames: int) -> int:
    """Feature frames of ``seconds`` of padded input: whole pairs (the encoder halves
    the frame rate), rounded up, at most ``max_frames``."""
    frames = round(seconds / frame_s, 6)  # 7 / 0.01 is 700.0000000000001
    return min(max_frames, 2 * int(np.ceil(frames / 2)))


def at_cpu_priority(priority: str, make: Callable[[], T]) -> T:
    """``make()`` run on a new thread at a lower CPU ``priority`` ('low' or 'idle').

    On Linux a thread starts with its creator's priority and scheduling policy, so the
    compute threads a CTranslate2 model starts while being built all run at it, while
    the calling thread keeps its own. 'low' adds 10 to the nice value; 'idle' is
    SCHED_IDLE. 'normal' (or a system without these calls) just calls ``make()``.
    """
    if priority == "normal" or not hasattr(os, "sched_setscheduler"):
        return make()
    if priority not in ("low", "idle"):
        raise ValueError(f"unknown CPU priority {priority!r}")
    box: dict[str, Any] = {}

    def build() -> None:
        try:
            tid = threading.get_native_id()
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(
                    os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10)
                )
            box["value"] = make()
        except BaseException as exc:  # re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=build, name="build-at-cpu-priority")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _seconds(audio: np.ndarray) -> float:
    return len(audio) / SAMPLE_RATE


class _HeldWindow(NamedTuple):
    """A window encoded for a language vote, waiting for the vote's language."""

    index: int
    audio: np.ndarray
    features: np.ndarray
    encoded: object
    ranking: LanguageRanking


class WhisperAsr:
    """faster-whisper over the bundled (or a local) CTranslate2 Whisper model."""

    def __init__(self, settings: AsrSettings, cache_dir: os.PathLike[str] | str) -> None:
        from pathlib import Path

        try:
            model_class = window_model_class()
        except ImportError as exc:
            raise ModelLoadError("faster-whisper is missing: pip install faster-whisper") from exc
        self.settings = settings
        self.model_dir = resolve_whisper_model(settings.model, Path(cache_dir))
        threads = settings.cpu_threads or default_cpu_threads()
        seed_sampling(settings.seed)
        try:
            self.model = at_cpu_priority(
                settings.cpu_priority,
                lambda: model_class(
                    str(self.model_dir),
                    device=settings.device,
                    compute_type=settings.compute_type,
                    cpu_threads=threads,
                    num_workers=settings.num_workers,
                    local_files_only=True,
                ),
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"could not load Whisper from {self.model_dir}: {exc}") from exc
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages: tuple[str, ...] = tuple(self.model.supported_languages)
        fe = self.model.feature_extractor
        self.pad_frames = pad_frames(settings.window_pad_s, fe.time_per_frame, fe.nb_max_frames)
        self.model.pad_frames = self.pad_frames

    def encoder_input(self, audio: np.ndarray) -> np.ndarray:
        """The padded log-mel features the encoder reads for ``audio`` (at most 30 s
        are read): padded to ``asr.window_pad_s`` when shorter, else to 30 s."""
        fe = self.model.feature_extractor
        features = fe(np.asarray(audio, dtype=np.float32))
        return encoder_input(features, fe.nb_max_frames, self.pad_frames)

    def check_language(self, language: str | None) -> str | None:
        """Validate a requested language code (``None`` means detect)."""
        return check_language(language, self.languages)

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Recognise each window; words are mapped back to the original timeline.

        Windows are decoded one after another. Without a language, the first
        ``asr.language_windows`` windows are encoded and their language probabilities
        pooled (:class:`LanguageVote`) before any of them is decoded, and the pooled
        leader is every window's language.
        """
        language = self.check_language(language)
        vote = None
        if language is None and self.multilingual:
            vote = LanguageVote(self.settings.language_windows)
        results = [WindowResult.empty(language) for _ in chunks]
        held: list[_HeldWindow] = []
        decoded = 0

        def keep(index: int, result: WindowResult) -> None:
            nonlocal decoded
            results[index] = result
            decoded += 1
            if progress is not None:
                progress(decoded / len(chunks))

        for index, chunk in enumerate(chunks):
            window = chunk.samples(samples, SAMPLE_RATE)
            if vote is None or window.size < MIN_WINDOW_SAMPLES:
                keep(index, self.transcribe_windows([window], [language])[0])
                continue
            features, encoded = self._encode_window(window)
            ranking = self._ranking(encoded)
            vote.add(ranking, _seconds(window))
            held.append(_HeldWindow(index, window, features, encoded, ranking))
            if vote.full:
                language = self._decode_held(held, vote, keep)
                vote, held = None, []
        if vote is not None and held:
            self._decode_held(held, vote, keep)
        return transcript_from_windows(chunks, results, self.multilingual)

    def _decode_held(
        self,
        held: Sequence[_HeldWindow],
        vote: LanguageVote,
        keep: Callable[[int, WindowResult], None],
    ) -> str:
        """Decode the windows read for a language vote in its language; returns it.

        An unsure vote is settled as :meth:`_decide` does, except that the leader is
        checked on its first (beam) recognition of the windows, which is needed anyway,
        rather than on drafts. Where that passes, it is the window's recognition; only
        where it fails is the runner-up drafted, and the failed windows are recognised
        again, with Whisper's sampling fallback, in whichever language wins. A wrong
        leader's recognition is not sampled again: a language Whisper cannot write
        loops at every temperature, and sampling a 165 s far-field file in Welsh that
        way cost a minute (measured)."""
        lead = vote.leader()
        assert lead is not None, "held windows were counted"
        decoded: dict[int, WindowResult] = {}
        language = lead[0]
        if vote.unsure:
            candidates = vote.candidates()
            read = [held[i] for i in checked_windows([_seconds(w.audio) for w in held])]

            def drafts_in(code: str) -> list[DraftCheck]:
                if code != candidates[0]:
                    return [self._draft_check(w.encoded, code, _seconds(w.audio)) for w in read]
                checks = []
                for w in read:
                    result, check = self._decode_checked(
                        w.audio, w.features, w.encoded, code, fallback=False
                    )
                    if not check.failed:
                        decoded[w.index] = result
                    checks.append(check)
                return checks

            if read and len(candidates) > 1:
                language = checked_language(candidates, drafts_in)
            else:
                language = candidates[0]
            if language != candidates[0]:
                decoded.clear()
        probability = vote.probability(language)
        for w in held:
            result = decoded.get(w.index)
            if result is None:
                result = self._decode_window(w.audio, w.features, w.encoded, language)
            result.language_probability = probability
            result.language_ranking = w.ranking
            keep(w.index, result)
        return language

    def identify_language(self, windows: Sequence[np.ndarray]) -> tuple[str, float] | None:
        """The language of a file from its first windows (each at most 30 s), as
        :meth:`transcribe` decides it: a :class:`LanguageVote` of the first
        ``asr.language_windows`` with speech, checked by drafts when unsure. None when
        no window has speech."""
        if not self.multilingual:
            return "en", 1.0
        vote = LanguageVote(self.settings.language_windows)
        encoded: list[object] = []
        lengths: list[int] = []
        for window in windows:
            if vote.full:
                break
            if len(window) < MIN_WINDOW_SAMPLES:
                continue
            _, e = self._encode_window(window)
            vote.add(self._ranking(e), _seconds(window))
            encoded.append(e)
            lengths.append(len(window))
        return self._decide(vote, encoded, lengths)

    def _decide(
        self, vote: LanguageVote, encoded: Sequence[object], lengths: Sequence[int]
    ) -> tuple[str, float] | None:
        """The vote's leader; when it is unsure, the candidate drafted best."""
        lead = vote.leader()
        if lead is None or not vote.unsure:
            return lead
        seconds = [n / SAMPLE_RATE for n in lengths]
        language = self._settle(encoded, seconds, vote.candidates())
        return language, vote.probability(language)

    def settle_language(self, windows: Sequence[np.ndarray], candidates: Sequence[str]) -> str:
        """Of languages an unsure :class:`LanguageVote` heard in ``windows`` (each at
        most 30 s), the one whose greedy drafts fail least (:func:`checked_language`),
        drafted on the windows :func:`checked_windows` picks."""
        read = [windows[i] for i in checked_windows([_seconds(w) for w in windows])]
        if not self.multilingual or len(candidates) < 2 or not read:
            return candidates[0]
        encoded = [self._encode_window(w)[1] for w in read]
        return self._settle(encoded, [_seconds(w) for w in read], candidates)

    def _settle(
        self, encoded: Sequence[object], seconds: Sequence[float], candidates: Sequence[str]
    ) -> str:
        read = checked_windows(seconds)
        if not read:
            return candidates[0]
        return checked_language(
            candidates,
            lambda language: [self._draft_check(encoded[i], language, seconds[i]) for i in read],
        )

    def _draft_check(self, encoded: object, language: str, seconds: float) -> DraftCheck:
        """A greedy draft of one encoded window in ``language``, without timestamps or
        any guard against repeating (a loop is what the check looks for), capped at
        ``DRAFT_TOKENS_PER_S``."""
        from faster_whisper.tokenizer import Tokenizer

        tok = Tokenizer(self.model.hf_tokenizer, True, task="transcribe", language=language)
        prompt = [*tok.sot_sequence, tok.no_timestamps]
        cap = min(224, len(prompt) + 8 + int(DRAFT_TOKENS_PER_S * seconds))
        (result,) = self.model.model.generate(
            encoded, [prompt], beam_size=1, max_length=cap, return_scores=True, suppress_blank=True
        )
        text = tok.decode([t for t in result.sequences_ids[0] if t < tok.eot])
        return DraftCheck(seconds, float(result.scores[0]), compression_ratio(text))

    def _encode_window(self, audio: np.ndarray) -> tuple[np.ndarray, object]:
        """A window's features and its encoder output, as :meth:`transcribe_windows`
        reads them."""
        fe = self.model.feature_extractor
        features = fe(np.asarray(audio, dtype=np.float32))
        (encoded,) = self.encode_padded(
            [encoder_input(features, fe.nb_max_frames, self.pad_frames)]
        )
        return features, encoded

    def transcribe_windows(
        self, windows: Sequence[np.ndarray], languages: Sequence[str | None]
    ) -> list[WindowResult]:
        """Recognise independent windows of at most 30 s; ``None`` language: detect it.

        A window shorter than ``asr.window_pad_s`` is encoded padded to that length
        instead of 30 s. Windows of one padded length share one batched encoder pass;
        each is then decoded (beam search, word timestamps) from its own encoder output.
        Times in the results are seconds inside each window.
        """
        if len(windows) != len(languages):
            raise ValueError("one language (or None) per window")
        fe = self.model.feature_extractor
        todo = [i for i, w in enumerate(windows) if w.size >= MIN_WINDOW_SAMPLES]
        results = [WindowResult.empty(lang) for lang in languages]
        if not todo:
            return results
        features = [fe(np.asarray(windows[i], dtype=np.float32)) for i in todo]
        padded = [encoder_input(f, fe.nb_max_frames, self.pad_frames) for f in features]
        for i, f, encoded in zip(todo, features, self.encode_padded(padded), strict=True):
            results[i] = self._decode_window(windows[i], f, encoded, languages[i])
        return results

    def encode_padded(self, padded: list[np.ndarray]) -> list[object]:
        """Encoder outputs, one per padded feature matrix: one batched encoder pass per
        padded length."""
        out: list[object] = [None] * len(padded)
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(padded):
            by_length.setdefault(x.shape[1], []).append(i)
        for group in by_length.values():
            encoded = self._encode_batch([padded[i] for i in group])
            for i, e in zip(group, encoded, strict=True):
                out[i] = e
        return out

    def _encode_batch(self, padded: list[np.ndarray]) -> list[object]:
        """Encoder outputs of feature matrices of one shape, from one batched pass.

        Each item is split out on the host; on a GPU it is copied back to the device for
        its own decoding.
        """
        if len(padded) == 1:
            return [self.model.encode(padded[0])]
        import ctranslate2

        batch = host_array(self.model.encode(np.stack(padded)))
        items = [ctranslate2.StorageView.from_array(batch[i : i + 1]) for i in range(len(batch))]
        if self.settings.device == "cpu":
            return list(items)
        device = ctranslate2.Device.cuda
        return [item.to_device(device) for item in items]

    def _decode_window(
        self, audio: np.ndarray, features: np.ndarray, encoded: object, language: str | None
    ) -> WindowResult:
        return self._decode_checked(audio, features, encoded, language)[0]

    def _decode_checked(
        self,
        audio: np.ndarray,
        features: np.ndarray,
        encoded: object,
        language: str | None,
        fallback: bool = True,
    ) -> tuple[WindowResult, DraftCheck]:
        """A window's recognition, and how its decoding read (:func:`recognised_check`).
        Without ``fallback``, only the first (beam) decoding is made: where that passes,
        the recognition is the one ``fallback`` gives."""
        from faster_whisper.tokenizer import Tokenizer

        probability = 1.0
        ranking: LanguageRanking = ()
        if language is None:
            ranking = self._ranking(encoded)
            language, probability = ranking[0]
        tokenizer = Tokenizer(
            self.model.hf_tokenizer, self.multilingual, task="transcribe", language=language
        )
        words: list[WordTiming] = []
        parts: list[tuple[float, float, int, float]] = []
        duration = _seconds(audio)
        for segment in self.model.generate_segments(
            features, tokenizer, self._options(fallback), False, encoded
        ):
            parts.append(
                (
                    float(segment.avg_logprob),
                    float(segment.compression_ratio),
                    len(segment.tokens),
                    float(segment.temperature or 0.0),
                )
            )
            for w in segment.words or []:
                start = float(w.start)
                if start >= duration:  # timed in the padding: no audio there
                    continue
                end = min(duration, max(start, float(w.end)))
                words.append(WordTiming(w.word, start, end, w.probability))
        frames = host_array(encoded)[0, : self.frame_count(len(audio))].astype(np.float16)
        result = WindowResult(words, language, probability, frames, language_ranking=ranking)
        return result, recognised_check(duration, parts)

    def frame_count(self, n_samples: int) -> int:
        """Encoder frames that cover ``n_samples`` of audio (the rest is padding)."""
        frames = int(np.ceil(n_samples / SAMPLE_RATE / FRAME_S))
        return min(frames, self.model.feature_extractor.nb_max_frames // 2)

    def partial_text(self, audio: np.ndarray, language: str | None) -> tuple[str, str]:
        """A quick draft of what ``audio`` (at most 30 s) says: text and language.

        For live partials: the encoder reads the audio rounded up to whole seconds
        instead of padded to 30 s, and decoding is greedy without timestamps, so a
        few seconds take about a tenth of a full pass. Finals use :meth:`transcribe_windows`.
        """
        return self.partial_texts([audio], [language])[0]

    def partial_texts(
        self, audios: Sequence[np.ndarray], languages: Sequence[str | None]
    ) -> list[tuple[str, str]]:
        """Quick drafts of several clips (at most 30 s each) at once: text and language
        of each; a ``None`` language is detected.

        One encoder pass reads every clip, each padded to the longest rounded up to whole
        seconds, and one greedy decoding without timestamps writes every draft, so a
        batch of drafts costs less than as many single ones on a CPU. Each draft is
        capped at a length speech rarely passes, and a clip under 0.1 s is not read.
        """
        from faster_whisper.tokenizer import Tokenizer

        if len(audios) != len(languages):
            raise ValueError("one language (or None) per clip")
        fe = self.model.feature_extractor
        unread = "en" if not self.multilingual else "und"
        out = [("", language or unread) for language in languages]
        todo = [i for i, a in enumerate(audios) if len(a) >= MIN_WINDOW_SAMPLES]
        if not todo:
            return out
        features = [
            fe(np.asarray(audios[i], dtype=np.float32))[:, : fe.nb_max_frames] for i in todo
        ]
        longest = max(f.shape[1] for f in features)
        whole = min(fe.nb_max_frames, max(100, int(np.ceil(longest / 100)) * 100))
        batch = np.stack([np.pad(f, ((0, 0), (0, whole - f.shape[1]))) for f in features])
        encoded = self.model.encode(batch)
        chosen = [languages[i] for i in todo]
        if any(language is None for language in chosen):
            detected = self._detect_batch(encoded)
            chosen = [lang or found for lang, found in zip(chosen, detected, strict=True)]
        tokenizers = {
            lang: Tokenizer(
                self.model.hf_tokenizer, self.multilingual, task="transcribe", language=lang
            )
            for lang in set(chosen)
        }
        prompts = [
            [*tokenizers[lang].sot_sequence, tokenizers[lang].no_timestamps] for lang in chosen
        ]
        # Speech rarely passes ~4 tokens a second; the cap stops a draft from looping.
        caps = [
            min(224, len(prompt) + 8 + int(6 * len(audios[i]) / SAMPLE_RATE))
            for i, prompt in zip(todo, prompts, strict=True)
        ]
        results = self.model.model.generate(
            encoded,
            prompts,
            beam_size=1,
            max_length=max(caps),
            suppress_blank=True,
            no_repeat_ngram_size=4,
        )
        for i, lang, prompt, cap, result in zip(todo, chosen, prompts, caps, results, strict=True):
            tok = tokenizers[lang]
            # each draft's own cap, as if it had been decoded alone
            ids = result.sequences_ids[0][: cap - len(prompt)]
            out[i] = (tok.decode([t for t in ids if t < tok.eot]).strip(), lang)
        return out

    def encode_clip(self, audio: np.ndarray) -> np.ndarray:
        """Encoder frames (n, d) covering ``audio`` (at most 30 s), as float32, padded
        as :meth:`transcribe_windows` pads a window."""
        encoded = self.model.encode(self.encoder_input(audio))
        n = max(1, self.frame_count(len(audio)))
        return host_array(encoded)[0, :n].astype(np.float32)

    def language_ranking(self, audio: np.ndarray) -> LanguageRanking:
        """The most probable languages spoken in ``audio`` (at most 30 s are read), each
        with its probability."""
        if not self.multilingual:
            return (("en", 1.0),)
        return self._ranking(self.model.encode(self.encoder_input(audio)))

    def _detect_batch(self, encoded: object) -> list[str]:
        """The most probable language of each item of a batch of encoder outputs."""
        if not self.multilingual:
            return ["en"] * int(encoded.shape[0])  # type: ignore[attr-defined]
        return [ranked[0][0][2:-2] for ranked in self.model.model.detect_language(encoded)]

    def _ranking(self, encoded: object) -> LanguageRanking:
        """The most probable languages of one encoder output."""
        if not self.multilingual:
            return (("en", 1.0),)
        ranked = self.model.model.detect_language(encoded)[0]
        return top_languages([(token[2:-2], float(p)) for token, p in ranked])

    def _options(self, fallback: bool = True) -> object:
        # Windows are decoded independently: prompting a window with the previous one's
        # text made Whisper loop on phrases across speaker changes (measured). Without
        # ``fallback`` a decoding that fails Whisper's test is not sampled again.
        from faster_whisper.transcribe import TranscriptionOptions

        s = self.settings
        return TranscriptionOptions(
            beam_size=s.beam_size,
            best_of=5,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=2.4,
            condition_on_previous_text=True,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0] if fallback else [0.0],
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=[-1],
            without_timestamps=False,
            max_initial_timestamp=1.0,
            word_timestamps=True,  # segments and speakers are built from word times
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=MAX_NEW_TOKENS,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=None,
        )


def load_drafter(settings: Settings, model: str) -> WhisperAsr:
    """The Whisper ``model`` that drafts live partials, on ``asr``'s device: with
    ``stream.draft_cpu_threads`` threads (0: one per core), as many drafts at once as the
    cores hold, at normal CPU priority (drafts must not wait behind uploads)."""
    threads = settings.stream.draft_cpu_threads or default_cpu_threads()
    update = {
        "model": model,
        "cpu_threads": threads,
        "num_workers": max(1, default_cpu_threads() // threads),
        "cpu_priority": "normal",
    }
    return WhisperAsr(settings.asr.model_copy(update=update), settings.cache_dir)
