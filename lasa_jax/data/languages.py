"""Language names and scripts: the ISO 639-1 code of any spelling, and the writing systems of a text.

Every loader maps its language labels to ISO 639-1 two-letter codes (`normalize_language`); `LANGUAGE_SCRIPTS` /
`script_shares` say which writing system a language's text uses.

Accepted spellings (case-insensitive, surrounding whitespace ignored, `_` and `-` interchangeable):
- ISO 639-1 codes (`"en"`, `"zh"`), with optional region/script suffix (`"zh-CN"`, `"en_US"`, `"zh-Hans"`);
- ISO 639-3 / 639-2 codes, macrolanguage and individual-language forms (`"zho"`, `"cmn"`, `"ara"`, `"arb"`,
  `"swa"`, `"swh"`, `"ger"`, `"deu"`);
- FLORES-200 codes (`"zho_Hans"`, `"jav_Latn"`, `"swh_Latn"`, `"arb_Arab"`) and NTREX-128 codes (`"eng-US"`,
  `"zho-CN"`, `"swa"`);
- English language names (`"Chinese"`, `"Javanese"`, `"Swahili"`, `"Chinese (Simplified)"`, `"Bangla"`);
- legacy codes used by upstream data: `jw` (Javanese, Google Translate) -> `jv`, `sp` (Spanish, XSafety) -> `es`,
  `in` -> `id`, `iw` -> `he`.
"""
from __future__ import annotations

import re

from lasa_jax.infra.errors import InputError

MULTIJAIL_LANGUAGES = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")

# ISO 639-1 -> (English names, other codes: ISO 639-3/639-2 incl. individual languages of a macrolanguage, legacy).
_LANGUAGE_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (("English",), ("eng",)),
    "zh": (("Chinese", "Mandarin", "Mandarin Chinese", "Simplified Chinese", "Traditional Chinese"),
           ("zho", "chi", "cmn")),
    "it": (("Italian",), ("ita",)),
    "vi": (("Vietnamese",), ("vie",)),
    "ar": (("Arabic", "Standard Arabic", "Modern Standard Arabic"), ("ara", "arb")),
    "ko": (("Korean",), ("kor",)),
    "th": (("Thai",), ("tha",)),
    "bn": (("Bengali", "Bangla"), ("ben",)),
    "sw": (("Swahili", "Kiswahili"), ("swa", "swh")),
    "jv": (("Javanese",), ("jav", "jw")),
    "de": (("German",), ("deu", "ger")),
    "es": (("Spanish", "Castilian"), ("spa", "sp")),
    "fr": (("French",), ("fra", "fre")),
    "ja": (("Japanese",), ("jpn",)),
    "nl": (("Dutch", "Flemish"), ("nld", "dut")),
    "pl": (("Polish",), ("pol",)),
    "ru": (("Russian",), ("rus",)),
    "yo": (("Yoruba",), ("yor",)),
    "hi": (("Hindi",), ("hin",)),
    "pt": (("Portuguese",), ("por",)),
    "tr": (("Turkish",), ("tur",)),
    "id": (("Indonesian",), ("ind", "in")),
    "ms": (("Malay",), ("msa", "may", "zsm")),
    "fa": (("Persian", "Farsi"), ("fas", "per", "pes")),
    "he": (("Hebrew",), ("heb", "iw")),
    "uk": (("Ukrainian",), ("ukr",)),
    "cs": (("Czech",), ("ces", "cze")),
    "el": (("Greek", "Modern Greek"), ("ell", "gre")),
    "hu": (("Hungarian",), ("hun",)),
    "ro": (("Romanian",), ("ron", "rum")),
    "sv": (("Swedish",), ("swe",)),
    "fi": (("Finnish",), ("fin",)),
    "da": (("Danish",), ("dan",)),
    "no": (("Norwegian",), ("nor", "nob", "nb")),
    "ta": (("Tamil",), ("tam",)),
    "te": (("Telugu",), ("tel",)),
    "ur": (("Urdu",), ("urd",)),
    "mr": (("Marathi",), ("mar",)),
    "gu": (("Gujarati",), ("guj",)),
    "tl": (("Tagalog", "Filipino"), ("tgl", "fil")),
}


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower().replace("_", "-"))


