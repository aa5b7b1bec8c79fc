"""The OpenAPI document, exact: what each route answers and what the server accepts.

FastAPI infers most of it from the routes; :func:`install_openapi` completes it with what
it cannot infer (the languages and adapters of the speech model, the cursor format, links
from a new session to its routes, the bearer scheme), and :func:`error_responses` /
:func:`subtitle_responses` describe every status a route answers with, its body and its
headers. ``schemathesis.toml`` checks the result against the running server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast, get_args

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ethostral_serve.api.auth import AUTH_CHALLENGE
from ethostral_serve.languages import DETECT
from ethostral_serve.playback import MEDIA_TYPE
from ethostral_serve.schema import ErrorDetail, InvalidRequestDetail, JobStatus
from ethostral_serve.sessions import CURSOR_PATTERN

JOB_STATUSES = list(get_args(JobStatus))
OPEN_PATHS = ("/healthz",)  # no key needed with auth on (nor for /docs and /openapi.json)

_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
_ERRORS: dict[int, tuple[str, dict[str, object]]] = {
    400: ("the upload holds no audio, or the multipart body is malformed", {}),
    401: (
        "missing, unknown or revoked API key (when the server requires keys)",
        {
            "WWW-Authenticate": {
                "description": f"`{AUTH_CHALLENGE}`",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    404: ("no session has this id (or it belongs to another API key)", {}),
    413: ("the upload is too large or the audio too long", {}),
    415: ("the upload is not audio or video FFmpeg can decode, or has no audio stream", {}),
    422: ("a form field or parameter is invalid", {}),
    429: ("over a quota of the API key", _RETRY_AFTER),
    503: (
        "the session store or a model deployment is unavailable, or a model replica died",
        _RETRY_AFTER,
    ),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI responses for these error statuses: JSON ``detail`` and their headers."""
    responses: dict[int | str, dict[str, object]] = {}
    for code in codes:
        reason, headers = _ERRORS[code]
        model = InvalidRequestDetail if code == 422 else ErrorDetail
        responses[code] = {"model": model, "description": reason}
        if headers:
            responses[code]["headers"] = headers
    return responses


def subtitle_responses(media_type: str, what: str) -> dict[int | str, dict[str, object]]:
    """OpenAPI responses of a subtitle export: the text as ``media_type``, or an error."""
    ok = {
        "description": what,
        "content": {media_type: {"schema": {"type": "string"}}},
        "headers": {
            "Content-Disposition": {
                "description": '`inline; filename="<recording>.<ext>"`',
                "required": True,
                "schema": {"type": "string"},
            }
        },
    }
    return {200: ok, **error_responses(401, 404, 503)}


def audio_responses() -> dict[int | str, dict[str, object]]:
    """OpenAPI responses of ``GET /sessions/{id}/audio``: the audio whole (200) or in part
    (206), a range it cannot serve (416), or an error."""

    def header(description: str, schema: dict[str, object]) -> dict[str, object]:
        return {"description": description, "required": True, "schema": schema}

    headers = {
        "Accept-Ranges": header("`bytes`", {"type": "string", "enum": ["bytes"]}),
        "Cache-Control": header("`private, max-age=3600`", {"type": "string"}),
        "Content-Length": header("bytes in this response", {"type": "integer", "minimum": 1}),
        "Content-Disposition": header('`inline; filename="<id>.ogg"`', {"type": "string"}),
    }
    audio = {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}
    content_range = header(
        "`bytes FIRST-LAST/SIZE`", {"type": "string", "pattern": r"^bytes [0-9]+-[0-9]+/[0-9]+$"}
    )
    unsatisfied = header("`bytes */SIZE`", {"type": "string", "pattern": r"^bytes \*/[0-9]+$"})
    errors = error_responses(401, 404, 503)
    errors[404] = {
        **errors[404],
        "description": "no session has this id (or it belongs to another API key), or its "
        "audio was not kept (uploaded without `store_audio`)",
    }
    return {
        200: {"description": "the whole audio", "content": audio, "headers": headers},
        206: {
            "description": "the one byte range asked for",
            "content": audio,
            "headers": {**headers, "Content-Range": content_range},
        },
        416: {
            "model": ErrorDetail,
            "description": "the Range lies outside the audio, or is not a byte range",
            "headers": {
                "Accept-Ranges": headers["Accept-Ranges"],
                "Content-Range": unsatisfied,
            },
        },
        **errors,
    }


