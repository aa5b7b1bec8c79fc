"""Ethostral: Voxtral (transformers) with a LoRA adapter (peft) that transcribes and
tags emotion in one pass.

The base model and the adapter each load from a local directory or a Hugging Face hub
id (token from ``HF_TOKEN``). Segments are transcribed in batches: the processor's
transcription request builds the prompts (language given, or detected when None),
padded on the left with attention masks, and one ``generate`` call decodes them all.
Further named adapters (``ethostral.adapters``) load on demand onto the same base and
unload again. A batch whose segments all use one adapter runs with that adapter active;
a mixed batch names each segment's adapter to ``generate``, so segments of different
adapters can share a batch.
The transcript's inline tags (``[nervous] So... [laughs]``) are stripped from the text
and give the segment's emotion (:mod:`ethostral_serve.backends.ethostral_tags`), with the
model's own probability of writing the tag as confidence.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.ethostral_tags import TaggedText, parse_tags, tag_emotion
from ethostral_serve.backends.windows import MAX_WINDOW_S, check_adapter
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import EmotionResult
from ethostral_serve.settings import EthostralSettings, hf_token

DEFAULT_ADAPTER = "default"  # peft's name for the adapter loaded with the base model
NO_ADAPTER = "__base__"  # peft's name, in a batch's adapter_names, for the bare base


@dataclass(frozen=True)
class EthostralResult:
    """One segment: clean text, the raw transcript, its tags and the emotion they give.

    ``token_spans[k]`` is the character span of the k-th generated token in ``raw`` and
    ``token_probabilities[k]`` the probability the model gave it.
    """

    text: str
    raw: str
    tagged: TaggedText
    tag_probabilities: tuple[float, ...]
    emotion: EmotionResult | None
    token_spans: tuple[tuple[int, int], ...] = ()
    token_probabilities: tuple[float, ...] = ()

    def probability_of(self, offsets: Sequence[int]) -> float:
        """Mean probability of the tokens that wrote the characters of ``raw`` at
        ``offsets`` (each token once; 1.0 if none)."""
        owner = self._owners
        tokens = {owner[o] for o in offsets if 0 <= o < len(owner) and owner[o] >= 0}
        return float(np.mean([self.token_probabilities[k] for k in tokens])) if tokens else 1.0

    @cached_property
    def _owners(self) -> list[int]:
        """For each character of ``raw``, the token that wrote it (-1: none)."""
        owner = [-1] * len(self.raw)
        for k, (lo, hi) in enumerate(self.token_spans):
            owner[lo:hi] = [k] * (min(hi, len(owner)) - lo)
        return owner


def torch_dtype(settings: EthostralSettings) -> Any:
    """bf16 on a GPU and float32 on CPU, unless settings name a dtype."""
    import torch

    if settings.dtype != "auto":
        return getattr(torch, settings.dtype)
    return torch.bfloat16 if settings.device.startswith("cuda") else torch.float32


class EthostralAsr:
    """A Voxtral base model, optionally with a LoRA adapter, on one device."""

    def __init__(self, settings: EthostralSettings) -> None:
        try:
            from transformers import AutoProcessor, VoxtralForConditionalGeneration
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ModelLoadError(f"transformers with Voxtral is missing: {exc}") from exc
        self.settings = settings
        token = hf_token()
        try:
            self.processor = AutoProcessor.from_pretrained(
                settings.base_model, token=token, revision=settings.revision
            )
            model = VoxtralForConditionalGeneration.from_pretrained(
                settings.base_model,
                token=token,
                revision=settings.revision,
                dtype=torch_dtype(settings),
            )
            if settings.adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, settings.adapter, token=token)
                if settings.merge_adapter:
                    model = model.merge_and_unload()
            model = model.to(settings.device).eval()  # a bad device or no memory: here
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"could not load Ethostral from {settings.base_model!r}"
                + (f" with adapter {settings.adapter!r}" if settings.adapter else "")
                + f": {exc}"
            ) from exc
        self.model = model
        self.default_adapter = (
            DEFAULT_ADAPTER if settings.adapter is not None and not settings.merge_adapter else None
        )
        self.loaded: set[str] = set()  # named adapters (``settings.adapters``) loaded now
        # peft picks each segment's adapter through hooks on the shared LoRA layers, so
        # two generations at once would see each other's choice: with adapters, one
        # generation (or adapter load or unload) runs at a time.
        with_adapters = bool(self.default_adapter or settings.adapters)
        self._turn: AbstractContextManager[Any] = (
            threading.Lock() if with_adapters else nullcontext()
        )

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the adapters a request may choose (``settings.adapters``)."""
        return tuple(self.settings.adapters)

    def check_adapter(self, name: str | None) -> str | None:
        """``name`` if it names a configured adapter (None: the default); else
        ``UnknownAdapterError``."""
        return check_adapter(name, self.adapters)

    def load_adapter(self, name: str) -> None:
        """Load a named adapter onto the base (nothing to do when it is loaded)."""
        self.check_adapter(name)
        with self._turn:
            self._load(name)

    def unload_adapter(self, name: str) -> None:
        """Remove a named adapter from the base, freeing its weights."""
        with self._turn:
            if name in self.loaded:
                if len(self.model.peft_config) > 1:
                    self.model.delete_adapter(name)
                else:  # the last one: back to the bare base (peft keeps no empty wrapper)
                    self.model = self.model.unload()
                self.loaded.discard(name)

    def _load(self, name: str) -> None:
        from peft import PeftModel

        if name in self.loaded:
            return
        path, token = self.settings.adapters[name], hf_token()
        try:
            if _is_peft(self.model):
                self.model.load_adapter(path, adapter_name=name, token=token)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, path, adapter_name=name, token=token
                )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"could not load adapter {name!r} from {path!r}: {exc}") from exc
        self.model = self.model.to(self.settings.device).eval()
        self.loaded.add(name)

    def transcribe_segments(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        max_new_tokens: int | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[EthostralResult]:
        """Transcribe 16 kHz mono segments (each at most 30 s) in one batched generation,
        writing at most ``max_new_tokens`` (default: the settings') per segment.

        ``adapters`` names each segment's adapter (None: the default one, if any);
        named adapters are loaded first when they are not.
        """

        if len(audios) != len(languages):
            raise ValueError("one language (or None) per segment")
        named = [self.check_adapter(a) for a in (adapters or [None] * len(audios))]
        if len(named) != len(audios):
            raise ValueError("one adapter (or None) per segment")
        # the processor cuts audio into 30 s chunks: a longer segment would be two inputs
        if any(len(a) > MAX_WINDOW_S * SAMPLE_RATE for a in audios):
            raise ValueError(f"segments must be at most {MAX_WINDOW_S:g} s")
        if not audios:
            return []
        inputs = self.processor.apply_transcription_request(
            audio=[np.asarray(a, dtype=np.float32) for a in audios],
            model_id=self.settings.base_model,
            language=list(languages),
            sampling_rate=SAMPLE_RATE,
            format=["WAV"] * len(audios),
            return_tensors="pt",
        )
        inputs = inputs.to(self.model.device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        with self._turn:
            for name in sorted({a for a in named if a is not None}):
                self._load(name)  # a no-op when loaded (outside inference mode: its
                # tensors must stay usable when it is unloaded or reloaded later)
            sequences, chosen = self._generate(inputs, named, max_new_tokens)
        written = sequences[:, inputs["input_ids"].shape[1] :]
        tokens, probs = written.cpu().tolist(), chosen.exp().cpu().numpy()
        return [self._result(tokens[i], probs[i]) for i in range(len(audios))]

    def _generate(
        self, inputs: Any, adapters: list[str | None], max_new_tokens: int | None
    ) -> tuple[Any, Any]:
        """Greedy generation, each segment with its adapter: the sequences, and the log
        probability of each token written (batch, steps).

        Greedy decoding writes the most probable token, so a logits processor that runs
        last keeps just that log probability at each step; asking ``generate`` for the
        scores would keep every step's whole vocabulary (131k floats per segment per
        token with Voxtral) until the end.
        """
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList

        steps: list[Any] = []

        class KeepChosen(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                steps.append(scores.float().log_softmax(-1).max(-1).values)
                return scores

        extra: dict[str, Any] = {}
        chosen_one: AbstractContextManager[Any] = nullcontext()
        if _is_peft(self.model):
            default = self.default_adapter or NO_ADAPTER
            names = [a or default for a in adapters]
            one = single_adapter(names)
            if one == NO_ADAPTER:  # the bare base for all: LoRA layers skipped
                chosen_one = self.model.disable_adapter()
            elif one is not None:  # one adapter for all: made the active one
                if self.model.active_adapter != one:
                    self.model.set_adapter(one, inference_mode=True)
            else:  # a mixed batch: peft splits each LoRA layer's work by name
                extra["adapter_names"] = names
        with torch.inference_mode(), chosen_one:
            sequences = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([KeepChosen()]),
                **extra,
            )
        n = len(sequences)
        chosen = torch.stack(steps, dim=1) if steps else torch.zeros((n, 0))
        return sequences, chosen

    def _result(self, ids: list[int], probabilities: np.ndarray) -> EthostralResult:
        tok = self.processor.tokenizer
        stop = {tok.eos_token_id, tok.pad_token_id}
        ids = ids[: next((i for i, t in enumerate(ids) if t in stop), len(ids))]
        raw = tok.decode(ids, skip_special_tokens=True)
        spans = self._token_spans(ids)
        return tagged_result(raw, spans, [float(p) for p in probabilities[: len(spans)]])

    def _token_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        """Each token's character span in the decoded text.

        Tokens are decoded a few at a time from the last whole character on (Voxtral's
        tekken tokenizer decodes bytes, so pieces join up); a token that ends inside a
        character (byte fallback) gets an empty span and the next one the character.
        If the pieces do not add up to the whole text (a tokenizer whose pieces are
        not independent), growing prefixes are decoded instead.
        """
        tok = self.processor.tokenizer
        spans: list[tuple[int, int]] = []
        done, start = 0, 0
        for k in range(len(ids)):
            piece = tok.decode(ids[start : k + 1], skip_special_tokens=True)
            if piece.endswith("\ufffd") and k + 1 < len(ids):
                spans.append((done, done))  # part of a character: wait for the rest
                continue
            spans.append((done, done + len(piece)))
            done, start = done + len(piece), k + 1
        if done == len(tok.decode(ids, skip_special_tokens=True)):
            return spans
        spans, done = [], 0
        for k in range(len(ids)):
            length = max(done, len(tok.decode(ids[: k + 1], skip_special_tokens=True)))
            spans.append((done, length))
            done = length
        return spans


def single_adapter(names: Sequence[str]) -> str | None:
    """The adapter every segment of a batch names, or None when they differ.

    A batch of one adapter runs with that adapter simply active: naming each segment's
    adapter (peft's ``adapter_names``) splits every LoRA layer's work by name, which
    costs even when all the names are the same.
    """
    distinct = set(names)
    return distinct.pop() if len(distinct) == 1 else None


def tagged_result(
    raw: str, token_spans: Sequence[tuple[int, int]], token_probabilities: Sequence[float]
) -> EthostralResult:
    """A transcript as the model wrote it, read: its tags stripped into emotions whose
    confidence is the joint probability of the tokens that wrote each tag.

    ``token_spans[k]`` is the character span in ``raw`` of the k-th token written and
    ``token_probabilities[k]`` its probability (one per span). Shared by the local model
    and the clients of a remote one, so both read a transcript the same way.
    """
    if len(token_spans) != len(token_probabilities):
        raise ValueError("one probability per token span")
    spans = [(int(lo), int(hi)) for lo, hi in token_spans]
    probs = [float(p) for p in token_probabilities]
    tagged = parse_tags(raw)
    tag_probs = tuple(_span_probability(spans, probs, t.start, t.end) for t in tagged.tags)
    return EthostralResult(
        tagged.text,
        raw,
        tagged,
        tag_probs,
        tag_emotion(tagged, tag_probs),
        tuple(spans),
        tuple(probs),
    )


def _is_peft(model: object) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _span_probability(
    spans: list[tuple[int, int]], probs: list[float], start: int, end: int
) -> float:
    """Joint probability of the tokens whose characters overlap ``[start, end)``."""
    joint = 1.0
    for (lo, hi), p in zip(spans, probs, strict=True):
        if lo < end and hi > start:
            joint *= p
    return joint
