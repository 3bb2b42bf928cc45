"""Pooled hidden-state capture: one jit-compiled forward per batch gives every residual index at once.

Used by Locate (all residual indices 0..L) and by the SSI (one residual index k, running only the first k blocks).
Index convention: `lasa_jax.models.decoder` (residual index k = HF `hidden_states[k]`; L is post-final-norm).

Pooling, per prompt, over its real tokens only (attention mask 1), for either padding side:
  "last": the hidden state of the last real token (the paper's feature),
  "mean": the mean over real tokens.
Prompts are tokenised by `lasa_jax.models.chat.render_prompt`: raw text with the tokenizer's default special tokens
(the paper's setting), or through the chat template; over-long prompts lose their oldest user-content tokens, the
same rule at SSI training and inference time.

Batches are bucketed: prompts are sorted by length and padded to the next bucket length (powers of two from 16), and
every batch has the same number of rows, so a data set compiles one program per bucket, not one per batch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.progress import progress_bar
from lasa_jax.infra.storage import atomic_path
from lasa_jax.models.chat import render_prompt
from lasa_jax.models.decoder import Decoder, forward
from lasa_jax.sharding import batch_shards, put_batch, to_host

log = logging.getLogger(__name__)
POOLINGS = ("last", "mean")


# ----------------------------------------------------------------------------------------------- pooling
def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """(B, T) mask -> (B,) index of the last real token, for any padding side (0 for an empty row)."""
    T = attention_mask.shape[-1]
    positions = jnp.arange(T)[None, :]
    return jnp.max(jnp.where(attention_mask.astype(bool), positions, 0), axis=-1)


def pool_last_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """(B, T, D), (B, T) -> (B, D) float32: hidden state at the last real token."""
    index = last_token_index(attention_mask)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def pool_mean(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """(B, T, D), (B, T) -> (B, D) float32: mean over real tokens."""
    m = attention_mask.astype(jnp.float32)[..., None]
    return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


POOLING_FNS = {"last": pool_last_token, "mean": pool_mean}


def _pooling_fn(pooling: str):
    if pooling not in POOLING_FNS:
        raise InputError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return POOLING_FNS[pooling]


# ----------------------------------------------------------------------------------------------- tokenisation
def tokenize_prompts(tokenizer, prompts: Sequence[str], *, use_chat_template: bool = False, max_length: int = 512,
                     template_kwargs: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """Token ids of each prompt (int32 arrays), via `render_prompt`, cut to at most `max_length` tokens."""
    return [render_prompt(tokenizer, p, use_chat_template=use_chat_template, template_kwargs=template_kwargs,
                          max_prompt_length=max_length).input_ids for p in prompts]


@dataclasses.dataclass(frozen=True)
class Batch:
    """input_ids/attention_mask (B, T) int32 numpy; `rows` maps batch rows to prompt indices (-1 = filler row)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    rows: np.ndarray


