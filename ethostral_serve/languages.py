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


# English names of the languages Whisper knows, lower-case as OpenAI's transcription API
# reports them (``verbose_json``'s ``language``).
LANGUAGE_NAMES: dict[str, str] = {
    "af": "afrikaans", "am": "amharic", "ar": "arabic", "as": "assamese",
    "az": "azerbaijani", "ba": "bashkir", "be": "belarusian", "bg": "bulgarian",
    "bn": "bengali", "bo": "tibetan", "br": "breton", "bs": "bosnian",
    "ca": "catalan", "cs": "czech", "cy": "welsh", "da": "danish",
    "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "et": "estonian", "eu": "basque", "fa": "persian", "fi": "finnish",
    "fo": "faroese", "fr": "french", "gl": "galician", "gu": "gujarati",
    "ha": "hausa", "haw": "hawaiian", "he": "hebrew", "hi": "hindi",
    "hr": "croatian", "ht": "haitian creole", "hu": "hungarian", "hy": "armenian",
    "id": "indonesian", "is": "icelandic", "it": "italian", "ja": "japanese",
    "jw": "javanese", "ka": "georgian", "kk": "kazakh", "km": "khmer",
    "kn": "kannada", "ko": "korean", "la": "latin", "lb": "luxembourgish",
    "ln": "lingala", "lo": "lao", "lt": "lithuanian", "lv": "latvian",
    "mg": "malagasy", "mi": "maori", "mk": "macedonian", "ml": "malayalam",
    "mn": "mongolian", "mr": "marathi", "ms": "malay", "mt": "maltese",
    "my": "myanmar", "ne": "nepali", "nl": "dutch", "nn": "nynorsk",
    "no": "norwegian", "oc": "occitan", "pa": "punjabi", "pl": "polish",
    "ps": "pashto", "pt": "portuguese", "ro": "romanian", "ru": "russian",
    "sa": "sanskrit", "sd": "sindhi", "si": "sinhala", "sk": "slovak",
    "sl": "slovenian", "sn": "shona", "so": "somali", "sq": "albanian",
    "sr": "serbian", "su": "sundanese", "sv": "swedish", "sw": "swahili",
    "ta": "tamil", "te": "telugu", "tg": "tajik", "th": "thai",
    "tk": "turkmen", "tl": "tagalog", "tr": "turkish", "tt": "tatar",
    "uk": "ukrainian", "ur": "urdu", "uz": "uzbek", "vi": "vietnamese",
    "yi": "yiddish", "yo": "yoruba", "yue": "cantonese", "zh": "chinese",
}  # fmt: skip


def language_name(code: str) -> str:
    """The English name of a language code (``"en"`` → ``"english"``); an unknown code
    (``"und"``) is returned as it is."""
    return LANGUAGE_NAMES.get(code.lower(), code)
