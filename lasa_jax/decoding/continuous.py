"""Continuous-batching generation: a fixed pool of decode slots, refilled with the next prompt as a row finishes.

    eos, pad_id = resolve_special_ids(model.config, stop_ids, None)     # lasa_jax.decoding.stop_tokens
    results = generate_continuous(model, prompts, batch_size=16, max_new_tokens=256, eos=eos, pad_id=pad_id)
    # [(new token ids up to and including the first EOS, finished), ...] in input order

Layout. B slots (batch_size rounded up to the mesh's batch shards). The KV cache is per layer (`kv_cache.split`
layout), (B, W, K, hd): W, the attention window, is the smallest multiple of `WINDOW_ROUND` holding every active
row's next `STEPS_PER_CALL` writes (at most P + max_new_tokens rounded up), chosen by the host before each decode
block; the cache is cut or zero-padded to it (`_resize`, a copy of the cache only when W changes), so a step
reads W slots of each row, not P + max_new_tokens. P = the longest prompt rounded up to `PROMPT_ROUND` tokens
(`prompt_slots`; a caller generating in chunks passes one P for all of them). A slot's prompt sits unpadded at
cache slots [0, n) (cache slot = position), generated token i is written at slot n + i - 1 when it is fed back; a
query at position p attends to slots <= p of its own row (per-row write index), so what an earlier prompt left
beyond p is never seen. Positions are 0..n-1 for the prompt, then n, n+1, ... as Hugging Face `generate` gives
each row of a left-padded batch.

Programs (jit caches; the same for every call with the same B, P, max_new_tokens and greedy):
  `_prefill_rows`: k prompts (k = B or a power of 4 below it; the free slots are filled by a few such groups)
    padded to P, in chunks of `PREFILL_CHUNK` tokens (a `fori_loop` over the group's longest ceil(n / C)
    chunks), into fresh (k, P) cache rows; each row's last real token gives its first new token. One program per k.
  `_insert`: the group's rows written into their slots (cache slots [0, min(P, W)), in place on the donated pool).
  `_decode_block`: `STEPS_PER_CALL` decode steps of all B slots (`lax.scan` over steps, cache donated and written
    in place: no copy of the cache per step in the compiled HLO); one program per window W (at most
    (P + max_new_tokens) / 128). A finished row stops advancing and emits nothing until the host refills its slot.
The host loop admits prompts into free slots, longest first (rows of a prefill group have similar lengths, and the
window shrinks as the long prompts finish), runs decode blocks and collects each row's tokens; results come back
in input order. A slot that finishes inside a block idles for the rest of that block (at most STEPS_PER_CALL - 1
steps).

Decoding and stopping follow `lasa_jax.decoding.generate` (greedy = argmax, identical to HF
`generate(do_sample=False)`); sampling keys are fold_in(fold_in(PRNGKey(seed), 2 * call), step), prompt i's first token
fold_in(PRNGKey(seed), 2i + 1), so a seed reproduces a run for the same prompts, batch size and mesh (not the static
path's draws).

Decode layout (`decode_params`): the block loop is unrolled over weights split per layer once before the loop
(not a scanned body: scanning slices each layer's KV cache out of a stacked array and stacks it back, a copy of the
whole cache per step, and slices the stacked weights on every step). With a mesh, the weights are re-laid once for
decoding: replicated when they fit in `replicate_max_bytes` per device, else tensor-parallel (the rules table with
`embed` unsharded), so no decode step all-gathers FSDP shards.

Measured on a 2-core CPU, SmolLM2-135M float32, 16 slots. Before the window (cache at S = P + max_new_tokens for
every step): a decode step 45 ms at S=144, 50 ms at 320, 126-136 ms at 640; one prompt prefilled alone 77 ms (40
tokens), 140 ms (100), 0.53-0.64 s (250). With it (32 MultiJail prompts of 51..465 tokens, 64 new tokens, P=512,
load average ~2-4, second run of the same programs): a step 43 ms at W=128, 51 ms at 256, 66 ms at 512, 74 ms at
640 (the weights alone stream in ~40-50 ms: a 16-row step is bandwidth-bound); prefill of the 16 longest prompts
in one call 5-8 s; `_insert` 18 ms, `_resize` 50-80 ms; compiling ~2.5 s per window, ~4 s per prefill group size.
`bench/eval_generation.py` at that size on a quiet machine (load 1.8): continuous 30.6 s (13.9 s compiling: 4
windows, prefill k = 16), transformers 26.8 s, static 71.1 s, token_match 1.0 (ratio_vs_hf 0.87, vs static 2.32);
before the window and batched prefill, under load 4-5: continuous 46.8 s (12.1 s compiling), static 66.1 s (HF
305 s: torch slows ~10x under that load, so ratio_vs_hf is only meaningful on a quiet machine). Without compile,
prefill is 10 of the 17 s here (16 rows of up to 465 tokens per call, compute-bound). The static path prefills
the whole padded bucket instead (16 x 512 tokens for a 287-token prompt: ~25 s with 4 decode steps). Storing the
cache heads-first, (B, K, S, hd), made the measured step slower (187 vs 136 ms at S=640), so it stays (B, S, K, hd).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lasa_jax.decoding.sampling import select_tokens
from lasa_jax.infra.progress import progress_bar
from lasa_jax.models import kv_cache
from lasa_jax.models.blocks import lm_logits
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import Decoder, Params, cached_step, split_layers
from lasa_jax.sharding import LOGICAL_AXIS_RULES, batch_shards, constrain, logical_to_spec, to_host

PREFILL_CHUNK = 64
PROMPT_ROUND = 128
WINDOW_ROUND = 128
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
    return select_tokens(lm_logits(params, config, hidden), key, *sampling, greedy=greedy)


@functools.partial(jax.jit, static_argnames=("config", "mesh", "max_new_tokens", "greedy"))
def _prefill_rows(params: Params, prompts: jax.Array, lengths: jax.Array, keys: jax.Array, eos_ids: jax.Array,
                  sampling: tuple, *, config: ModelConfig, mesh: Mesh | None, max_new_tokens: int, greedy: bool):
    """k prompts (k, P) with `lengths` (k,) real tokens -> (their caches, k rows of P slots; first tokens; done)."""
    C = PREFILL_CHUNK
    k, P = prompts.shape
    rows = kv_cache.split(kv_cache.init_cache(config, k, P))
    last = lengths - 1

    def chunk(c, carry):
        rows, hidden = carry
        start = c * C
        ids = jax.lax.dynamic_slice_in_dim(prompts, start, C, axis=1)
        positions = jnp.broadcast_to(start + jnp.arange(C, dtype=jnp.int32), (k, C))
        final, rows = cached_step(params, config, ids, positions, rows, start, mesh=mesh)
        here = jnp.take_along_axis(final, jnp.clip(last - start, 0, C - 1)[:, None, None], axis=1)[:, 0]
        inside = ((last >= start) & (last < start + C))[:, None]
        return rows, jnp.where(inside, here, hidden)

    hidden = jnp.zeros((k, config.hidden_size), rows[0]["k"].dtype)
    rows, hidden = jax.lax.fori_loop(0, (jnp.max(lengths) + C - 1) // C, chunk, (rows, hidden))
    first = jax.vmap(lambda h, key: _next_token(params, config, h[None], key, sampling, greedy)[0])(hidden, keys)
    done = jnp.any(first[:, None] == eos_ids[None, :], axis=-1) | (max_new_tokens <= 1)
    return rows, first, done


@functools.partial(jax.jit, static_argnames=("mesh",), donate_argnums=(0, 1))
def _insert(cache, state: dict, rows, first: jax.Array, done: jax.Array, lengths: jax.Array, slots: jax.Array, *,
            mesh: Mesh | None):
    """Prefilled rows (k, P) written into pool slots `slots` (k,) at cache slots [0, min(P, W)), state set."""
    width = min(rows[0]["k"].shape[1], cache[0]["k"].shape[1])
    cache = tuple({n: a.at[slots, :width].set(r[n][:, :width].astype(a.dtype), mode="drop")
                   for n, a in layer.items()} for layer, r in zip(cache, rows))
    state = {"token": state["token"].at[slots].set(first, mode="drop"),
             "pos": state["pos"].at[slots].set(lengths, mode="drop"),
             "count": state["count"].at[slots].set(1, mode="drop"),
             "done": state["done"].at[slots].set(done, mode="drop")}
    return _constrain_cache(cache, mesh), state


@functools.partial(jax.jit, static_argnames=("mesh", "width"))
def _resize(cache, *, mesh: Mesh | None, width: int):
    """The pool's cache cut or zero-padded to `width` slots per row (the attention window)."""
    def one(a):
        if width <= a.shape[1]:
            return a[:, :width]
        return jnp.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0), (0, 0)))

    return _constrain_cache(tuple({n: one(a) for n, a in layer.items()} for layer in cache), mesh)


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


