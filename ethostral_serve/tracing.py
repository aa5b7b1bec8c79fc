"""W&B Weave tracing that never prompts and costs nothing when it is off.

``make_tracer(settings.tracing)`` gives a :class:`WeaveTracer` only when a project is set,
a W&B credential is already configured and ``WEAVE_DISABLED`` is not true; otherwise a
:class:`NoopTracer`, which does not import ``weave`` at all. ``weave.init`` prompts on
stdin for a key when it finds none (weave 0.54 has no switch to stop that), so it is
called only after weave's own credential lookup has found one. Any failure while
starting Weave is logged and tracing is turned off: it never takes the service down.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlparse

from ethostral_serve.settings import TracingSettings

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULT_WANDB_HOST = "api.wandb.ai"
_TRUE = {"yes", "true", "1", "on"}  # how weave parses boolean WEAVE_* variables


class Tracer(Protocol):
    """Turns callables into traced ops; calls made inside an op's call become its children."""

    enabled: bool

    def op(self, name: str, fn: F) -> F:
        """Return ``fn`` wrapped so that each call is recorded as an op named ``name``."""
        ...


class NoopTracer:
    """Tracing off: callables are returned unchanged."""

    enabled: bool = False

    def op(self, name: str, fn: F) -> F:
        """Return ``fn`` itself."""
        return fn


class WeaveTracer:
    """Tracing to a W&B Weave project. Construct it only when tracing is wanted.

    Raises ``RuntimeError`` when weave finds no W&B credential (instead of letting
    ``weave.init`` prompt for one), and whatever ``weave.init`` raises.
    """

    enabled: bool = True

    def __init__(self, project: str) -> None:
        import weave
        from weave.wandb_interface.auth import get_wandb_credentials

        # weave.init falls back to an interactive prompt when this finds nothing.
        if get_wandb_credentials() is None:
            raise RuntimeError("weave found no W&B credential; not calling weave.init")
        self._weave = weave
        self.project = project
        weave.init(
            project,
            # A server process: no call links printed per op, no patching of other libraries.
            settings={"print_call_link": False, "implicitly_patch_integrations": False},
        )

    def op(self, name: str, fn: F) -> F:
        """Wrap ``fn`` with ``weave.op``; on failure, log it and return ``fn`` unchanged."""
        try:
            return self._weave.op(  # type: ignore[no-any-return]
                fn,
                name=name,
                postprocess_inputs=summarise_inputs,
                postprocess_output=summarise_value,
            )
        except Exception:
            logger.warning(
                "could not trace %r with Weave; running it untraced", name, exc_info=True
            )
            return fn


def make_tracer(settings: TracingSettings) -> Tracer:
    """Weave when a project and a W&B credential are configured, else a no-op tracer."""
    project = settings.weave_project
    if not project:
        return NoopTracer()
    if os.environ.get("WEAVE_DISABLED", "").strip().lower() in _TRUE:
        logger.info("Weave tracing is off: WEAVE_DISABLED is set")
        return NoopTracer()
    if not wandb_credential_configured():
        logger.info(
            "Weave tracing is off: project %r is set but no W&B API key was found "
            "(set WANDB_API_KEY or run `wandb login`)",
            project,
        )
        return NoopTracer()
    try:
        tracer = WeaveTracer(project)
    except Exception as exc:
        logger.warning("Weave tracing is off: starting Weave failed: %s", exc, exc_info=True)
        return NoopTracer()
    logger.info("Weave tracing to project %r", project)
    return tracer


def wandb_credential_configured() -> bool:
    """Whether a W&B credential is configured, looked up the way weave does, without weave.

    ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or a ``~/.netrc`` / ``~/_netrc``
    entry for the W&B host (``WANDB_BASE_URL``'s host, default ``api.wandb.ai``).
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = _wandb_host()
    for name in ("~/.netrc", "~/_netrc"):
        path = Path(name).expanduser()
        if not path.is_file():
            continue
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (OSError, netrc.NetrcParseError) as exc:
            logger.warning("could not read %s: %s", path, exc)
            continue
        if entry and entry[2]:
            return True
    return False


def _wandb_host() -> str:
    base = os.environ.get("WANDB_BASE_URL", "").strip().rstrip("/")
    if not base:
        return _DEFAULT_WANDB_HOST
    return urlparse(base if "://" in base else f"https://{base}").netloc or _DEFAULT_WANDB_HOST


def summarise_value(value: Any) -> Any:
    """What a trace records of a value: arrays and raw bytes as their shape, not their data.

    Audio (millions of samples) and encoder states would otherwise be uploaded with
    every call.
    """
    import numpy as np

    if isinstance(value, np.ndarray):
        return {"array": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": len(value)}
    if hasattr(value, "read") and hasattr(value, "seek"):
        return {"file": getattr(value, "name", type(value).__name__)}
    if isinstance(value, list | tuple) and value and isinstance(value[0], np.ndarray):
        return [summarise_value(v) for v in value]
    return value


def summarise_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """Each input of an op call, summarised by :func:`summarise_value`."""
    return {k: summarise_value(v) for k, v in inputs.items()}
