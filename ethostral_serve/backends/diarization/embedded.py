"""The embedded diarizer: overlap-aware, from models that ship inside PyPI packages.

pyannote's segmentation model (ONNX, from the WhisperX wheel; see
:mod:`.segmentation`) finds up to three local speakers, overlap included, in 5 s windows;
3D-Speaker's CAM++ (ONNX too; see :mod:`.campplus`) embeds 1.5 s sub-windows of the
speech it finds, or, with ``speaker_encoder="resemblyzer"``, resemblyzer's GE2E encoder
(see :mod:`.speaker_encoder`) embeds 1 s sub-windows; the pure
:func:`~ethostral_serve.pipeline.overlap_diarization.diarize_segmentation` clusters the
(window, local speaker) units into global speakers and rebuilds turns in which
overlapped speech belongs to both speakers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.cores import default_cpu_threads
from ethostral_serve.backends.diarization.campplus import CamPlusEncoder, ensure_campplus
from ethostral_serve.backends.diarization.resemblyzer import ResemblyzerDiarizer, clip_regions
from ethostral_serve.backends.diarization.segmentation import (
    SegmentationModel,
    ensure_segmentation_model,
)
from ethostral_serve.pipeline.overlap_diarization import (
    OverlapDiarizationOptions,
    binarize,
    diarize_segmentation,
    speech_regions,
)
from ethostral_serve.pipeline.types import Span, SpeakerCount, SpeakerTurn
from ethostral_serve.settings import DiarizerSettings


class Calibration(NamedTuple):
    """Cosine distances and cluster sizes calibrated for one speaker encoder
    (``benchmarks/diarization.py``)."""

    threshold: float
    """Average-linkage distance above which two clusters of units stay apart."""
    same_voice: float
    """Two local speakers of one window closer than this may be one voice."""
    merge_distance: float
    """Speakers whose centroids are closer than this are merged after the cut (0: off)."""
    change_distance: float
    """Sub-window runs farther apart than this mark a change of voice (0: off)."""
    min_speaker_s: float
    """A speaker given less speech than this (seconds) is dropped (0: never)."""
    min_cluster_share: float
    """A cluster needs this share of the points (up to 12) to be a speaker (0: off)."""


CALIBRATED = {
    "resemblyzer": Calibration(0.25, 0.15, 0.0, 0.0, 0.0, 0.0),
    "campplus": Calibration(0.7, 0.4, 0.36, 0.85, 1.5, 0.03),
}
"""The encoders' distances differ in scale: the median distance between two 1.5 s windows
of one AMI speaker is about 0.44 with CAM++. With resemblyzer, centroids of one split
voice and of two AMI speakers lie at the same distances, so it merges none."""


def _unless_set(setting: float | None, calibrated: float) -> float:
    """A setting the user gave, else the encoder's calibrated value."""
    return calibrated if setting is None else setting


class OverlapAwareDiarizer:
    """``DiarizerBackend``: segmentation + speaker embeddings + constrained clustering."""

    def __init__(self, settings: DiarizerSettings, cache_dir: Path) -> None:
        self.settings = settings
        folder = ensure_segmentation_model(cache_dir)
        self.segmentation = SegmentationModel(folder, threads=settings.segmentation_threads)
        self.units: CamPlusEncoder | ResemblyzerDiarizer
        if settings.speaker_encoder == "campplus":
            self.units = CamPlusEncoder(
                ensure_campplus(cache_dir),
                window_s=settings.unit_window_s,
                step_s=settings.unit_step_s,
                min_window_s=settings.min_window_s,
            )
        else:
            self.units = ResemblyzerDiarizer(settings, cache_dir)

    def options(self) -> OverlapDiarizationOptions:
        """The clustering options these settings stand for."""
        s = self.settings
        calibrated = CALIBRATED[s.speaker_encoder]
        return OverlapDiarizationOptions(
            onset=s.segmentation_onset,
            offset=min(s.segmentation_offset, s.segmentation_onset),
            threshold=_unless_set(s.cluster_threshold, calibrated.threshold),
            min_cluster_units=s.min_cluster_units,
            min_cluster_share=_unless_set(s.min_cluster_share, calibrated.min_cluster_share),
            same_voice=calibrated.same_voice,
            merge_distance=_unless_set(s.merge_distance, calibrated.merge_distance),
            change_distance=_unless_set(s.change_distance, calibrated.change_distance),
            min_speaker_s=_unless_set(s.min_speaker_s, calibrated.min_speaker_s),
        )

    def count(self, requested: SpeakerCount | None) -> SpeakerCount:
        """The request's speaker count within the settings' bounds."""
        s = self.settings
        if requested is not None and requested.given:
            return requested
        return SpeakerCount(min=s.min_speakers, max=max(s.min_speakers, s.max_speakers))

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns of 16 kHz mono ``samples``; turns of two speakers overlap where
        both talk. Only windows touching the VAD ``regions`` are segmented."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        duration = len(x) / SAMPLE_RATE
        if not regions or len(x) == 0:
            return []
        seg = self.segmentation
        starts = seg.window_starts(len(x), self.settings.segmentation_step_s, regions)
        if len(starts) == 0:
            return []
        workers = self.settings.cpu_workers or default_cpu_threads()
        scores = seg.scores(x, starts, workers)
        opts = self.options()
        activity = binarize(scores, opts.onset, opts.offset)
        speech = [Span(a, b) for a, b in speech_regions(starts, activity, seg.grid)]
        sub_embeddings, sub_windows = self.units.embed_windows(x, speech, workers)
        turns = diarize_segmentation(
            starts,
            scores,
            seg.grid,
            sub_embeddings,
            sub_windows,
            duration,
            opts,
            self.count(speakers),
        )
        if turns:
            return turns
        # Speech, but no local speaker held a sub-window long enough to be embedded (or
        # the segmentation heard nobody): nothing tells voices apart, so one speaker.
        spans = speech or clip_regions(regions, duration)
        return [SpeakerTurn(s.start, s.end, "s0") for s in spans if s.end > s.start]

    def embed_utterance(self, samples: np.ndarray) -> np.ndarray | None:
        """One unit-length speaker embedding of a live utterance (None if too short), by
        the configured speaker encoder (live streams' thresholds follow it:
        :func:`~ethostral_serve.settings.stream_speaker_threshold`)."""
        return self.units.embed_utterance(samples)