def bucket_length(length: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(length, minimum)."""
    return max(minimum, 1 << max(0, int(length) - 1).bit_length())


def bucketed_batches(token_ids: Sequence[np.ndarray], batch_size: int, *, pad_id: int,
                     padding_side: str = "right") -> Iterator[Batch]:
    """Fixed-size batches of prompts sorted by length, each padded to its bucket length.

    The last batch of a bucket is filled with copies of its first row (rows = -1), so the batch dimension never
    changes (and stays divisible by the mesh's batch shards).
    """
    if padding_side not in ("left", "right"):
        raise InputError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    lengths = np.array([len(t) for t in token_ids])
    if (lengths == 0).any():
        raise InputError(f"prompt {int(np.argmin(lengths))} has no tokens")
    order = np.argsort(lengths, kind="stable")
    buckets: dict[int, list[int]] = {}
    for i in order:
        buckets.setdefault(bucket_length(lengths[i]), []).append(int(i))
    for T, members in sorted(buckets.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            rows = np.full(batch_size, -1, np.int64)
            rows[:len(chunk)] = chunk
            ids = np.full((batch_size, T), pad_id, np.int32)
            mask = np.zeros((batch_size, T), np.int32)
            for r, i in enumerate(chunk + [chunk[0]] * (batch_size - len(chunk))):
                n = lengths[i]
                sl = slice(0, n) if padding_side == "right" else slice(T - n, T)
                ids[r, sl] = token_ids[i]
                mask[r, sl] = 1
            yield Batch(ids, mask, rows)


# ----------------------------------------------------------------------------------------------- capture
def _capture_step(params, config, mesh, input_ids, attention_mask, *, pooling: str, residual_index: int | None):
    """Pooled states of one batch: all residual indices (n_layers+1, B, D) or one index k (B, D); float32."""
    pool = POOLING_FNS[pooling]
    if residual_index is None:
        out = forward(params, config, input_ids, attention_mask, mesh=mesh, output_hidden_states=True,
                      hidden_state_fn=pool, compute_logits=False)
        return out.hidden_states
    if residual_index == config.num_layers:  # post-final-norm entry
        out = forward(params, config, input_ids, attention_mask, mesh=mesh, compute_logits=False)
        return pool(out.final_hidden, attention_mask)
    out = forward(params, config, input_ids, attention_mask, mesh=mesh, num_blocks=residual_index,
                  output_hidden_states=False, compute_logits=False)
    return pool(out.last_block_output, attention_mask)


capture_step = jax.jit(_capture_step, static_argnames=("config", "mesh", "pooling", "residual_index"))


def default_batch_size(model: Decoder, requested: int | None = None) -> int:
    """`requested` if set (> 0), else the smallest multiple of the mesh's batch shards (`batch_shards`) >= 8."""
    if requested:
        return int(requested)
    shards = batch_shards(model.mesh)
    return shards * -(-8 // shards)


def token_ids_digest(token_ids: Sequence[np.ndarray]) -> str:
    """SHA-256 of a list of token-id sequences (lengths and int32 values, in order): a cache key of tokenised data."""
    h = hashlib.sha256()
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int32)
        h.update(np.int64(ids.size).tobytes())
        h.update(ids.tobytes())
    return h.hexdigest()


def capture(model: Decoder, token_ids: Sequence[np.ndarray], *, pooling: str = "last",
            residual_index: int | None = None, batch_size: int | None = None, padding_side: str = "right",
            pad_id: int | None = None, progress: bool = True, mesh: Mesh | None = None) -> np.ndarray:
    """Pooled hidden states of every prompt.

    Args:
      model: the decoder (its mesh, if any, splits each batch `batch_shards(mesh)` ways; `batch_size` must be a
        multiple of that; None = `default_batch_size(model)`).
      token_ids: per-prompt int token ids (e.g. from `tokenize_prompts`).
      residual_index: None -> all residual indices, output (L+1, N, D); k -> output (N, D) computed by running
        only the embedding and the first k blocks (plus the final norm when k == L).
      padding_side: padding used inside batches; results do not depend on it (tested).
    Returns float32 numpy, rows in the order of `token_ids`.
    """
    _pooling_fn(pooling)
    config = model.config
    if residual_index is not None and not 0 <= residual_index <= config.num_layers:
        raise InputError(f"residual_index must be in [0, {config.num_layers}], got {residual_index}")
    mesh = mesh if mesh is not None else model.mesh
    batch_size = default_batch_size(model, batch_size)
    shards = batch_shards(mesh)
    if batch_size % shards:
        raise InputError(f"batch_size {batch_size} must be a multiple of the mesh's batch shards ({shards})")
    if pad_id is None:
        pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    n = len(token_ids)
    D = config.hidden_size
    shape = (n, D) if residual_index is not None else (config.num_layers + 1, n, D)
    result = np.zeros(shape, np.float32)
    params = model.params()
    bar = progress_bar(n, progress, desc="capture")
    start = time.perf_counter()
    done = 0
    for batch in bucketed_batches(token_ids, batch_size, pad_id=pad_id, padding_side=padding_side):
        ids, mask = put_batch(mesh, batch.input_ids, batch.attention_mask)
        pooled = to_host(capture_step(params, config, mesh, ids, mask, pooling=pooling,
                                       residual_index=residual_index))
        real = batch.rows >= 0
        if residual_index is None:
            result[:, batch.rows[real]] = pooled[:, real]
        else:
            result[batch.rows[real]] = pooled[real]
        done += int(real.sum())
        if bar is not None:
            bar.update(int(real.sum()))
            bar.set_postfix(prompts_per_s=f"{done / (time.perf_counter() - start):.1f}")
    if bar is not None:
        bar.close()
    return result


# ----------------------------------------------------------------------------------------------- storage
def save_activations(path: str | os.PathLike, features: np.ndarray, **columns: Sequence) -> None:
    """Write features and per-prompt columns (strings or numbers, length N) to an .npz, atomically.

    Strings are stored as fixed-width unicode arrays, so reading never needs pickle.
    """
    arrays = {"features": np.asarray(features, np.float32)}
    for name, values in columns.items():
        values = np.asarray(list(values))
        if values.dtype == object:
            values = values.astype(str)
        arrays[name] = values
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_activations(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `save_activations` file (pickle disabled)."""
    with np.load(storage.for_reading(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
