"""Sequence log-probabilities of completion tokens: `completion_logps` from logits, `sequence_logps` from parameters
(the logits computed in chunks, never whole), and its jitted form `batch_logps`.

Convention: a sequence log-probability is the **sum** of the token log-probabilities over the positions where
`loss_mask` is 1; logits[b, t] predict input_ids[b, t + 1] (position 0 is never scored). Used by KTO (policy and
reference log-probs) and by the utility metric (label log-likelihoods, per-token NLL).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lasa_jax.models.blocks import lm_logits
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import forward


@jax.jit
def completion_logps(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Summed float32 log-probabilities of the completion tokens of each row.

    Args:
      logits: (B, T, V), any float dtype; logits[b, t] predict input_ids[b, t + 1].
      input_ids: (B, T) int.
      loss_mask: (B, T), 1 where token t is a completion token scored by the loss (position 0 is never scored:
        nothing predicts it).
    Returns (B,) float32: sum over t with loss_mask[b, t] = 1 of log softmax(logits[b, t - 1])[input_ids[b, t]].

    Memory: the logits are not sliced or shifted (the targets are); the float32 cast feeds the log-sum-exp
    reduction directly (fused by XLA), so at most one (B, T, V) float32 array exists (the softmax of the backward
    pass), besides the logits themselves.
    """
    batch = input_ids.shape[0]
    # Target of position t is token t + 1; the last position predicts nothing.
    next_ids = jnp.concatenate([input_ids[:, 1:], jnp.zeros((batch, 1), input_ids.dtype)], axis=1)
    next_mask = jnp.concatenate([loss_mask[:, 1:], jnp.zeros((batch, 1), loss_mask.dtype)], axis=1).astype(bool)
    target_logits = jnp.take_along_axis(logits, next_ids[..., None].astype(jnp.int32), axis=-1)[..., 0]
    log_normaliser = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    token_logps = target_logits.astype(jnp.float32) - log_normaliser
    return jnp.where(next_mask, token_logps, 0.0).sum(axis=-1)


# ----------------------------------------------------------------------------------------------- log-probs
def sequence_logps(params: Any, config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array,
                   loss_mask: jax.Array, *, mesh: Mesh | None = None, chunk_size: int = 128) -> jax.Array:
    """(B,) float32 summed log-probabilities of the loss_mask tokens of each row (`completion_logps` convention).

    input_ids, attention_mask, loss_mask: (B, T). With 0 < chunk_size < T the logits are computed `chunk_size`
    positions at a time (plus one overlapping position per chunk) under `jax.checkpoint`, so at most a
    (B, chunk_size + 1, V) float32 block exists in the forward and the backward pass.
    """
    hidden = forward(params, config, input_ids, attention_mask, mesh=mesh, compute_logits=False).final_hidden
    B, T = input_ids.shape
    if chunk_size <= 0 or chunk_size >= T:
        return completion_logps(lm_logits(params, config, hidden), input_ids, loss_mask)
    num_chunks = -(-(T - 1) // chunk_size)
    pad = num_chunks * chunk_size + 1 - T
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    input_ids = jnp.pad(input_ids, ((0, 0), (0, pad)))
    loss_mask = jnp.pad(loss_mask, ((0, 0), (0, pad)))
    head = {"embed": params["embed"]} if config.tie_word_embeddings else {"lm_head": params["lm_head"]}

    @jax.checkpoint
    def chunk_logps(head, hidden, input_ids, loss_mask, start):
        # positions [start, start + chunk_size] score the targets start + 1 .. start + chunk_size
        def window(x):
            return jax.lax.dynamic_slice_in_dim(x, start, chunk_size + 1, axis=1)

        return completion_logps(lm_logits(head, config, window(hidden)), window(input_ids), window(loss_mask))

    def body(total, start):
        return total + chunk_logps(head, hidden, input_ids, loss_mask, start), None

    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
    total, _ = jax.lax.scan(body, jnp.zeros((B,), jnp.float32), starts)
    return total



batch_logps = jax.jit(sequence_logps, static_argnames=("config", "mesh", "chunk_size"))
