"""The unpaired KTO row (`PreferenceRow`) and the identities derived from its content (prompt ids, content hashes).

Desirability: a safety refusal is desirable and a harmful compliance undesirable, with or without the prefix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import unicodedata
from typing import Any

from lasa_jax.models.chat import Prompt, chat_messages

# Last characters of a text that ended where its author (model) stopped: sentence-final punctuation (Latin, CJK,
# Devanagari, Arabic, Thai), closing brackets and quotes, markup/code closers, and the Chinese question particles
# (questions written without a question mark). See `ends_naturally`.
NATURAL_END_CHARS = frozenset(".!?…;。！？；」』）】》)]}\"'”’»`*>|~।؟吗呢吧")


@dataclasses.dataclass(frozen=True)
class PreferenceRow:
    """One unpaired KTO row.

    prompt: user string or list of {role, content} messages ending with a user message.
    completion: the assistant answer (text). desirable: True for a good answer (e.g. a refusal of a harmful request).
    source: data source; selects the latent-label probability in "paper" mode (e.g. "safety", "ultrafeedback").
    language: ISO 639-1 code or "". group_id: identity of the underlying query; rows with equal group_id (the two
    answers of a pair, translations of one prompt) are never KL partners, and neither are rows with the same
    prompt messages, whatever their group_id. is_unsafe: latent label (1: train with the conditional prefix), None
    until `assign_latent_labels`. origin: provenance ("file#record"). complete: False when the completion was cut by
    its generator (e.g. at max_new_tokens; `ends_naturally`): it is rendered without an end-of-turn token.
    """

    prompt: Prompt
    completion: str
    desirable: bool
    source: str
    language: str = ""
    group_id: str = ""
    is_unsafe: int | None = None
    origin: str = ""
    complete: bool = True


def ends_naturally(text: str) -> bool:
    """Whether a generated answer looks finished: its last non-space character is in `NATURAL_END_CHARS`, or is an
    emoji / pictograph (So category). The polyrefuse_completions files (greedy, max_new_tokens 512) keep no token
    ids, so this is how an answer cut at the token cap is told apart; one that happens to be cut right after a
    full stop is not caught."""
    stripped = text.rstrip()
    if not stripped:
        return False
    last = stripped[-1]
    return last in NATURAL_END_CHARS or unicodedata.category(last) == "So"


def content_hash(obj: Any) -> str:
    """SHA-256 hex of `obj` as canonical JSON (sorted keys, UTF-8, non-ASCII kept)."""
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def prompt_group_id(prompt: Prompt) -> str:
    """"prompt/<24 hex of the SHA-256 of the prompt's chat messages>": one id per distinct prompt (a str prompt and
    the equivalent one-user-message list get the same id)."""
    return "prompt/" + content_hash(chat_messages(prompt))[:24]


def row_hash_words(row: PreferenceRow) -> list[int]:
    """The row's content hash (source, group_id, prompt messages, completion, desirable) as eight 32-bit words
    (SeedSequence entropy)."""
    digest = bytes.fromhex(content_hash([row.source, row.group_id, chat_messages(row.prompt), row.completion,
                                         bool(row.desirable)]))
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]
