"""What a requested language means, the same at every entry point (REST, stream, CLI)."""

from __future__ import annotations

DETECT = ("", "auto")  # requests that mean "detect the language", like no request at all


def requested_language(language: str | None) -> str | None:
    """A requested language code, stripped and lower-cased; ``None`` means detect.

    ``None``, ``""`` and ``"auto"`` (any case, any surrounding blanks) all mean detect.
    Whether the code is supported is the ASR model's to say.
    """
    if language is None:
        return None
    code = language.strip().lower()
    return None if code in DETECT else code
