"""The service's data: one pydantic model per thing, one serializer (``model_dump_json``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EMOTION_LABELS: tuple[str, ...] = (
    "Neutral",
    "Calm",
    "Happy",
    "Sad",
    "Angry",
    "Fearful",
    "Disgust",
    "Surprised",
)


def now_iso() -> str:
    """The current UTC time as sessions record it (ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Emotion(BaseModel):
    """How a segment sounded: a category plus valence, arousal and dominance."""

    label: str = Field(description="categorical emotion, e.g. 'Happy'")
    valence: float = Field(ge=-1.0, le=1.0, description="unpleasant (-1) to pleasant (1)")
    arousal: float = Field(ge=-1.0, le=1.0, description="calm (-1) to excited (1)")
    dominance: float = Field(ge=-1.0, le=1.0, description="submissive (-1) to in control (1)")
    confidence: float = Field(ge=0.0, le=1.0, description="calibrated probability of the label")


class Word(BaseModel):
    """One recognised word with its time on the original timeline."""

    word: str
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    probability: float = Field(ge=0.0, le=1.0)


class Segment(BaseModel):
    """One stretch of speech by one speaker."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    speaker: str = Field(description="'s0', 's1', ... in order of first appearance")
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    text: str
    emotion: Emotion | None = Field(
        description="null only when emotion analysis was turned off for the request"
    )
    words: list[Word] = Field(default_factory=list)


class Session(BaseModel):
    """A transcribed recording."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5d0b6f0e-8a53-4a0e-9a59-1f0f4a2bd8a1",
                    "filename": "call.wav",
                    "language": "en",
                    "duration_ms": 87040,
                    "created_at": "2026-11-24T09:12:03.123+00:00",
                    "segments": [
                        {
                            "id": "c1b0a7d2-2f4e-4c55-9d0e-3f1c2b9a8e71",
                            "speaker": "s0",
                            "start_ms": 520,
                            "end_ms": 4380,
                            "text": "Hello, thanks for calling.",
                            "emotion": {
                                "label": "Calm",
                                "valence": 0.21,
                                "arousal": -0.18,
                                "dominance": 0.05,
                                "confidence": 0.64,
                            },
                            "words": [
                                {
                                    "word": "Hello,",
                                    "start_ms": 520,
                                    "end_ms": 900,
                                    "probability": 0.98,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    )

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    filename: str
    language: str
    duration_ms: int = Field(ge=0)
    created_at: str = Field(default_factory=now_iso)
    segments: list[Segment] = Field(default_factory=list)
    has_audio: bool = Field(
        False,
        description="its audio was kept (`store_audio`): `GET /sessions/{id}/audio` plays it",
    )


class SessionSummary(BaseModel):
    """A stored session without its segments, as listed by ``GET /sessions``."""

    id: str
    filename: str
    language: str
    duration_ms: int = Field(ge=0)
    created_at: str
    speakers: int = Field(ge=0, description="distinct speakers in the session")
    segments: int = Field(ge=0, description="number of segments")
    has_audio: bool = Field(False, description="its audio was kept (`store_audio`)")

    @classmethod
    def of(cls, session: Session) -> SessionSummary:
        """The summary of a full session."""
        return cls(
            id=session.id,
            filename=session.filename,
            language=session.language,
            duration_ms=session.duration_ms,
            created_at=session.created_at,
            speakers=len({s.speaker for s in session.segments}),
            segments=len(session.segments),
            has_audio=session.has_audio,
        )


class SessionList(BaseModel):
    """One page of stored sessions, newest first."""

    sessions: list[SessionSummary]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null on the last page"
    )


JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class Job(BaseModel):
    """An asynchronous upload (``async=true``): its state until the session is stored."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "5d0b6f0e-8a53-4a0e-9a59-1f0f4a2bd8a1",
                    "status": "running",
                    "stage": "asr",
                    "progress": 0.42,
                    "detail": None,
                    "status_code": None,
                    "filename": "meeting.mp3",
                    "created_at": "2026-12-02T09:12:03.123+00:00",
                    "updated_at": "2026-12-02T09:14:41.870+00:00",
                    "attempts": 1,
                }
            ]
        }
    )

    id: str = Field(description="the job's id, which is also the id of its session")
    status: JobStatus
    stage: str | None = Field(
        None, description="while running: decode, vad, asr, diarize, segment or emotion"
    )
    progress: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the run done")
    detail: str | None = Field(None, description="why the job failed")
    status_code: int | None = Field(
        None,
        description="failed: the HTTP status a synchronous upload would have got "
        "(415 undecodable audio, 413 too long, 503 a model unavailable, ...)",
    )
    filename: str
    created_at: str
    updated_at: str
    attempts: int = Field(0, ge=0, description="runs started (a lost replica's run is retried)")


class CallbackSecret(BaseModel):
    """The secret that signs an API key's job callbacks."""

    secret: str = Field(
        description="HMAC-SHA256 key: a callback's `X-Ethostral-Signature` is "
        "`v1=` + hex(HMAC(secret, `<X-Ethostral-Timestamp>.<body>`))"
    )


class ErrorDetail(BaseModel):
    """Body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "no session with id '5d0b6f0e-…'"}]}
    )

    detail: str = Field(description="what was wrong, in words")


class FieldError(BaseModel):
    """One request value that failed FastAPI's validation (its ``ValidationError``)."""

    loc: list[str | int] = Field(description="where the value is, e.g. ['body', 'diarize']")
    msg: str = Field(description="what was wrong with it, in words")
    type: str = Field(description="the kind of error, e.g. 'bool_parsing'")
    input: Any = Field(default=None, description="the value sent (null when missing)")
    ctx: dict[str, Any] | None = Field(default=None, description="the constraint it broke")


class InvalidRequestDetail(BaseModel):
    """Body of a 422: a value the route itself refused (``detail`` in words), or values
    that failed FastAPI's validation (``detail`` lists them)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"detail": "language 'xx' is not supported by the ASR model; use one of: en, …"},
                {
                    "detail": [
                        {
                            "loc": ["body", "diarize"],
                            "msg": "Input should be a valid boolean, unable to interpret input",
                            "type": "bool_parsing",
                            "input": "maybe",
                        }
                    ]
                },
            ]
        }
    )

    detail: str | list[FieldError] = Field(
        description="what was wrong, in words; or one entry per invalid value"
    )


class Health(BaseModel):
    """Readiness of the service and of each part it depends on."""

    status: str = Field(description="'ok' when every check passed, else 'unavailable'")
    checks: dict[str, str] = Field(description="check name → 'ok' or what failed")


class _SegmentEvent(BaseModel):
    """What partial and final events of ``WS /transcribe/stream`` carry."""

    type: str
    segment_id: str = Field(description="the same for an utterance's partials and its final")
    speaker: str = Field(description="live label; provisional in a partial")
    text: str
    start_ms: int = Field(ge=0)
    end_ms: int = Field(ge=0)
    emotion: Emotion | None = Field(description="null in partials, and with emotion off")


class PartialEvent(_SegmentEvent):
    """A draft of the utterance being spoken (its text may still change)."""

    type: Literal["partial"] = "partial"


class FinalEvent(_SegmentEvent):
    """An utterance that ended: its text, live speaker and emotion."""

    type: Literal["final"] = "final"


class SessionEvent(BaseModel):
    """The stream ended after ``stop`` and its session is stored under ``session_id``."""

    type: Literal["session"] = "session"
    session_id: str


class ErrorEvent(BaseModel):
    """Why the stream ends; a close with its code follows."""

    type: Literal["error"] = "error"
    detail: str
    session_id: str | None = Field(
        None, description="the session the segments finalised so far were stored as, if any"
    )


StreamEvent = Annotated[
    PartialEvent | FinalEvent | SessionEvent | ErrorEvent, Field(discriminator="type")
]
