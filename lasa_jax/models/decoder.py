"""One Flax NNX decoder for Llama-3.x, Qwen2.5 and Qwen3 (differences are `ModelConfig` flags).

Parameters live in an `nnx.Module` (`Decoder`) as `nnx.Param`s whose `axes` metadata names their logical axes
(`lasa_jax.sharding.LOGICAL_AXIS_RULES` maps them to the mesh). The L blocks are stacked: every block parameter has
a leading `layers` axis of size L and the forward pass runs them with `lax.scan` (or an unrolled loop when
`config.scan_layers` is False), with the remat policy of the config. The numerics live in the pure function
pure functions over a pure dict of arrays (`Decoder.params()`), so training code can differentiate and jit them
directly; `Decoder.__call__` is a thin jitted wrapper. One layer loop (`run_blocks`, over `blocks.block`) serves the
entry points: `forward_logits` (training / scoring), `capture_hidden_states` (all residual indices, optionally
pooled), `forward_trunk` (blocks 1..k only) and `cached_step` (prefill or decode step with a KV cache, owned by
`kv_cache` and written inside the attention part of the block). `forward(...)` dispatches to them (the one
signature older callers use).

Residual-index convention (used by every LASA stage; identical to Hugging Face `output_hidden_states`):
  `hidden_states[k]` for k = 0..L, with L = number of blocks:
    k = 0        token embeddings (the input of block 1),
    1 <= k < L   residual stream after block k (1-based: the output of block k),
    k = L        output of block L AFTER the final RMSNorm (HF applies the norm on this entry).
  The raw (pre-norm) output of block L is returned separately as `last_block_output`.
  Running only the first n < L blocks (`num_blocks=n`) returns entries 0..n, all raw (entry n is block n's output).

Shapes: B batch, T query length, S key length (T, or the KV-cache length), D hidden size, H query heads,
K key/value heads, hd head_dim, F MLP width, V vocabulary. Numerics: parameters stored in `param_dtype`, matmuls
in `compute_dtype`; RMSNorm statistics, RoPE angles, attention softmax and logits in float32.

Agreement with Hugging Face PyTorch (tests/models/test_models.py, tiny random models of the three families, left- and
right-padded batches): float32 logits and every hidden state within 1e-4 (measured ~3e-6). bfloat16 (parameters
and compute): logit error against the float32 reference at most 2x the error of HF's own bfloat16 model and below
4% of the largest logit (measured 0.065-0.11 on logits of magnitude ~4-5, the same as HF bfloat16's 0.066-0.10).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct, traverse_util
from jax.sharding import Mesh

from lasa_jax.infra.errors import InputError
from lasa_jax.models import kv_cache
from lasa_jax.models.blocks import (
    ACT,
    DecoderBlocks,
    block,
    embed_tokens,
    jnp_dtype,
    lm_logits,
    positions_from_mask,
    remat,
    rms_norm,
    rope_cos_sin,
)
from lasa_jax.models.config import ModelConfig
from lasa_jax.sharding import batch_shards, constrain, put_batch

Params = dict[str, Any]

@struct.dataclass
class DecoderOutput:
    """Result of `forward`. Arrays not requested are None.

    logits: (B, T, V) float32 (only when all L blocks ran and logits were requested).
    hidden_states: entries 0..n of the residual-index convention, stacked on axis 0: (n+1, B, T, D), or the
      stacked result of `hidden_state_fn` applied to each entry (e.g. (n+1, B, D) for last-token pooling).
    last_block_output: raw output of the last block that ran (pre final norm), (B, T, D) or pooled.
    final_hidden: final-norm output (B, T, D) when all L blocks ran.
    cache: updated KV cache (see `init_cache`) when one was passed.
    """

    logits: jax.Array | None = None
    hidden_states: Any = None
    last_block_output: Any = None
    final_hidden: jax.Array | None = None
    cache: dict | None = None


class Decoder(nnx.Module):
    """Llama / Qwen2 / Qwen3 decoder-only language model.

    `model(input_ids, attention_mask=mask, output_hidden_states=True)` -> `DecoderOutput` (see `forward`).
    Attributes: `config` (ModelConfig), `mesh` (or None), `source_path` and `fingerprint` (set by
    `from_pretrained`: the HF directory and a content hash of its weights).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, mesh: Mesh | None = None):
        dtype = jnp_dtype(config.param_dtype)
        V, D = config.vocab_size, config.hidden_size
        self.config = config
        self.mesh = mesh
        self.source_path: str | None = None
        self.fingerprint: str | None = None
        self.embed = nnx.Param((jax.random.normal(rngs.params(), (V, D), jnp.float32) * 0.02).astype(dtype),
                               axes=("vocab", "embed"))
        self.layers = DecoderBlocks(config, rngs)
        self.final_norm = nnx.Param(jnp.ones((D,), dtype), axes=("norm",))
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Param((jax.random.normal(rngs.params(), (D, V), jnp.float32) * D ** -0.5
                                      ).astype(dtype), axes=("embed", "vocab"))

    def identity(self) -> dict[str, Any]:
        """What an artifact derived from this model records about it (to refuse being used with another model)."""
        c = self.config
        return {"fingerprint": self.fingerprint, "path": self.source_path, "model_type": c.model_type,
                "num_layers": c.num_layers, "hidden_size": c.hidden_size, "param_dtype": c.param_dtype}

    def params(self) -> Params:
        """Pure nested dict of the parameter arrays (the input of `forward`)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def set_params(self, params: Params) -> None:
        """Replace the parameter arrays with `params` (same structure as `params()`)."""
        state = nnx.state(self, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(self, state)

    def __call__(self, input_ids, attention_mask=None, *, positions=None, output_hidden_states: bool = False,
                 hidden_state_fn: Callable | None = None, num_blocks: int | None = None,
                 compute_logits: bool = True) -> DecoderOutput:
        """Jitted forward. `input_ids`/`attention_mask`/`positions`: (B, T) numpy or jax int arrays.

        Without `positions`, positions are derived from the mask (`cumsum(mask) - 1`), so left- and right-padded
        batches give every real token the position it has in its unpadded sequence.
        """
        input_ids = np.asarray(input_ids, np.int32) if not isinstance(input_ids, jax.Array) else input_ids
        if attention_mask is None:
            attention_mask = np.ones(input_ids.shape, np.int32)
        arrays = [input_ids, attention_mask] + ([positions] if positions is not None else [])
        if self.mesh is not None and input_ids.shape[0] % batch_shards(self.mesh) == 0:
            arrays = list(put_batch(self.mesh, *[np.asarray(a, np.int32) for a in arrays]))
        else:
            arrays = [jnp.asarray(a, jnp.int32) for a in arrays]
        ids, mask = arrays[0], arrays[1]
        pos = arrays[2] if positions is not None else None
        return forward_jit(self.params(), self.config, ids, mask, pos, mesh=self.mesh,
                           output_hidden_states=output_hidden_states, hidden_state_fn=hidden_state_fn,
                           num_blocks=num_blocks, compute_logits=compute_logits)


# ----------------------------------------------------------------------------------------------- layer loop
def split_layers(params: Params) -> Params:
    """`params` with the stacked block parameters split into a tuple of L per-layer dicts (see `forward`)."""
    layers = params["layers"]
    num_layers = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": tuple(jax.tree.map(lambda a: a[i], layers) for i in range(num_layers))}


def run_blocks(params: Params, config: ModelConfig, h: jax.Array, positions: jax.Array, mask: jax.Array, *,
               mesh: Mesh | None = None, num_blocks: int | None = None, collect: Callable | None = None,
               cache=None, write_index=None):
    """The layer loop shared by every entry point: h (B,T,D) through blocks 0..n-1 -> (h, collected, cache).

    `collect(h)` (optional) is applied to each block's output and stacked (n, ...). `cache`: stacked (scanned
    layers: scanned over as xs/ys) or per-layer tuple (unrolled), see `kv_cache`; `mask` (B, T, S) matches it.
    params["layers"] may be stacked or a tuple of per-layer dicts (`split_layers`, unrolled only).
    """
    c = config
    n = c.num_layers if num_blocks is None else int(num_blocks)
    if not 0 <= n <= c.num_layers:
        raise InputError(f"num_blocks must be in [0, {c.num_layers}], got {n}")
    layers = params["layers"]
    pre_split = isinstance(layers, (list, tuple))
    if pre_split and c.scan_layers:
        raise ValueError("per-layer parameters (a tuple of layer dicts) need config.scan_layers=False")
    cos, sin = rope_cos_sin(c, positions)

    def body(h, xs):
        p, i, layer_cache = xs
        if p is None:  # truncated scanned trunk: index into the full stack instead of slicing (no weight copy)
            p = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers)
        h, layer_cache = block(h, p, cos, sin, mask, c, layer_cache, write_index)
        h = constrain(h, mesh, ACT)
        return h, ((collect(h) if collect is not None else None), layer_cache)

    body = remat(body, c.remat_policy)
    index = jnp.arange(n, dtype=jnp.int32)
    if c.scan_layers:
        if cache is not None and not isinstance(cache, dict):
            raise ValueError("scanned layers take the stacked cache layout")
        per_layer = layers if n == c.num_layers else None
        h, (collected, cache) = jax.lax.scan(body, h, (per_layer, index, cache), length=n)
        return h, collected, cache
    stacked_cache = isinstance(cache, dict)
    caches = kv_cache.split(cache) if stacked_cache else cache
    outs, new_caches = [], []
    for i in range(n):
        p_i = layers[i] if pre_split else jax.tree.map(lambda a: a[i], layers)
        h, (y, layer_cache) = body(h, (p_i, jnp.int32(i), None if caches is None else caches[i]))
        outs.append(y)
        new_caches.append(layer_cache)
    collected = jax.tree.map(lambda *ys: jnp.stack(ys), *outs) if (collect and outs) else None
    if cache is None:
        return h, collected, None
    return h, collected, (kv_cache.stack(new_caches) if stacked_cache else tuple(new_caches))


def _inputs(config, input_ids, attention_mask, positions):
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
        positions = positions_from_mask(attention_mask)
    return attention_mask, positions


def _causal_mask(attention_mask: jax.Array) -> jax.Array:
    T = attention_mask.shape[1]
    return jnp.tril(jnp.ones((T, T), bool))[None] & attention_mask.astype(bool)[:, None, :]


# ----------------------------------------------------------------------------------------------- entry points
def forward_logits(params: Params, config: ModelConfig, input_ids, attention_mask=None, positions=None, *,
                   mesh: Mesh | None = None, compute_logits: bool = True) -> DecoderOutput:
    """All L blocks: final_hidden (B,T,D), last_block_output and (with compute_logits) float32 logits (B,T,V)."""
    attention_mask, positions = _inputs(config, input_ids, attention_mask, positions)
    h = embed_tokens(params, config, input_ids, mesh)
    h, _, _ = run_blocks(params, config, h, positions, _causal_mask(attention_mask), mesh=mesh)
    final = rms_norm(h, params["final_norm"], config.rms_norm_eps)
    return DecoderOutput(logits=lm_logits(params, config, final) if compute_logits else None,
                         last_block_output=h, final_hidden=final)


def forward_trunk(params: Params, config: ModelConfig, input_ids, attention_mask=None, positions=None, *,
                  num_blocks: int, mesh: Mesh | None = None) -> jax.Array:
    """The raw output (B,T,D) of block `num_blocks` (residual index n < L; n = 0: the embeddings)."""
    attention_mask, positions = _inputs(config, input_ids, attention_mask, positions)
    h = embed_tokens(params, config, input_ids, mesh)
    h, _, _ = run_blocks(params, config, h, positions, _causal_mask(attention_mask), mesh=mesh, num_blocks=num_blocks)
    return h


def capture_hidden_states(params: Params, config: ModelConfig, input_ids, attention_mask=None, positions=None, *,
                          mesh: Mesh | None = None, hidden_state_fn: Callable | None = None,
                          num_blocks: int | None = None, compute_logits: bool = True) -> DecoderOutput:
    """Residual-index entries 0..n (module docstring), optionally reduced by `hidden_state_fn` (see `forward`)."""
    c = config
    n = c.num_layers if num_blocks is None else int(num_blocks)
    attention_mask, positions = _inputs(c, input_ids, attention_mask, positions)
    collect = (lambda x: x) if hidden_state_fn is None else (lambda x: hidden_state_fn(x, attention_mask))
    emb = embed_tokens(params, c, input_ids, mesh)
    h, collected, _ = run_blocks(params, c, emb, positions, _causal_mask(attention_mask), mesh=mesh,
                                 num_blocks=n, collect=collect)
    out: dict[str, Any] = {"last_block_output": collect(h) if hidden_state_fn is not None else h}
    entries = [jax.tree.map(lambda e: e[None], collect(emb))]
    if n > 0:
        entries.append(collected if n < c.num_layers else jax.tree.map(lambda y: y[:-1], collected))
    if n == c.num_layers:
        final = rms_norm(h, params["final_norm"], c.rms_norm_eps)
        out["final_hidden"] = final
        if compute_logits:
            out["logits"] = lm_logits(params, c, final)
        entries.append(jax.tree.map(lambda e: e[None], collect(final)))
    out["hidden_states"] = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *entries)
    return DecoderOutput(**out)


def cached_step(params: Params, config: ModelConfig, input_ids, positions, cache, write_index, *,
                kv_mask=None, mesh: Mesh | None = None) -> tuple[jax.Array, Any]:
    """Prefill or decode step with a KV cache: (B, T) tokens at `positions`, keys/values written at slots
    [write_index, write_index + T) (scalar or (B,), see `kv_cache`) -> (final-norm hidden (B,T,D), cache)."""
    B, T = input_ids.shape
    S = (cache["k"] if isinstance(cache, dict) else cache[0]["k"]).shape[-3]
    mask = kv_cache.cache_mask(write_index, T, S, B, kv_mask)
    h = embed_tokens(params, config, input_ids, mesh)
    h, _, cache = run_blocks(params, config, h, positions, mask, mesh=mesh, cache=cache, write_index=write_index)
    return rms_norm(h, params["final_norm"], config.rms_norm_eps), cache


def forward(params: Params, config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            positions: jax.Array | None = None, *, mesh: Mesh | None = None, output_hidden_states: bool = False,
            hidden_state_fn: Callable | None = None, num_blocks: int | None = None, compute_logits: bool = True,
            cache: dict | None = None, cache_index: jax.Array | int | None = None,
            kv_mask: jax.Array | None = None) -> DecoderOutput:
    """Pure forward pass over `params` (a `Decoder.params()` dict); dispatches to the entry points above.

    Args:
      input_ids, attention_mask, positions: (B, T) int. attention_mask 1 = real token, 0 = padding (either side).
        positions default to `positions_from_mask(attention_mask)`.
      output_hidden_states: return entries 0..n of the residual-index convention (module docstring).
      hidden_state_fn: optional `fn(h (B,T,D), attention_mask (B,T)) -> pytree` applied to every entry inside the
        layer loop (e.g. last-token pooling), so the full (n+1, B, T, D) stack is never materialised. Must be a
        module-level function (it is a static jit argument).
      num_blocks: run only the first n blocks (the truncated trunk for residual index n); default L.
      compute_logits: compute the (B, T, V) logits (only when all L blocks run).
      params["layers"] may also be a tuple of L per-layer dicts (`split_layers`) with `config.scan_layers` False:
        the unrolled loop then uses them as they are, instead of slicing the stacked arrays on every call.
      cache / cache_index / kv_mask: KV-cache mode (`cached_step`, `kv_cache`): this call's T tokens are written
        at slots [cache_index, cache_index + T) of every row (cache_index scalar or (B,)); `kv_mask` (B, S_max)
        marks slots holding real tokens. Query t attends to slots s <= cache_index + t with kv_mask set.
    """
    c = config
    n = c.num_layers if num_blocks is None else int(num_blocks)
    if not 0 <= n <= c.num_layers:
        raise InputError(f"num_blocks must be in [0, {c.num_layers}], got {n}")
    if cache is not None:
        attention_mask, positions = _inputs(c, input_ids, attention_mask, positions)
        final, cache = cached_step(params, c, input_ids, positions, cache, cache_index, kv_mask=kv_mask, mesh=mesh)
        return DecoderOutput(logits=lm_logits(params, c, final) if compute_logits else None, final_hidden=final,
                             cache=cache)
    if output_hidden_states:
        return capture_hidden_states(params, c, input_ids, attention_mask, positions, mesh=mesh,
                                     hidden_state_fn=hidden_state_fn, num_blocks=n, compute_logits=compute_logits)
    if n < c.num_layers:
        h = forward_trunk(params, c, input_ids, attention_mask, positions, num_blocks=n, mesh=mesh)
        return DecoderOutput(last_block_output=h)
    return forward_logits(params, c, input_ids, attention_mask, positions, mesh=mesh, compute_logits=compute_logits)


forward_jit = jax.jit(forward, static_argnames=("config", "mesh", "output_hidden_states", "hidden_state_fn",
                                                "num_blocks", "compute_logits"))


# ----------------------------------------------------------------------------------------------- construction
def abstract_decoder(config: ModelConfig, mesh: Mesh | None = None) -> Decoder:
    """A Decoder whose parameters are `jax.ShapeDtypeStruct`s (no memory), with `axes` metadata."""
    model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    model.mesh = mesh
    return model


def param_shardings(model: Decoder, mesh: Mesh) -> Params:
    """Pure dict (same structure as `params()`) of NamedShardings from each Param's logical axes."""
    from lasa_jax.sharding import named_sharding

    state = nnx.state(model, nnx.Param)
    flat = {path: named_sharding(mesh, var.get_metadata()["axes"], var.get_value().shape)
            for path, var in nnx.to_flat_state(state)}
    return traverse_util.unflatten_dict(flat)


def init_decoder(config: ModelConfig, seed: int = 0, mesh: Mesh | None = None) -> Decoder:
    """Randomly initialised Decoder; with a mesh, every parameter is created directly on its shards."""
    model = abstract_decoder(config, mesh)
    graphdef, state = nnx.split(model)

    def make():
        return Decoder(config, rngs=nnx.Rngs(seed)).params()

    if mesh is None:
        params = jax.jit(make)()
    else:
        params = jax.jit(make, out_shardings=param_shardings(model, mesh))()
    model = nnx.merge(graphdef, state)
    model.set_params(params)
    return model
