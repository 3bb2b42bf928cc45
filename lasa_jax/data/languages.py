"""Language-name normalisation: every loader maps its language labels to ISO 639-1 two-letter codes.

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

from lasa_jax.errors import InputError

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
