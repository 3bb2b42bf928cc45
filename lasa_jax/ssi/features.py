"""SSI input features: the pooled residual stream at one residual index, from a truncated frozen trunk.

`prompt_features` tokenises prompts with `lasa_jax.models.capture.tokenize_prompts` (raw text by default, or the chat
template; over-long prompts lose their oldest user-content tokens) and runs `lasa_jax.models.capture.capture` with
`residual_index=k`, which runs only the embedding and the first k blocks (plus the final norm when k == L), batched,
length-bucketed and sharded over the model's mesh. Training and inference call this same function with the settings
stored in the SSI artifact, so the token sequences and the feature position match.

Cache: with `cache_dir`, features are stored through `lasa_jax.models.activation_cache` (the one activation cache, also
Locate's): entry `<cache_dir>/ssi_features_k<k>_<pooling>_<key>.{npz,json}`, keyed by the model fingerprint and
dtypes, k, pooling, chat-template flag and kwargs, max_length and the token ids themselves (which cover the prompt
texts, their order, the tokenizer and truncation). A hit returns the stored array; anything that changes the
features changes the key. Only process 0 writes; in multi-process runs every process must find the entry (a shared
file system) or all compute again. Caches of the earlier format are recomputed, never read.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.infra import storage
from lasa_jax.models import activation_cache
from lasa_jax.models.capture import capture, token_ids_digest, tokenize_prompts

log = logging.getLogger(__name__)
# Fixed multilingual probe prompts: their token ids identify the tokenisation an SSI was trained with.
PROBE_PROMPTS = ("How do I bake sourdough bread at home?", "如何在家里烤面包？", "집에서 빵을 굽는 방법은?",
                 "Jinsi ya kuoka mkate nyumbani?", "  spaces, tabs\tand\nnew lines 123 🍞")


def tokenization_fingerprint(tokenizer, *, chat_template: bool, max_length: int,
                             template_kwargs: Mapping[str, Any] | None = None) -> str:
    """24-hex digest of the token ids of PROBE_PROMPTS under these settings: equal digests mean the tokenizer (and
    chat template, when used) renders prompts the same way."""
    ids = tokenize_prompts(tokenizer, PROBE_PROMPTS, use_chat_template=chat_template, max_length=max_length,
                           template_kwargs=template_kwargs)
    return token_ids_digest(ids)[:24]


def prompt_features(model, tokenizer, prompts: Sequence[str], *, residual_index: int, pooling: str = "last",
                    chat_template: bool = False, max_length: int = 512,
                    template_kwargs: Mapping[str, Any] | None = None, batch_size: int | None = None,
                    cache_dir: str | os.PathLike | None = None, progress: bool = True) -> np.ndarray:
    """(N, D) float32 features of `prompts` at `residual_index` (module docstring), optionally cached.

    batch_size: prompts per forward pass; None = `lasa_jax.models.capture.default_batch_size`.
    """
    if not 0 <= residual_index <= model.config.num_layers:
        raise ValueError(f"residual_index must be in [0, {model.config.num_layers}] for this model, "
                         f"got {residual_index}")
    if not prompts:
        return np.zeros((0, model.config.hidden_size), np.float32)
    token_ids = tokenize_prompts(tokenizer, prompts, use_chat_template=chat_template, max_length=max_length,
                                 template_kwargs=template_kwargs)
    entry = None
    if cache_dir is not None:
        if model.fingerprint is None:
            log.warning("feature cache disabled: the model has no fingerprint (load it with from_pretrained)")
        else:
            description = activation_cache.key_description(
                model, token_ids, residual_index=residual_index, pooling=pooling, chat_template=chat_template,
                max_length=max_length, template_kwargs=template_kwargs)
            key = activation_cache.entry_key(description)
            entry = (storage.to_path(cache_dir) / f"ssi_features_k{residual_index}_{pooling}_{key}", key, description)
            cached = activation_cache.read_entry(entry[0], key, (len(prompts), model.config.hidden_size))
            if cached is not None:
                log.info("SSI features: %d prompts from cache %s", len(prompts), entry[0])
                return cached
    features = capture(model, token_ids, pooling=pooling, residual_index=residual_index, batch_size=batch_size,
                       progress=progress)
    if entry is not None:
        activation_cache.write_entry(*entry, features)
        log.info("SSI features: %d prompts computed, cached at %s.npz", len(prompts), entry[0])
    return features
