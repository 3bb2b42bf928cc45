"""Continuous-batching generation: a fixed pool of decode slots, refilled with the next prompt as a row finishes.

    results = generate_continuous(model, prompts, batch_size=16, max_new_tokens=256, eos_token_id=..., pad_token_id=...)
    # [(new token ids up to and including the first EOS, finished), ...] in input order

Layout. B slots (batch_size rounded up to the mesh's batch shards). The KV cache is per layer (`kv_cache.split`
layout), (B, S, K, hd) with S = P + max_new_tokens, P = the longest prompt rounded up to `PROMPT_ROUND` tokens.
A slot's prompt sits unpadded at cache slots [0, n) (cache slot = position), generated token i is written at slot
n + i - 1 when it is fed back; a query at position p attends to slots <= p of its own row (per-row write index), so
what an earlier prompt left beyond p is never seen. Positions are 0..n-1 for the prompt, then n, n+1, ... as
Hugging Face `generate` gives each row of a left-padded batch.

Programs, compiled once per (B, S, max_new_tokens, greedy), whatever the prompts:
  `_prefill_slot`: one prompt (padded to P) in chunks of `PREFILL_CHUNK` tokens (a `fori_loop` over its
    ceil(n / C) chunks: padding costs at most C - 1 tokens, not a power-of-two bucket), written into the rows of its
    slot; the last chunk's last real token gives the first new token.
  `_decode_block`: `STEPS_PER_CALL` decode steps of all B slots (`lax.scan` over steps); a finished row stops
    advancing and emits nothing until the host refills its slot.
The host loop admits prompts into free slots (input order), runs decode blocks and collects each row's tokens.
A slot that finishes inside a block idles for the rest of that block (at most STEPS_PER_CALL - 1 steps).

Decoding and stopping follow `lasa_jax.generate` (greedy = argmax, identical to HF `generate(do_sample=False)`);
sampling keys are fold_in(fold_in(PRNGKey(seed), call), step), so a seed reproduces a run for the same prompts,
batch size and mesh (not the static path's draws).

Decode layout (`decode_params`): the block loop is unrolled over weights split per layer once before the loop
(not a scanned body: scanning slices each layer's KV cache out of a stacked array and stacks it back, a copy of the
whole cache per step, and slices the stacked weights on every step). With a mesh, the weights are re-laid once for
decoding: replicated when they fit in `replicate_max_bytes` per device, else tensor-parallel (the rules table with
`embed` unsharded), so no decode step all-gathers FSDP shards.

Measured on a 2-core CPU, SmolLM2-135M float32, 16 slots: a decode step 45 ms at S=144 cache slots, 50 ms at 320,
126-136 ms at 640 (attention reads every slot of every row: per-step cost grows with S, not with the real
lengths); prefill of one prompt 77 ms (40 tokens), 140 ms (100), 0.53-0.64 s (250). The static path prefills the
whole padded bucket instead (16 x 512 tokens for a 287-token prompt: ~25 s with 4 decode steps). Storing the cache
heads-first, (B, K, S, hd), made the measured step slower (187 vs 136 ms at S=640), so it stays (B, S, K, hd).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lasa_jax.config import ModelConfig
from lasa_jax.models import kv_cache
from lasa_jax.models.decoder import Decoder, Params, cached_step, lm_logits, split_layers
from lasa_jax.progress import progress_bar
from lasa_jax.sharding import LOGICAL_AXIS_RULES, batch_shards, constrain, logical_to_spec, to_host

PREFILL_CHUNK = 64
PROMPT_ROUND = 128
STEPS_PER_CALL = 8
REPLICATE_MAX_BYTES = 4 * 2**30
_CACHE_AXES = ("batch", "length", "act_kv_heads", None)


# ----------------------------------------------------------------------------------------------- decode layout
def decode_params(model: Decoder, replicate_max_bytes: int | None = None) -> Params:
    """The model's parameters laid out for decoding (module docstring), block parameters split per layer."""
    params, mesh = model.params(), model.mesh
    if mesh is not None:
        limit = REPLICATE_MAX_BYTES if replicate_max_bytes is None else replicate_max_bytes
        total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params))
        if total <= limit:
            shardings = jax.tree.map(lambda a: NamedSharding(mesh, PartitionSpec()), params)
        else:
            rules = {**LOGICAL_AXIS_RULES, "embed": None}
            axes = _param_axes(model)
            shardings = jax.tree.map(lambda a, names: NamedSharding(mesh, logical_to_spec(names, a.shape, mesh, rules)),
                                     params, axes, is_leaf=lambda x: isinstance(x, jax.Array))
        params = jax.device_put(params, shardings)
    return split_layers(params)