def install_openapi(
    app: FastAPI, languages: Sequence[str], adapters: Sequence[str], auth: bool, jobs: bool
) -> None:
    """Complete FastAPI's OpenAPI document with what it cannot infer: the values the
    server accepts, links from a session to its routes, and the bearer scheme; without
    ``jobs``, the upload's fields that ask for one are left out."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _drop_unreachable_422s(schema)
            _document_request_values(schema, languages, adapters)
            _document_jobs(schema, jobs)
            _document_links(schema)
            if auth:
                _document_bearer_auth(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_request_values(
    schema: dict[str, Any], languages: Sequence[str], adapters: Sequence[str]
) -> None:
    """Form fields and query parameters as the server reads them: never null (a value is
    sent or left out), languages and adapters from the model, cursors as it writes them."""
    paths = schema["paths"]
    form = paths["/transcribe"]["post"]["requestBody"]["content"]["multipart/form-data"]
    body = _resolve(schema, form["schema"])
    fields: dict[str, Any] = body["properties"]
    for name, field in fields.items():
        fields[name] = _not_null(field)
    fields["file"]["minLength"] = 1  # an empty file is refused (400)
    fields["language"]["enum"] = list(dict.fromkeys([*DETECT, *languages]))
    fields["adapter"]["enum"] = ["", *adapters]
    for parameter in paths["/sessions"]["get"]["parameters"]:
        parameter["schema"] = _not_null(parameter["schema"])
        if parameter["name"] == "cursor":
            parameter["schema"]["pattern"] = CURSOR_PATTERN
    for parameter in paths["/sessions/{session_id}/audio"]["get"]["parameters"]:
        parameter["schema"] = _not_null(parameter["schema"])


def _document_jobs(schema: dict[str, Any], jobs: bool) -> None:
    """The upload's job fields as the server reads them (absent without jobs), and the
    events of a job: each one's data is a Job."""
    upload = schema["paths"]["/transcribe"]["post"]
    form = upload["requestBody"]["content"]["multipart/form-data"]
    fields: dict[str, Any] = _resolve(schema, form["schema"])["properties"]
    if not jobs:
        fields.pop("async", None)
        fields.pop("callback_url", None)
        upload["parameters"] = [p for p in upload.get("parameters", []) if p["name"] != "prefer"]
        upload["responses"].pop("202", None)
        if not upload["parameters"]:
            del upload["parameters"]
        return
    fields["callback_url"].update(format="uri", pattern="^https?://")
    events_get = schema["paths"]["/sessions/{session_id}/events"]["get"]
    for parameter in events_get.get("parameters", []):
        parameter["schema"] = _not_null(parameter["schema"])
    for parameter in upload.get("parameters", []):
        parameter["schema"] = _not_null(parameter["schema"])
    events = schema["paths"]["/sessions/{session_id}/events"]["get"]["responses"]["200"]
    events["content"]["text/event-stream"]["schema"] = {
        "type": "object",
        "description": "one server-sent event",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": [*JOB_STATUSES, "error"]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/Job"},
                        {"$ref": "#/components/schemas/ErrorDetail"},
                    ]
                },
            },
            "id": {"type": "string", "description": "for `Last-Event-ID`"},
        },
    }


def _drop_unreachable_422s(schema: dict[str, Any]) -> None:
    """Remove the 422 FastAPI adds to every route with parameters: routes that can answer
    422 declare it themselves (:func:`error_responses`); a path's ``session_id`` never fails."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            content = responses.get("422", {}).get("content", {}).get("application/json", {})
            if content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _not_null(field: dict[str, Any]) -> dict[str, Any]:
    """``field`` without FastAPI's ``anyOf: [..., {"type": "null"}]`` for ``X | None``."""
    options = [o for o in field.get("anyOf", []) if o != {"type": "null"}]
    if len(options) != 1:
        return field
    rest = {k: v for k, v in field.items() if k != "anyOf"}
    return {**options[0], **rest}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """``node``, or the component its local ``$ref`` names."""
    ref = node.get("$ref")
    if ref is None:
        return node
    found: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return cast(dict[str, Any], found)


# The routes of a stored session, by link name: operation id, what the link leads to.
_SESSION_LINKS = {
    "GetSession": ("get_session", "the session"),
    "DeleteSession": ("delete_session", "delete the session"),
    "SessionSrt": ("session_srt", "the session as SubRip"),
    "SessionVtt": ("session_vtt", "the session as WebVTT"),
}


def _document_links(schema: dict[str, Any]) -> None:
    """OpenAPI links from a new session (``POST /transcribe``) to its routes."""
    ok = schema["paths"]["/transcribe"]["post"]["responses"]["200"]
    ok["links"] = {
        name: {
            "operationId": operation_id,
            "parameters": {"session_id": "$response.body#/id"},
            "description": description,
        }
        for name, (operation_id, description) in _SESSION_LINKS.items()
    }


def _document_bearer_auth(schema: dict[str, Any]) -> None:
    """Declare the bearer scheme, required on every route but the open ones."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "apiKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "an API key from `ethostral keys create --name NAME`",
        }
    }
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS:
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}]
