"""The KV cache of generation: its two layouts, per-row writes and the attention mask over cache slots.

Layouts (K key/value heads, hd head_dim, S cache slots, L layers):
  stacked:   {"k", "v"} of shape (L, B, S, K, hd) (`init_cache`; what `forward(cache=...)` takes and returns),
  per layer: a tuple of L dicts {"k", "v"} of shape (B, S, K, hd) (`split`; an unrolled decode loop keeps one
             buffer per layer, so a step writes a few slots in place and never copies a layer's cache out of the
             stacked array).
A call with T tokens writes them at slots [index, index + T) of each row; `index` is a scalar (the same slot for
every row, as in static batches) or (B,) per row (continuous batching: every slot row is at its own length).
Query t of row b attends to slots s <= index[b] + t that `kv_mask` marks as real (None: all).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lasa_jax.models.config import ModelConfig


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> dict:
    """Empty stacked KV cache: {"k", "v"} of shape (L, B, S_max, K, hd) in the compute dtype."""
    dtype = dtype or {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.compute_dtype]
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def split(cache: dict) -> tuple[dict, ...]:
    """Stacked cache -> tuple of L per-layer caches."""
    return tuple({"k": cache["k"][i], "v": cache["v"][i]} for i in range(cache["k"].shape[0]))


def stack(layers) -> dict:
    """Tuple of per-layer caches -> stacked cache."""
    return {name: jnp.stack([layer[name] for layer in layers]) for name in ("k", "v")}


def _write_rows(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """buffer (B, S, K, hd), new (B, T, K, hd) written at slots [index, index + T): scalar or per-row index."""
    new = new.astype(buffer.dtype)
    index = jnp.asarray(index, jnp.int32)
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice(buffer, new, (0, index, 0, 0))
    return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice(b, n, (i, 0, 0)))(buffer, new, index)


def write(layer_cache: dict, k: jax.Array, v: jax.Array, index) -> dict:
    """One layer's cache with this call's keys/values (B, T, K, hd) written at `index` (module docstring)."""
    return {"k": _write_rows(layer_cache["k"], k, index), "v": _write_rows(layer_cache["v"], v, index)}


def cache_mask(index, num_queries: int, num_slots: int, batch_size: int, kv_mask: jax.Array | None = None):
    """(B, T, S) bool: query t of row b sees slot s iff s <= index[b] + t and kv_mask[b, s] (module docstring)."""
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (batch_size,))
    last = index[:, None] + jnp.arange(num_queries)[None, :]  # (B, T)
    mask = jnp.arange(num_slots)[None, None, :] <= last[:, :, None]
    if kv_mask is not None:
        mask = mask & kv_mask.astype(bool)[:, None, :]
    return mask
