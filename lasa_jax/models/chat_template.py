"""Chat-template introspection for `lasa_jax.models.chat`: rendering through the tokenizer's template, the sentinel
probes that locate the last user message's content, token spans by character offsets, and a per-tokenizer memo (weakly
keyed, emptied when the vocabulary size or the template changes)."""
from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from lasa_jax.infra.errors import InputError

SENTINEL = "LASA-TEMPLATE-SENTINEL-7f3a"


def apply_template(tokenizer, messages, *, add_generation_prompt: bool, template_kwargs) -> str:
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or "tokenizer"
        raise InputError(f"{name}: the tokenizer has no chat_template; pass use_chat_template=False for raw text")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **dict(template_kwargs or {}))


# tokenizer -> ((vocabulary size, chat template), {key: value}); entries vanish with their tokenizer.
_TOKENIZER_MEMO: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, Any], dict]] = weakref.WeakKeyDictionary()
_MAX_CACHED_PROBES = 1024


def tokenizer_memo(tokenizer) -> dict:
    """The cache of values that depend only on `tokenizer` (and its chat template), emptied when its vocabulary
    size or chat template changes; a fresh throwaway dict for tokenizers that cannot be weakly referenced."""
    state = (len(tokenizer), getattr(tokenizer, "chat_template", None))
    try:
        entry = _TOKENIZER_MEMO.get(tokenizer)
        if entry is None or entry[0] != state:
            entry = _TOKENIZER_MEMO[tokenizer] = (state, {})
    except TypeError:  # not hashable / not weak-referenceable
        return {}
    return entry[1]


def kwargs_key(template_kwargs: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(template_kwargs or {}), sort_keys=True, default=repr)


def encode_plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def cached_encode(tokenizer, text: str) -> list[int]:
    """`encode_plain` for texts used on every row (the prefix), cached per tokenizer."""
    memo = tokenizer_memo(tokenizer)
    key = ("encode", text)
    if key not in memo:
        memo[key] = tuple(encode_plain(tokenizer, text))
    return list(memo[key])


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special (control) tokens: added tokens marked special, plus bos/eos/pad."""
    ids = {int(i) for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return ids | {int(i) for i in tokenizer.all_special_ids}


def adds_bos(tokenizer) -> bool:
    """Whether encoding raw text with default special tokens starts with the BOS token (cached per tokenizer)."""
    memo = tokenizer_memo(tokenizer)
    if "adds_bos" not in memo:
        bos = tokenizer.bos_token_id
        memo["adds_bos"] = bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos]
    return memo["adds_bos"]


def sentinel_probe(tokenizer, history, template_kwargs, *, fresh: bool = False) -> str:
    """The template with generation prompt for `history` + a user message whose content is `SENTINEL`.

    Cached per (tokenizer, template_kwargs, history); `fresh` re-renders (for templates whose text changes
    between calls, e.g. one that writes today's date).
    """
    probes = tokenizer_memo(tokenizer).setdefault("probes", {})
    key = (kwargs_key(template_kwargs), json.dumps(history, ensure_ascii=False))
    if fresh or key not in probes:
        if len(probes) >= _MAX_CACHED_PROBES:
            probes.clear()
        probes[key] = apply_template(tokenizer, history + [{"role": "user", "content": SENTINEL}],
                                      add_generation_prompt=True, template_kwargs=template_kwargs)
    return probes[key]


def template_ids(tokenizer, messages, template_kwargs) -> tuple[list[int], int, int]:
    """Template ids with generation prompt, and the token span of the last user message's content."""
    text = apply_template(tokenizer, messages, add_generation_prompt=True, template_kwargs=template_kwargs)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    # Locate the last user content: the same conversation rendered with a sentinel in its place gives the text
    # before and after it.
    content_start = content_end = 0  # the template rewrites user content: nothing is droppable
    for fresh in (False, True):
        probe_text = sentinel_probe(tokenizer, messages[:-1], template_kwargs, fresh=fresh)
        before, _, after = probe_text.rpartition(SENTINEL)
        if probe_text.count(SENTINEL) == 1 and text.startswith(before) and text.endswith(after) \
                and len(before) + len(after) <= len(text):
            content_start, content_end = token_span(encoding["offset_mapping"], len(before),
                                                     len(text) - len(after))
            break
    if adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        ids = [int(tokenizer.bos_token_id)] + ids
        if content_end > content_start:
            content_start, content_end = content_start + 1, content_end + 1
    return ids, content_start, content_end


def token_span(offsets, char_start: int, char_end: int) -> tuple[int, int]:
    """[first, last + 1) of the first run of tokens lying entirely inside [char_start, char_end); (0, 0) if none.

    offsets: (T, 2) character (start, end) per token, as `return_offsets_mapping` gives; zero-width tokens (special
    tokens added by the tokenizer) are never inside.
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts, ends = offsets[:, 0], offsets[:, 1]
    inside = (starts >= char_start) & (ends <= char_end) & (ends > starts)
    if not inside.any():
        return 0, 0
    first = int(np.argmax(inside))
    outside_after = np.flatnonzero(~inside[first:])
    return first, first + (int(outside_after[0]) if outside_after.size else len(inside) - first)
