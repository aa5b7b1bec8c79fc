"""Domain errors. Each carries the HTTP status it maps to at the edge (API, CLI)."""

from __future__ import annotations


class EthostralError(Exception):
    """Base class for errors the service reports to its users."""

    status_code: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class AudioDecodeError(EthostralError):
    """The input is not audio or video that FFmpeg can decode."""

    status_code = 415


class NoAudioStreamError(AudioDecodeError):
    """The container decodes but carries no audio stream."""


class EmptyAudioError(EthostralError):
    """The input holds no audio samples at all."""

    status_code = 400


class AudioTooLongError(EthostralError):
    """The audio is longer than the configured maximum duration."""

    status_code = 413


class ModelLoadError(EthostralError):
    """A model could not be found, verified or loaded."""

    status_code = 500


class SessionNotFoundError(EthostralError):
    """No stored session has the requested id."""

    status_code = 404


class CorruptSessionError(EthostralError):
    """The value stored under a session's key is not that session's JSON (a server fault)."""

    status_code = 500


class StoreUnavailableError(EthostralError):
    """The session store cannot be reached."""

    status_code = 503


class UnsupportedLanguageError(EthostralError):
    """The requested language is not one the speech model knows."""

    status_code = 422


class UnknownAdapterError(EthostralError):
    """The requested adapter is not one the speech model was configured with."""

    status_code = 422


class UploadTooLargeError(EthostralError):
    """The upload is larger than the configured maximum size."""

    status_code = 413


class InvalidRequestError(EthostralError):
    """A request value is malformed (bad form field, parameter or message)."""

    status_code = 422


class ConfigurationError(EthostralError):
    """The service is configured in a way that cannot work (a deployment fault)."""

    status_code = 500


class BackendUnavailableError(EthostralError):
    """A model deployment did not answer in time (overloaded, pending or gone)."""

    status_code = 503


class AuthenticationError(EthostralError):
    """A request without a valid API key while ``auth.required`` is on."""

    status_code = 401