def _param_axes(model: Decoder) -> Params:
    from flax import nnx, traverse_util

    flat = {path: tuple(var.get_metadata()["axes"]) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    return traverse_util.unflatten_dict(flat)


# ----------------------------------------------------------------------------------------------- jitted programs
def _constrain_cache(cache, mesh: Mesh | None):
    return tuple({name: constrain(a, mesh, _CACHE_AXES) for name, a in layer.items()} for layer in cache)


@functools.partial(jax.jit, static_argnames=("config", "mesh", "batch_size", "num_slots"))
def _init_pool(config: ModelConfig, mesh: Mesh | None, batch_size: int, num_slots: int, pad_id: jax.Array):
    cache = _constrain_cache(kv_cache.split(kv_cache.init_cache(config, batch_size, num_slots)), mesh)
    zeros = jnp.zeros((batch_size,), jnp.int32)
    return cache, {"token": zeros + pad_id, "pos": zeros, "count": zeros, "done": jnp.ones((batch_size,), bool)}


def _next_token(params, config, hidden, key, sampling, greedy):
    from lasa_jax.generate import select_tokens

    return select_tokens(lm_logits(params, config, hidden), key, *sampling, greedy=greedy)


@functools.partial(jax.jit, static_argnames=("config", "mesh", "max_new_tokens", "greedy"), donate_argnums=(1, 2))
def _prefill_slot(params: Params, cache, state: dict, prompt: jax.Array, length: jax.Array, slot: jax.Array,
                  key: jax.Array, eos_ids: jax.Array, sampling: tuple, *, config: ModelConfig, mesh: Mesh | None,
                  max_new_tokens: int, greedy: bool):
    """Prompt (P,) with `length` real tokens into slot `slot`: its cache rows and its decode state."""
    C = PREFILL_CHUNK
    row = tuple({n: jax.lax.dynamic_slice_in_dim(a, slot, 1, axis=0) for n, a in layer.items()} for layer in cache)
    last = length - 1

    def chunk(c, carry):
        row, hidden = carry
        start = c * C
        ids = jax.lax.dynamic_slice_in_dim(prompt, start, C)[None, :]
        positions = (start + jnp.arange(C, dtype=jnp.int32))[None, :]
        final, row = cached_step(params, config, ids, positions, row, start, mesh=mesh)
        here = jax.lax.dynamic_index_in_dim(final[0], jnp.clip(last - start, 0, C - 1), keepdims=False)
        return row, jnp.where((last >= start) & (last < start + C), here, hidden)

    hidden = jnp.zeros((config.hidden_size,), cache[0]["k"].dtype)
    row, hidden = jax.lax.fori_loop(0, (length + C - 1) // C, chunk, (row, hidden))
    cache = tuple({n: jax.lax.dynamic_update_slice_in_dim(a, r[n], slot, axis=0) for n, a in layer.items()}
                  for layer, r in zip(cache, row))
    first = _next_token(params, config, hidden[None], key, sampling, greedy)[0]
    done = jnp.any(first == eos_ids) | (max_new_tokens <= 1)
    state = {"token": state["token"].at[slot].set(first), "pos": state["pos"].at[slot].set(length),
             "count": state["count"].at[slot].set(1), "done": state["done"].at[slot].set(done)}
    return _constrain_cache(cache, mesh), state


@functools.partial(jax.jit, static_argnames=("config", "mesh", "max_new_tokens", "greedy"), donate_argnums=(1, 2))
def _decode_block(params: Params, cache, state: dict, key: jax.Array, eos_ids: jax.Array, pad_id: jax.Array,
                  sampling: tuple, *, config: ModelConfig, mesh: Mesh | None, max_new_tokens: int, greedy: bool):
    """STEPS_PER_CALL decode steps of every slot -> (cache, state, tokens (B, STEPS_PER_CALL), start token (B,))."""
    start_token = state["token"]

    def step(carry, j):
        cache, s = carry
        final, cache = cached_step(params, config, s["token"][:, None], s["pos"][:, None], cache, s["pos"],
                                   mesh=mesh)
        token = _next_token(params, config, final[:, 0], jax.random.fold_in(key, j), sampling, greedy)
        live = ~s["done"]
        count = s["count"] + live
        done = s["done"] | (live & (jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
                                    | (count >= max_new_tokens)))
        s = {"token": jnp.where(live, token, s["token"]), "pos": s["pos"] + live, "count": count, "done": done}
        return (_constrain_cache(cache, mesh), s), jnp.where(live, token, pad_id)

    (cache, state), tokens = jax.lax.scan(step, (cache, state), jnp.arange(STEPS_PER_CALL))
    return cache, state, tokens.T, start_token


# ----------------------------------------------------------------------------------------------- host loop
def _padded(prompt: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, np.int32)
    out[:prompt.size] = prompt
    return out


def generate_continuous(model: Decoder, token_ids: Sequence[np.ndarray], *, batch_size: int, max_new_tokens: int,
                        eos: np.ndarray, pad_id: int, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                        seed: int = 0, progress: bool = False, params: Params | None = None
                        ) -> list[tuple[np.ndarray, bool]]:
    """Generate for many prompts with a pool of `batch_size` slots (module docstring). `eos`: padded eos array
    (`generate.resolve_special_ids`); `params`: a `decode_params(model)` result to reuse across calls."""
    config = model.config.replace(scan_layers=False)
    mesh = model.mesh
    arrays = [np.asarray(t, np.int32) for t in token_ids]
    shards = batch_shards(mesh)
    B = -(-batch_size // shards) * shards
    P = -(-max(a.size for a in arrays) // PROMPT_ROUND) * PROMPT_ROUND
    params = decode_params(model) if params is None else params
    greedy = temperature == 0.0
    sampling = (jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.int32(top_k))
    kwargs = dict(config=config, mesh=mesh, max_new_tokens=int(max_new_tokens), greedy=greedy)
    eos_ids, pad = jnp.asarray(eos), jnp.int32(pad_id)
    key = jax.random.PRNGKey(seed)
    cache, state = _init_pool(config, mesh, B, P + int(max_new_tokens), pad)
    # committed like the later calls' outputs (jit caches committed and uncommitted inputs apart: two compiles)
    cache, state = jax.tree.map(lambda a: jax.device_put(a, a.sharding), (cache, state))
    slot_prompt = [-1] * B
    produced: list[list[int]] = [[] for _ in range(B)]
    results: list[tuple[np.ndarray, bool] | None] = [None] * len(arrays)
    queue = list(range(len(arrays)))[::-1]
    bar = progress_bar(len(arrays), progress, "generate")
    start, calls = time.perf_counter(), 0
    done_host, count_host = np.ones(B, bool), np.zeros(B, np.int64)
    while True:
        for slot in range(B):
            if done_host[slot] and slot_prompt[slot] < 0 and queue:
                index = queue.pop()
                cache, state = _prefill_slot(params, cache, state, _padded(arrays[index], P),
                                             jnp.int32(arrays[index].size),
                                             jnp.int32(slot), jax.random.fold_in(key, 2 * index + 1), eos_ids,
                                             sampling, **kwargs)
                slot_prompt[slot], produced[slot], done_host[slot], count_host[slot] = index, [], False, 1
        if all(p < 0 for p in slot_prompt):
            break
        calls += 1
        cache, state, tokens, first = _decode_block(params, cache, state, jax.random.fold_in(key, 2 * calls), eos_ids,
                                                    pad, sampling, **kwargs)
        tokens, first, count, done = (to_host(a) for a in (tokens, first, state["count"], state["done"]))
        for slot, index in enumerate(slot_prompt):
            if index < 0:
                continue
            if not produced[slot]:
                produced[slot].append(int(first[slot]))
            produced[slot].extend(int(t) for t in tokens[slot, :count[slot] - count_host[slot]])
            count_host[slot] = count[slot]
            if done[slot]:
                out = np.asarray(produced[slot], np.int32)
                results[index] = (out, bool(np.isin(out[-1], eos)))
                slot_prompt[slot], done_host[slot] = -1, True
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(prompts_per_s=f"{bar.n / (time.perf_counter() - start):.2f}")
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]