def _round(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def prompt_slots(token_ids: Sequence[np.ndarray]) -> int:
    """P for these prompts: the longest rounded up to `PROMPT_ROUND` (pass one P for a whole stage's chunks)."""
    return _round(max(np.asarray(t).size for t in token_ids), PROMPT_ROUND)


def _groups(n: int, limit: int) -> list[int]:
    """n split into row counts from (limit, powers of 4 below it), largest first: few prefill programs, no dummy
    rows (a 16-slot pool compiles at most k = 16, 4, 1)."""
    sizes = sorted({limit} | {4 ** i for i in range(8) if 4 ** i < limit}, reverse=True)
    out = []
    for size in sizes:
        while n >= size:
            out.append(size)
            n -= size
    return out


class _Pool:
    """Host view of the slots: which prompt each holds, its tokens so far, its next cache slot."""

    def __init__(self, B: int):
        self.prompt = [-1] * B
        self.produced: list[list[int]] = [[] for _ in range(B)]
        self.count = np.zeros(B, np.int64)
        self.pos = np.zeros(B, np.int64)

    def window(self, steps: int, cap: int) -> int:
        """Smallest multiple of WINDOW_ROUND holding every active row's next `steps` writes (at most cap)."""
        active = [self.pos[s] for s, p in enumerate(self.prompt) if p >= 0]
        return min(_round(int(max(active)) + steps, WINDOW_ROUND), cap)

    def collect(self, tokens, first, count, done, lengths, eos, results) -> int:
        """Take one decode block's outputs; finished rows go to `results`, their slots freed. -> rows finished."""
        finished = 0
        for slot, index in enumerate(self.prompt):
            if index < 0:
                continue
            if not self.produced[slot]:
                self.produced[slot].append(int(first[slot]))
            self.produced[slot].extend(int(t) for t in tokens[slot, :count[slot] - self.count[slot]])
            self.count[slot] = count[slot]
            self.pos[slot] = lengths[index] + count[slot] - 1
            if done[slot]:
                out = np.asarray(self.produced[slot], np.int32)
                results[index] = (out, bool(np.isin(out[-1], eos)))
                self.prompt[slot] = -1
                finished += 1
        return finished


def _prefill(params, cache, state, group: list[tuple[int, int]], arrays: list[np.ndarray], P: int, key, eos_ids,
             sampling, kwargs: dict):
    """Prefill the (slot, prompt index) pairs of `group` in one `_prefill_rows` call and insert them."""
    idx = [i for _, i in group]
    lengths = jnp.asarray([arrays[i].size for i in idx], jnp.int32)
    keys = jnp.stack([jax.random.fold_in(key, 2 * i + 1) for i in idx])
    rows, first, done = _prefill_rows(params, np.stack([_padded(arrays[i], P) for i in idx]), lengths, keys, eos_ids,
                                      sampling, **kwargs)
    return _insert(cache, state, rows, first, done, lengths, jnp.asarray([s for s, _ in group], jnp.int32),
                   mesh=kwargs["mesh"])


def generate_continuous(model: Decoder, token_ids: Sequence[np.ndarray], *, batch_size: int, max_new_tokens: int,
                        eos: np.ndarray, pad_id: int, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                        seed: int = 0, progress: bool = False, params: Params | None = None,
                        prompt_length: int | None = None) -> list[tuple[np.ndarray, bool]]:
    """Generate for many prompts with a pool of `batch_size` slots (module docstring). `eos`, `pad_id`: the padded
    eos array and pad id of `lasa_jax.decoding.stop_tokens.resolve_special_ids`; `params`: a `decode_params(model)`
    result to reuse across calls; `prompt_length`: P (`prompt_slots` of a superset of the prompts; default: of these
    prompts)."""
    config = model.config.replace(scan_layers=False)
    mesh = model.mesh
    arrays = [np.asarray(t, np.int32) for t in token_ids]
    lengths = np.asarray([a.size for a in arrays], np.int64)
    B = _round(batch_size, batch_shards(mesh))
    P = prompt_slots(arrays) if prompt_length is None else _round(int(prompt_length), PROMPT_ROUND)
    if lengths.max() > P:
        raise ValueError(f"a prompt has {lengths.max()} tokens, more than prompt_length {P}")
    cap = _round(P + int(max_new_tokens), WINDOW_ROUND)
    params = decode_params(model) if params is None else params
    greedy = temperature == 0.0
    sampling = (jnp.float32(max(temperature, 1e-6)), jnp.float32(top_p), jnp.int32(top_k))
    kwargs = dict(config=config, mesh=mesh, max_new_tokens=int(max_new_tokens), greedy=greedy)
    eos_ids, pad = jnp.asarray(eos), jnp.int32(pad_id)
    key = jax.random.PRNGKey(seed)
    cache, state = _init_pool(config, mesh, B, WINDOW_ROUND, pad)
    # committed like the later calls' outputs (jit caches committed and uncommitted inputs apart: two compiles)
    cache, state = jax.tree.map(lambda a: jax.device_put(a, a.sharding), (cache, state))
    pool = _Pool(B)
    results: list[tuple[np.ndarray, bool] | None] = [None] * len(arrays)
    queue = sorted(range(len(arrays)), key=lambda i: (lengths[i], -i))  # pop(): longest first
    bar = progress_bar(len(arrays), progress, "generate")
    start, calls = time.perf_counter(), 0
    while True:
        admitted = []
        for slot in range(B):
            if pool.prompt[slot] < 0 and queue:
                index = queue.pop()
                pool.prompt[slot], pool.produced[slot], pool.count[slot], pool.pos[slot] = index, [], 1, lengths[index]
                admitted.append((slot, index))
        if not admitted and all(p < 0 for p in pool.prompt):
            break
        width = pool.window(STEPS_PER_CALL, cap)
        if width != cache[0]["k"].shape[1]:
            cache = _resize(cache, mesh=mesh, width=width)
        for size in _groups(len(admitted), B):
            (cache, state), admitted = _prefill(params, cache, state, admitted[:size], arrays, P, key, eos_ids,
                                                sampling, kwargs), admitted[size:]
        calls += 1
        cache, state, tokens, first = _decode_block(params, cache, state, jax.random.fold_in(key, 2 * calls), eos_ids,
                                                    pad, sampling, **kwargs)
        finished = pool.collect(*(to_host(a) for a in (tokens, first, state["count"], state["done"])), lengths, eos,
                                results)
        if bar is not None and finished:
            bar.update(finished)
            bar.set_postfix(prompts_per_s=f"{bar.n / (time.perf_counter() - start):.2f}")
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]
