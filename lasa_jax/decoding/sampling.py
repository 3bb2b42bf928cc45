"""Token selection of every decoding loop: greedy argmax or temperature / top-k / top-p sampling on float32 logits.

Rules, per row, in the order of Hugging Face's logits warpers:
  greedy (temperature == 0): argmax (identical to HF `generate(do_sample=False)`);
  otherwise: logits / temperature, then top-k (keep tokens whose logit is >= the k-th largest; 0 = off), then
  top-p (keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 = off; the most likely
  token is always kept), then one draw from the renormalised distribution with the caller's key.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def select_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array,
                  *, greedy: bool) -> jax.Array:
    """Next token per row from float32 logits (B, V) -> (B,) int32 (see the module docstring for the rules)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    V = logits.shape[-1]
    scaled = logits / temperature
    sorted_desc = jnp.flip(jnp.sort(scaled, axis=-1), axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    rank = jnp.arange(V)[None, :]
    in_top_k = rank < k
    probs = jax.nn.softmax(jnp.where(in_top_k, sorted_desc, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))  # the most likely token is always kept
    num_kept = jnp.sum(keep_sorted, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_desc, num_kept - 1, axis=-1)
    return jax.random.categorical(key, jnp.where(scaled >= cutoff, scaled, -jnp.inf), axis=-1).astype(jnp.int32)
