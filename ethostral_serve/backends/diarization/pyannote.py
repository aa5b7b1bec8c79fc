"""Speaker diarization with a pyannote.audio pipeline (production, GPU when configured).

The pipeline loads with ``Pipeline.from_pretrained`` from a local directory (its
``config.yaml`` with the segmentation, embedding and PLDA folders) or a hub id (token
from ``HF_TOKEN``). It is fed the in-memory 16 kHz waveform (no file decoding), with
pyannote's telemetry off, and its exclusive (one speaker at a time) output becomes
turns named ``s0``, ``s1``, … in order of first appearance. Live streams' utterances are
embedded with the pipeline's own speaker-embedding model (``embed_utterance``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import Span, SpeakerCount, SpeakerTurn
from ethostral_serve.settings import DiarizerSettings, hf_token

MIN_EMBED_S = 0.5  # shorter utterances get no embedding (too little to tell a voice by)
MAX_EMBED_S = 30.0  # longer utterances are embedded from their first 30 s


def exclusive_turns(annotation: Any, duration: float | None = None) -> list[SpeakerTurn]:
    """A pyannote Annotation as sorted turns, speakers renamed ``s0``, ``s1``, …

    Turns are clipped to ``[0, duration]`` (pyannote's frames can run a few
    milliseconds past the end of the audio); turns left empty are dropped.
    """
    names: dict[str, str] = {}
    turns = []
    for segment, _, label in sorted(annotation.itertracks(yield_label=True)):
        start = max(0.0, float(segment.start))
        end = float(segment.end) if duration is None else min(float(segment.end), duration)
        if end > start:
            speaker = names.setdefault(str(label), f"s{len(names)}")
            turns.append(SpeakerTurn(start, end, speaker))
    return turns


class PyannoteDiarizer:
    """``DiarizerBackend`` over a pyannote.audio speaker-diarization pipeline."""

    def __init__(self, settings: DiarizerSettings) -> None:
        os.environ["PYANNOTE_METRICS_ENABLED"] = "0"  # telemetry off, before the import
        try:
            import torch
            from pyannote.audio import Pipeline
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ModelLoadError(f"pyannote.audio is missing: {exc}") from exc
        self.settings = settings
        try:
            pipeline = Pipeline.from_pretrained(settings.pyannote_pipeline, token=hf_token())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"could not load the pyannote pipeline {settings.pyannote_pipeline!r}: {exc}"
            ) from exc
        if pipeline is None:  # pyannote returns None when a hub download is refused
            raise ModelLoadError(
                f"could not load the pyannote pipeline {settings.pyannote_pipeline!r} "
                "(gated on the hub? set HF_TOKEN, or give a local directory)"
            )
        self.pipeline = pipeline.to(torch.device(settings.device))

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns of 16 kHz mono ``samples``; pyannote finds speech itself, so
        ``regions`` only decide whether there is anything to diarize. A request's
        ``speakers`` count goes to the pipeline (else the settings' bounds)."""
        import torch

        if not regions or len(samples) == 0:
            return []
        waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]
        bounds: dict[str, int | None] = {
            "min_speakers": self.settings.min_speakers,
            "max_speakers": self.settings.max_speakers,
        }
        if speakers is not None and speakers.given:
            bounds = {"min_speakers": speakers.min, "max_speakers": speakers.max}
            if speakers.num is not None:
                bounds = {"num_speakers": speakers.num}
        output = self.pipeline({"waveform": waveform, "sample_rate": SAMPLE_RATE}, **bounds)
        annotation = getattr(output, "exclusive_speaker_diarization", output)
        return exclusive_turns(annotation, len(samples) / SAMPLE_RATE)

    def embed_utterance(self, samples: np.ndarray) -> np.ndarray | None:
        """Unit-length float32 speaker embedding of a 16 kHz mono utterance.

        Uses the pipeline's own speaker-embedding model on the first ``MAX_EMBED_S``
        seconds. None when the utterance is shorter than ``MIN_EMBED_S`` or than the
        model's minimum input, when the embedding is not finite or zero, or when the
        pipeline has no embedding model (e.g. oracle clustering).
        """
        import torch

        model = getattr(self.pipeline, "_embedding", None)
        if model is None:
            return None
        x = np.asarray(samples, dtype=np.float32).reshape(-1)[: round(MAX_EMBED_S * SAMPLE_RATE)]
        min_samples = max(
            round(MIN_EMBED_S * SAMPLE_RATE), int(getattr(model, "min_num_samples", 0))
        )
        if len(x) < min_samples:
            return None
        with torch.inference_mode():
            output = model(torch.from_numpy(np.ascontiguousarray(x))[None, None])
        embedding = np.asarray(output, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(embedding))
        if not np.isfinite(norm) or norm == 0.0:
            return None
        return embedding / np.float32(norm)
