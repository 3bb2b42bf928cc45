"""Autoregressive generation with a KV cache: one prefill, then a jit-compiled `lax.while_loop` of decode steps.

`generate` decodes one static batch (below). `generate_batched` decodes many prompts, by default with continuous
batching (`lasa_jax.decoding.continuous`: a pool of slots refilled as rows finish), or with static length-bucketed
batches.

    tokens = generate(model, input_ids, attention_mask, max_new_tokens=64, eos_token_id=[128001, 128009],
                      pad_token_id=128004)   # (B, 64) int32 numpy: the new tokens only

Layout. Prompts are left-padded (rows of any padding are re-packed to the left on the host) and the prompt length
is rounded up to a bucket (`lasa_jax.models.capture.bucket_length`: powers of two from 16), so a program is compiled
once per (batch size, bucket length, max_new_tokens, greedy or sampling). The KV cache has T_bucket +
max_new_tokens slots: slots [0, T) hold the prompt (padding slots masked out), generated token i is written at slot
T + i - 1 when it is fed back. Positions follow each row's real tokens: cumsum(mask) - 1 in the prompt, then the
row's last prompt position + 1, + 2, ... for generated tokens (as Hugging Face `generate` derives position ids from
the attention mask for left-padded batches).

Stopping. A row finishes at its first token in `eos_token_id` (an int or a list: Llama-3 instruct models end turns
with several). The EOS token itself is kept in the output; every later slot holds `pad_token_id`. The loop exits
as soon as every row has finished (or after max_new_tokens).

Decoding: each step's token comes from `lasa_jax.decoding.sampling.select_tokens` (greedy when temperature == 0,
identical to HF `generate(do_sample=False)`; else temperature, top-k, top-p and one draw) with the key
`fold_in(PRNGKey(seed), step)` (batch rows draw independently). A seed reproduces a run for the same batch (same
rows, same order, same bucket). Stop ids and the pad id: `lasa_jax.decoding.stop_tokens.resolve_special_ids`.

Sharding: with `model.mesh`, the batch (and the KV cache's batch axis) is split over `data` x `fsdp`; the batch is
padded with copies of its first row to a multiple of that product.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lasa_jax.decoding.continuous import generate_continuous
from lasa_jax.decoding.sampling import select_tokens
from lasa_jax.decoding.stop_tokens import eos_array, resolve_special_ids
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.progress import progress_bar
from lasa_jax.models import kv_cache
from lasa_jax.models.blocks import lm_logits
from lasa_jax.models.capture import bucket_length, bucketed_batches
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import Decoder, Params, forward, split_layers
from lasa_jax.models.kv_cache import init_cache
from lasa_jax.sharding import batch_shards, constrain, put_batch, to_host

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- jitted core
_CACHE_AXES = (None, "batch", "length", "act_kv_heads", None)


def _constrain_cache(cache: dict, mesh: Mesh | None) -> dict:
    return {name: constrain(value, mesh, _CACHE_AXES) for name, value in cache.items()}


def _constrain_layer_caches(caches: tuple, mesh: Mesh | None) -> tuple:
    """Per-layer caches (`kv_cache.split` layout, what the decode loop carries) constrained like the stacked one."""
    return tuple({name: constrain(value, mesh, _CACHE_AXES[1:]) for name, value in layer.items()} for layer in caches)


@functools.partial(jax.jit, static_argnames=("config", "mesh", "max_new_tokens", "greedy"))
def _generate_core(params: Params, config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array,
                   key: jax.Array, eos_ids: jax.Array, pad_id: jax.Array, temperature: jax.Array, top_p: jax.Array,
                   top_k: jax.Array, *, mesh: Mesh | None, max_new_tokens: int, greedy: bool) -> jax.Array:
    """Left-padded (B, T) prompts -> (B, max_new_tokens) int32 new tokens, pad after each row's first EOS."""
    B, T = input_ids.shape
    S = T + max_new_tokens
    mask = attention_mask.astype(jnp.int32)
    # generated slots are always valid keys; causality (slot <= cache_index + t) hides the ones not written yet
    kv_mask = jnp.concatenate([mask, jnp.ones((B, max_new_tokens), jnp.int32)], axis=1)
    last_position = jnp.sum(mask, axis=1) - 1
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    cache = _constrain_cache(init_cache(config, B, S), mesh)

    def next_token(hidden_last, step, finished):
        logits = lm_logits(params, config, hidden_last)
        token = select_tokens(logits, jax.random.fold_in(key, step), temperature, top_p, top_k, greedy=greedy)
        token = jnp.where(finished, pad_id, token)
        return token, finished | jnp.any(token[:, None] == eos_ids[None, :], axis=-1)

    prefill = forward(params, config, input_ids, mask, positions, mesh=mesh, compute_logits=False, cache=cache,
                      cache_index=0, kv_mask=kv_mask)
    first, finished = next_token(prefill.final_hidden[:, -1], 0, jnp.zeros((B,), bool))
    out = jnp.full((B, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
    out = constrain(out, mesh, ("batch", None))

    def cond(state):
        step, _, _, finished, _ = state
        return (step < max_new_tokens) & ~jnp.all(finished)

    # the decode step runs the blocks unrolled over weights split once here: slicing the stacked weights inside the
    # loop would copy every layer's weights on every step
    decode_params, decode_config = split_layers(params), config.replace(scan_layers=False)

    def body(state):
        step, cache, token, finished, out = state
        result = forward(decode_params, decode_config, token[:, None], jnp.ones((B, 1), jnp.int32),
                         (last_position + step)[:, None], mesh=mesh, compute_logits=False, cache=cache,
                         cache_index=T + step - 1, kv_mask=kv_mask)
        token, finished = next_token(result.final_hidden[:, 0], step, finished)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, _constrain_layer_caches(result.cache, mesh), token, finished, out

    # the loop carries the cache split per layer once (the unrolled blocks write each layer's array in place; a
    # stacked cache would be split and re-stacked, i.e. copied whole, on every step)
    state = (jnp.int32(1), _constrain_layer_caches(kv_cache.split(prefill.cache), mesh), first, finished, out)
    return jax.lax.while_loop(cond, body, state)[-1]


# ----------------------------------------------------------------------------------------------- host wrappers
def _check_sampling(max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not temperature >= 0.0:
        raise InputError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
    if not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise InputError(f"top_k must be a non-negative int (0 = off), got {top_k!r}")


def _left_pack(input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int, length: int,
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Real tokens of each row moved to the right end of a (batch_size, length) array; extra rows copy row 0."""
    ids = np.full((batch_size, length), pad_id, np.int32)
    mask = np.zeros((batch_size, length), np.int32)
    B = input_ids.shape[0]
    for r in range(batch_size):
        src = r if r < B else 0
        real = input_ids[src][attention_mask[src].astype(bool)]
        ids[r, length - real.size:] = real
        mask[r, length - real.size:] = 1
    return ids, mask


def _run_core(model: Decoder, ids: np.ndarray, mask: np.ndarray, key: jax.Array, eos: np.ndarray, pad_id: int, *,
              max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> np.ndarray:
    """Place a left-packed, bucketed batch on the mesh and run `_generate_core`; host (B, max_new_tokens)."""
    longest = int(mask.sum(axis=1).max()) + max_new_tokens
    if longest > model.config.max_position_embeddings:
        log.warning("prompt + max_new_tokens reaches %d positions, beyond the model's max_position_embeddings %d",
                    longest, model.config.max_position_embeddings)
    mesh = model.mesh
    ids, mask = put_batch(mesh, ids, mask)
    tokens = _generate_core(model.params(), model.config, ids, mask, key, jnp.asarray(eos), jnp.int32(pad_id),
                            jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.int32(top_k), mesh=mesh,
                            max_new_tokens=int(max_new_tokens), greedy=temperature == 0.0)
    return to_host(tokens)


def generate(model: Decoder, input_ids, attention_mask=None, *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, seed: int = 0) -> np.ndarray:
    """Generate up to `max_new_tokens` tokens after each prompt.

    Args:
      model: the decoder; with `model.mesh` the batch is sharded over data x fsdp.
      input_ids, attention_mask: (B, T) int prompts, 1 = real token. Any padding side (rows are re-packed to left
        padding); every row needs at least one real token. attention_mask None = all real.
      max_new_tokens: number of decode steps (static: one compiled program per value).
      temperature, top_p, top_k: decoding (module docstring); temperature 0 = greedy.
      eos_token_id: int or list of ints ending a row; None = `model.config.eos_token_ids` ([] = never stop early).
      pad_token_id: fills the slots after a row's EOS; None = `model.config.pad_token_id`, else the first EOS id.
      seed: sampling seed (ignored when greedy).
    Returns: (B, max_new_tokens) int32 numpy of new tokens only; a row's first EOS is kept, later slots are pad.
    """
    _check_sampling(max_new_tokens, temperature, top_p, top_k)
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2 or input_ids.shape[0] == 0:
        raise InputError(f"input_ids must have shape (B, T) with B >= 1, got {input_ids.shape}")
    attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
    if attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}")
    lengths = attention_mask.astype(bool).sum(axis=1)
    if (lengths == 0).any():
        raise InputError(f"row {int(np.argmin(lengths))} of attention_mask has no real token")
    eos, pad_id = resolve_special_ids(model.config, eos_token_id, pad_token_id)
    B = input_ids.shape[0]
    shards = batch_shards(model.mesh)
    ids, mask = _left_pack(input_ids, attention_mask, pad_id, bucket_length(int(lengths.max())),
                           -(-B // shards) * shards)
    tokens = _run_core(model, ids, mask, jax.random.PRNGKey(seed), eos, pad_id, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, top_k=top_k)
    return tokens[:B]


def trim_after_eos(tokens: np.ndarray, eos_token_id: int | Sequence[int] | None) -> tuple[np.ndarray, bool]:
    """One row of `generate` output cut after its first EOS (kept) -> (ids, whether an EOS was generated)."""
    return _trim(tokens, eos_array(eos_token_id))


def _trim(tokens: np.ndarray, eos: np.ndarray) -> tuple[np.ndarray, bool]:
    hits = np.flatnonzero(np.isin(tokens, eos))
    if hits.size:
        return tokens[:hits[0] + 1], True
    return tokens, False


def generate_batched(model: Decoder, token_ids: Sequence[Sequence[int] | np.ndarray], *, batch_size: int = 8,
                     max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                     eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
                     seed: int = 0, progress: bool = False, scheduler: str = "continuous",
                     decode_layout: Params | None = None,
                     prompt_length: int | None = None) -> list[tuple[np.ndarray, bool]]:
    """Generate for many prompts of different lengths.

    Args:
      token_ids: per-prompt token ids (already rendered, e.g. `lasa_jax.models.chat.render_prompt(...).input_ids`).
      batch_size: rows decoded together (rounded up to a multiple of the mesh's batch shards).
      scheduler: "continuous" (default; `lasa_jax.decoding.continuous`: a pool of batch_size slots, a finished
        row's slot is refilled with the next prompt) or "static" (sorted by length, bucketed, fixed-size batches
        that run until their longest row ends; the last batch of a bucket is filled with copies of a row, so every
        batch of a bucket shares one compiled program; batch j samples with key fold_in(PRNGKey(seed), j)).
        Greedy outputs are the same under both.
      decode_layout, prompt_length (continuous only): `continuous.decode_params(model)` and
        `continuous.prompt_slots(all prompts)` computed once by a caller that generates in several calls, so the
        weights are laid out once and every call runs the same compiled programs.
      other arguments: as `generate`.
    Returns, in input order, (new token ids up to and including the first EOS, finished) per prompt, where
    finished says whether the row stopped at an EOS (False: cut at max_new_tokens).
    """
    _check_sampling(max_new_tokens, temperature, top_p, top_k)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if scheduler not in ("continuous", "static"):
        raise InputError(f"scheduler must be 'continuous' or 'static', got {scheduler!r}")
    eos, pad_id = resolve_special_ids(model.config, eos_token_id, pad_token_id)
    arrays = [np.asarray(t, np.int32) for t in token_ids]
    if any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise InputError("every prompt needs at least one token (a 1-D id sequence)")
    if scheduler == "continuous":
        if not arrays:
            return []
        return generate_continuous(model, arrays, batch_size=batch_size, max_new_tokens=max_new_tokens, eos=eos,
                                   pad_id=pad_id, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                   progress=progress, params=decode_layout, prompt_length=prompt_length)
    shards = batch_shards(model.mesh)
    batch_size = -(-batch_size // shards) * shards
    results: list[tuple[np.ndarray, bool] | None] = [None] * len(arrays)
    bar = progress_bar(len(arrays), progress, "generate")
    start, done = time.perf_counter(), 0
    key = jax.random.PRNGKey(seed)
    for j, batch in enumerate(bucketed_batches(arrays, batch_size, pad_id=pad_id, padding_side="left")):
        tokens = _run_core(model, batch.input_ids, batch.attention_mask, jax.random.fold_in(key, j), eos, pad_id,
                           max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
        for row, index in enumerate(batch.rows):
            if index >= 0:
                results[index] = _trim(tokens[row], eos)
        real = int((batch.rows >= 0).sum())
        done += real
        if bar is not None:
            bar.update(real)
            bar.set_postfix(prompts_per_s=f"{done / (time.perf_counter() - start):.2f}")
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]