_CODES: dict[str, str] = {}
_NAMES: dict[str, str] = {}
for _iso1, (_names, _codes) in _LANGUAGE_TABLE.items():
    _CODES[_iso1] = _iso1
    for _code in _codes:
        _CODES[_code] = _iso1
    for _name in _names:
        _NAMES[_key(_name)] = _iso1


def normalize_language(name: str) -> str:
    """Return the ISO 639-1 code of a language name or code (see the module docstring for accepted forms).

    Raises ValueError naming `name` when it is not a known language.
    """
    if not isinstance(name, str):
        raise InputError(f"language must be a string, got {type(name).__name__} {name!r}")
    key = _key(name)
    if key in _CODES:
        return _CODES[key]
    if key in _NAMES:
        return _NAMES[key]
    base_code = key.split("-", 1)[0]  # "zho-hans", "eng-us", "zh-cn" -> code before the script/region suffix
    if "-" in key and base_code in _CODES:
        return _CODES[base_code]
    base_name = re.sub(r"\s*\(.*\)\s*$", "", key)  # "chinese (simplified)" -> "chinese"
    if base_name in _NAMES:
        return _NAMES[base_name]
    raise InputError(
        f"unknown language {name!r}: expected a language name ('Javanese'), an ISO 639-1 code ('jv'), "
        f"an ISO 639-3 or FLORES-200 code ('jav', 'jav_Latn') or an NTREX-128 code ('zho-CN')"
    )


def language_name(code: str) -> str:
    """English name of a language (any spelling accepted by `normalize_language`), e.g. 'jw' -> 'Javanese'."""
    return _LANGUAGE_TABLE[normalize_language(code)][0][0]


# Writing systems (`script_shares` names) in which a language's ordinary text is written. A language absent here has
# no expected script (no wrong-script check). Latin-script languages cannot be told apart by script.
_LATIN = ("en", "it", "vi", "sw", "jv", "de", "es", "fr", "nl", "pl", "yo", "pt", "tr", "id", "ms", "cs", "hu", "ro",
          "sv", "fi", "da", "no", "tl")
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: ("latin",) for code in _LATIN},
    "zh": ("han",), "ja": ("han", "kana"), "ko": ("hangul",), "th": ("thai",), "ar": ("arabic",), "fa": ("arabic",),
    "ur": ("arabic",), "bn": ("bengali",), "ru": ("cyrillic",), "uk": ("cyrillic",), "el": ("greek",),
    "he": ("hebrew",), "hi": ("devanagari",), "mr": ("devanagari",), "ta": ("tamil",), "te": ("telugu",),
    "gu": ("gujarati",),
}

# (first code point, last code point, script) of the letters `script_shares` counts.
_SCRIPT_RANGES = (
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00C0, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"),
    (0x0370, 0x03FF, "greek"), (0x0400, 0x04FF, "cyrillic"), (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0980, 0x09FF, "bengali"), (0x0A80, 0x0AFF, "gujarati"),
    (0x0B80, 0x0BFF, "tamil"), (0x0C00, 0x0C7F, "telugu"), (0x0E00, 0x0E7F, "thai"),
    (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xAC00, 0xD7AF, "hangul"),
    (0x3040, 0x30FF, "kana"), (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"),
)


def _script_of(char: str) -> str | None:
    point = ord(char)
    for first, last, script in _SCRIPT_RANGES:
        if first <= point <= last:
            return script
    return None


def script_counts(text: str) -> dict[str, int]:
    """Number of letters of `text` in each known script (digits, punctuation, spaces and unlisted scripts are not
    counted)."""
    counts: dict[str, int] = {}
    for char in text:
        script = _script_of(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    return counts


def script_shares(text: str) -> dict[str, float]:
    """`script_counts` as shares of the counted letters (summing to 1); {} when there are none."""
    counts = script_counts(text)
    total = sum(counts.values())
    return {script: count / total for script, count in counts.items()} if total else {}


def expected_scripts(language: str) -> tuple[str, ...]:
    """Scripts of `language` (any spelling `normalize_language` accepts); () when unknown or not in the table."""
    try:
        return LANGUAGE_SCRIPTS.get(normalize_language(language), ())
    except ValueError:
        return ()
