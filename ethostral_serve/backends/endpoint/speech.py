"""The speech model with Ethostral on an Inference Endpoint: the same windows, tag
parsing, word and emotion times as :class:`EthostralSpeechModel`, with Voxtral behind
:class:`EndpointAsr`. Whisper base stays here for language identification
(``endpoint.detect_language``) and the emotion fallback (``endpoint.emotion_fallback``);
live drafts are written here too unless ``endpoint.drafts`` is ``endpoint``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ethostral_serve.backends.endpoint.client import EndpointAsr
from ethostral_serve.backends.ethostral_speech import (
    MIN_WINDOW_SAMPLES,
    EthostralSpeechModel,
    whisper_base,
)
from ethostral_serve.settings import Settings, hf_token

if TYPE_CHECKING:
    from ethostral_serve.backends.whisper import WhisperAsr


class EndpointSpeechModel(EthostralSpeechModel):
    """``WindowedSpeechModel`` over Ethostral on the endpoint of settings' ``endpoint``
    section (token: ``HF_TOKEN``).

    ``transcribe`` (the CLI's path) hands ``batch_size`` x ``max_concurrency`` windows at
    a time to the client, so its requests run side by side.
    """

    def __init__(
        self,
        settings: Settings,
        with_emotion: bool = True,
        session: Callable[[], Any] | None = None,
    ) -> None:
        e = settings.endpoint
        asr = EndpointAsr(e, hf_token(), session=session)
        super().__init__(settings, with_emotion, asr=asr, switches=e)
        self.batch_size = e.batch_size * e.max_concurrency
        self.local_drafts = e.drafts == "local"
        self._drafter: WhisperAsr | None = None
        self._drafter_lock = threading.Lock()

    def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of a live utterance: text and language (``und`` when not given).

        With ``endpoint.drafts`` ``local``, a Whisper here writes it (the draft model when
        it knows the language, else Whisper base): no request per draft, and no tags to
        strip. Otherwise Voxtral on the endpoint does, as :class:`EthostralSpeechModel`.
        """
        if not self.local_drafts:
            return super().partial_text(audio, language, adapter)
        self.check_adapter(adapter)
        if len(audio) < MIN_WINDOW_SAMPLES:
            return "", language or "und"
        drafter = self.load_drafter()
        if drafter is None or not (drafter.multilingual or language in drafter.languages):
            drafter = self._whisper_base()
        text, _ = drafter.partial_text(audio, language)
        return text, language or "und"

    def load_drafter(self) -> WhisperAsr | None:
        """The Whisper that drafts partials here (``stream.draft_model``, else Whisper
        base), loaded on first use; None when the endpoint drafts."""
        from ethostral_serve.backends.whisper import load_drafter

        if not self.local_drafts:
            return None
        name = self.settings.stream.draft_model
        if not name or name == "base":
            return self._whisper_base()
        with self._drafter_lock:
            if self._drafter is None:
                self._drafter = load_drafter(self.settings, name)
            return self._drafter

    def _whisper_base(self) -> WhisperAsr:
        with self._drafter_lock:
            if self.whisper is None:  # neither detection nor the fallback loaded it
                self.whisper = whisper_base(self.settings)
            return self.whisper
