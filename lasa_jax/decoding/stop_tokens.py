"""Stop tokens: which token ids end a generated row, and the padded id array the decoding programs compare with.

`stop_token_ids(model_config, tokenizer, template_kwargs, model_dir=...)` lists the ids a run stops on: the model
config's eos ids, those of `<model_dir>/generation_config.json`, the tokenizer's eos token and the chat template's
end-of-turn token. `resolve_special_ids(config, eos_token_id, pad_token_id)` turns the stop ids a caller gives (or
the model config's) into the (eos array, pad id) pair that `generate` and `generate_continuous` take: `eos_array`
holds the sorted unique ids padded with -1 (never a token) to a multiple of `EOS_SLOTS` entries, so runs with a
few more or fewer stop ids share one compiled program.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.models.chat import end_of_turn_ids
from lasa_jax.models.config import ModelConfig

log = logging.getLogger(__name__)

GENERATION_CONFIG = "generation_config.json"
EOS_SLOTS = 4  # eos arrays are padded with -1 to a multiple of this many entries


def generation_config_eos_ids(model_dir: str | os.PathLike | None) -> list[int]:
    """The eos_token_id(s) of `<model_dir>/generation_config.json` (an int or a list; Qwen lists `<|im_end|>` and
    `<|endoftext|>`); [] when there is no such file or field. A malformed file -> InputError naming it."""
    if not model_dir:
        return []
    path = os.path.join(os.fspath(model_dir), GENERATION_CONFIG)
    if not storage.isfile(path):
        return []
    try:
        with storage.open_file(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: expected a JSON object, got unparsable text ({e})") from None
    eos = data.get("eos_token_id") if isinstance(data, dict) else None
    values = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InputError(f"{path}: field 'eos_token_id' must be a token id or a list of token ids, got {eos!r}")
    return [int(v) for v in values]


def stop_token_ids(model_config, tokenizer, template_kwargs: Mapping[str, Any] | None = None, *,
                   model_dir: str | os.PathLike | None = None) -> list[int]:
    """Tokens that end generation: the model config's eos ids, the eos ids of `<model_dir>/generation_config.json`
    (e.g. Qwen's `<|endoftext|>` beside `<|im_end|>`), the tokenizer's eos token and the chat template's end-of-turn
    token (Llama-3 `<|eot_id|>`, Qwen `<|im_end|>`), when the template reveals one."""
    ids = set(model_config.eos_token_ids) | set(generation_config_eos_ids(model_dir))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if getattr(tokenizer, "chat_template", None):
        try:
            ids.add(int(end_of_turn_ids(tokenizer, template_kwargs)[-1]))
        except ValueError as e:  # templates that rewrite assistant content (e.g. guard models): config ids only
            log.info("no end-of-turn token from the chat template (%s); stopping on %s", e, sorted(ids))
    if not ids:
        raise InputError("no stop token: the model config has no eos_token_id and the tokenizer no eos_token")
    return sorted(ids)


def eos_array(eos_token_id: int | Iterable[int] | None) -> np.ndarray:
    """Sorted unique eos ids (an int, a list of ints, or None = none), padded with -1 to a multiple of `EOS_SLOTS`
    entries: (E,) int32."""
    ids = [] if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, (int, np.integer)) else list(eos_token_id))
    if not all(isinstance(i, (int, np.integer)) and i >= 0 for i in ids):
        raise InputError(f"eos_token_id must be a non-negative int or a list of them, got {eos_token_id!r}")
    unique = sorted(set(int(i) for i in ids))
    size = max(EOS_SLOTS, -(-len(unique) // EOS_SLOTS) * EOS_SLOTS)
    return np.asarray(unique + [-1] * (size - len(unique)), np.int32)


def resolve_special_ids(config: ModelConfig, eos_token_id, pad_token_id) -> tuple[np.ndarray, int]:
    """(eos ids (E,) int32 padded with -1, pad id): the given values, else the model config's eos ids and pad id
    (pad falls back to the first eos id, then 0)."""
    eos = eos_array(config.eos_token_ids if eos_token_id is None else eos_token_id)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else max(int(eos[0]), 0)
    if not isinstance(pad_token_id, (int, np.integer)) or not 0 <= pad_token_id < config.vocab_size:
        raise InputError(f"pad_token_id must be an int in [0, {config.vocab_size}), got {pad_token_id!r}")
    return eos, int(pad_token_id)
