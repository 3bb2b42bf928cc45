"""Utility scoring kernels: label log-likelihoods after a prompt (one prefill, a KV cache shared by the label rows)
and per-sentence token NLL; the computation is described in `lasa_jax.evaluate.utility`."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lasa_jax.infra.errors import InputError
from lasa_jax.models.blocks import lm_logits
from lasa_jax.models.capture import bucketed_batches, default_batch_size
from lasa_jax.models.decoder import forward
from lasa_jax.models.kv_cache import init_cache
from lasa_jax.sharding import put_batch, to_host

NORMALIZATIONS = ("token", "none")


def _label_logps_step(params, config, mesh, context_ids, context_mask, label_ids, label_mask):
    """Summed log p(label c | context b): left-padded contexts (B, T), right-padded labels (C, Tl) -> (B, C)."""
    B, T = context_ids.shape
    C, Tl = label_ids.shape
    mask = context_mask.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    kv_mask = jnp.concatenate([mask, jnp.zeros((B, Tl), jnp.int32)], axis=1)  # label slots: written later
    prefill = forward(params, config, context_ids, mask, positions, mesh=mesh, compute_logits=False,
                      cache=init_cache(config, B, T + Tl), cache_index=0, kv_mask=kv_mask)
    first = jax.nn.log_softmax(lm_logits(params, config, prefill.final_hidden[:, -1]), axis=-1)  # (B, V)
    first_logps = first[:, label_ids[:, 0]]  # (B, C)
    # row b * C + c: context b continued by label c
    cache = jax.tree.map(lambda a: jnp.repeat(a, C, axis=1), prefill.cache)
    rows_ids, rows_mask = jnp.tile(label_ids, (B, 1)), jnp.tile(label_mask, (B, 1)).astype(jnp.int32)
    rows_kv = jnp.concatenate([jnp.repeat(mask, C, axis=0), rows_mask], axis=1)
    rows_positions = jnp.repeat(jnp.sum(mask, axis=1), C)[:, None] + jnp.arange(Tl)[None, :]
    out = forward(params, config, rows_ids, rows_mask, rows_positions, mesh=mesh, compute_logits=False,
                  cache=cache, cache_index=T, kv_mask=rows_kv)
    logps = jax.nn.log_softmax(lm_logits(params, config, out.final_hidden[:, :-1]), axis=-1)  # predicts 1..Tl-1
    targets = jnp.take_along_axis(logps, rows_ids[:, 1:, None], axis=-1)[..., 0]
    rest = jnp.sum(jnp.where(rows_mask[:, 1:].astype(bool), targets, 0.0), axis=-1).reshape(B, C)
    return first_logps + rest


label_logps_step = jax.jit(_label_logps_step, static_argnames=("config", "mesh"))


def label_logprobs(model, context_ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                   batch_size: int | None = None, pad_id: int | None = None) -> np.ndarray:
    """(N, C) float32: log p(labels[c] | context_ids[n]) summed over the label's tokens (module docstring).

    Contexts are left-padded in length buckets (one compile per bucket); labels (each >= 1 token) share one
    right-padded (C, T_label) array. Rows in the order of `context_ids`.
    """
    if not labels or any(len(label) == 0 for label in labels):
        raise InputError("label_logprobs: every label needs at least one token")
    config, mesh = model.config, model.mesh
    pad_id = pad_id if pad_id is not None else (config.pad_token_id if config.pad_token_id is not None else 0)
    label_len = max(len(label) for label in labels)
    label_ids = np.full((len(labels), label_len), pad_id, np.int32)
    label_mask = np.zeros((len(labels), label_len), np.int32)
    for c, label in enumerate(labels):
        label_ids[c, :len(label)], label_mask[c, :len(label)] = label, 1
    result = np.zeros((len(context_ids), len(labels)), np.float32)
    params = model.params()
    for batch in bucketed_batches(context_ids, default_batch_size(model, batch_size), pad_id=pad_id,
                                  padding_side="left"):
        ids, mask = put_batch(mesh, batch.input_ids, batch.attention_mask)
        scores = to_host(label_logps_step(params, config, mesh, ids, mask, jnp.asarray(label_ids),
                                          jnp.asarray(label_mask)))
        real = batch.rows >= 0
        result[batch.rows[real]] = scores[real]
    return result


def predict_labels(logps: np.ndarray, label_lengths: Sequence[int], normalization: str = "none") -> np.ndarray:
    """(N, C) summed label log-probs -> (N,) argmax label index ("token": divided by each label's token count;
    "none": the sums). Ties go to the lowest index."""
    if normalization not in NORMALIZATIONS:
        raise InputError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    scores = np.asarray(logps, np.float64)
    if normalization == "token":
        scores = scores / np.asarray(label_lengths, np.float64)[None, :]
    return np.argmax(scores, axis=1)


def sentence_nll(model, token_ids: Sequence[np.ndarray], *, batch_size: int | None = None,
                 pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(summed NLL over tokens 1.., number of those tokens) per sentence, float64 / int64, in input order.
    Sentences need >= 2 tokens."""
    from lasa_jax.models.logprobs import batch_logps

    short = [i for i, ids in enumerate(token_ids) if len(ids) < 2]
    if short:
        raise InputError(f"sentence_nll: sentences {short[:5]} have fewer than 2 tokens (nothing to score)")
    config, mesh = model.config, model.mesh
    pad_id = pad_id if pad_id is not None else (config.pad_token_id if config.pad_token_id is not None else 0)
    nll = np.zeros(len(token_ids), np.float64)
    params = model.params()
    for batch in bucketed_batches(token_ids, default_batch_size(model, batch_size), pad_id=pad_id):
        ids, mask = put_batch(mesh, batch.input_ids, batch.attention_mask)
        logps = to_host(batch_logps(params, config, ids, mask, mask, mesh=mesh, chunk_size=128))
        real = batch.rows >= 0
        nll[batch.rows[real]] = -logps[real]
    return nll, np.asarray([len(ids) - 1 for ids in token_ids], np.int64)
