"""One Flax NNX decoder for Llama-3.x, Qwen2.5 and Qwen3 (differences are `ModelConfig` flags).

Parameters live in an `nnx.Module` (`Decoder`) as `nnx.Param`s whose `axes` metadata names their logical axes
(`lasa_jax.sharding.LOGICAL_AXIS_RULES` maps them to the mesh). The L blocks are stacked: every block parameter has
a leading `layers` axis of size L and the forward pass runs them with `lax.scan` (or an unrolled loop when
`config.scan_layers` is False), with the remat policy of the config. The numerics live in the pure function
`forward(params, config, ...)` over a pure dict of arrays (`Decoder.params()`), so training code can differentiate
and jit it directly; `Decoder.__call__` is a thin jitted wrapper.

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

Agreement with Hugging Face PyTorch (tests/test_models.py, tiny random models of the three families, left- and
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
from flax import nnx, struct
from jax.sharding import Mesh

from lasa_jax.config import ModelConfig
from lasa_jax.errors import InputError
from lasa_jax.sharding import constrain, put_batch

Params = dict[str, Any]
MASK_VALUE = -1e30  # finite: a fully masked (padding) query row gives a uniform softmax, never NaN


def jnp_dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


# ----------------------------------------------------------------------------------------------- parameters
class DecoderBlocks(nnx.Module):
    """The L transformer blocks, stacked on a leading `layers` axis (pre-norm attention + SwiGLU MLP)."""

    def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
        c = config
        L, D, H, K, hd, F = c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
        dtype = jnp_dtype(c.param_dtype)

        def normal(shape, fan_in):
            return (jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in ** -0.5).astype(dtype)

        def ones(shape):
            return jnp.ones(shape, dtype)

        def zeros(shape):
            return jnp.zeros(shape, dtype)

        self.attn_norm = nnx.Param(ones((L, D)), axes=("layers", "norm"))
        self.q_kernel = nnx.Param(normal((L, D, H, hd), D), axes=("layers", "embed", "q_heads", "head_dim"))
        self.k_kernel = nnx.Param(normal((L, D, K, hd), D), axes=("layers", "embed", "kv_heads", "head_dim"))
        self.v_kernel = nnx.Param(normal((L, D, K, hd), D), axes=("layers", "embed", "kv_heads", "head_dim"))
        self.o_kernel = nnx.Param(normal((L, H, hd, D), H * hd), axes=("layers", "q_heads", "head_dim", "embed"))
        if c.qkv_bias:
            self.q_bias = nnx.Param(zeros((L, H, hd)), axes=("layers", "q_heads", "head_dim"))
            self.k_bias = nnx.Param(zeros((L, K, hd)), axes=("layers", "kv_heads", "head_dim"))
            self.v_bias = nnx.Param(zeros((L, K, hd)), axes=("layers", "kv_heads", "head_dim"))
        if c.o_bias:
            self.o_bias = nnx.Param(zeros((L, D)), axes=("layers", "norm"))
        if c.qk_norm:
            self.q_norm = nnx.Param(ones((L, hd)), axes=("layers", "head_dim"))
            self.k_norm = nnx.Param(ones((L, hd)), axes=("layers", "head_dim"))
        self.mlp_norm = nnx.Param(ones((L, D)), axes=("layers", "norm"))
        self.gate_kernel = nnx.Param(normal((L, D, F), D), axes=("layers", "embed", "mlp"))
        self.up_kernel = nnx.Param(normal((L, D, F), D), axes=("layers", "embed", "mlp"))
        self.down_kernel = nnx.Param(normal((L, F, D), F), axes=("layers", "mlp", "embed"))


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
        if self.mesh is not None and input_ids.shape[0] % _batch_shards(self.mesh) == 0:
            arrays = list(put_batch(self.mesh, *[np.asarray(a, np.int32) for a in arrays]))
        else:
            arrays = [jnp.asarray(a, jnp.int32) for a in arrays]
        ids, mask = arrays[0], arrays[1]
        pos = arrays[2] if positions is not None else None
        return forward_jit(self.params(), self.config, ids, mask, pos, mesh=self.mesh,
                           output_hidden_states=output_hidden_states, hidden_state_fn=hidden_state_fn,
                           num_blocks=num_blocks, compute_logits=compute_logits)


def _batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


# ----------------------------------------------------------------------------------------------- numerics
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF RMSNorm: statistics in float32, result cast back to x's dtype, then scaled by `weight`."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """(B, T) position of each token in its own unpadded sequence: cumsum(mask) - 1, clamped at 0 on padding."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_cos_sin(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape (B, T, hd), float32, rotate-half layout (as transformers)."""
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(config.inv_freq())
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: (B, T, N, hd); cos/sin: (B, T, hd). Computed in x's dtype like transformers."""
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, num_kv_heads: int) -> jax.Array:
    """Grouped-query attention. q (B,T,H,hd), k/v (B,S,K,hd), mask (B,T,S) bool -> (B,T,H,hd).

    Scores and softmax in float32; probabilities cast to v's dtype before the value product.
    """
    B, T, H, hd = q.shape
    q = q.reshape(B, T, num_kv_heads, H // num_kv_heads, hd)
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * (hd ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(B, T, H, hd)


def _block(h, p, cos, sin, mask, config: ModelConfig, kv_update=None):
    """One pre-norm block. h (B,T,D) in compute dtype; p: this block's parameters (no layers axis).

    kv_update(k, v) -> (keys, values) lets a KV cache replace this step's keys/values by the cached ones.
    Returns (h, (k, v)) with this step's keys/values (after RoPE) for cache writing.
    """
    cd = h.dtype
    x = rms_norm(h, p["attn_norm"], config.rms_norm_eps)
    q = jnp.einsum("btd,dnh->btnh", x, p["q_kernel"].astype(cd))
    k = jnp.einsum("btd,dnh->btnh", x, p["k_kernel"].astype(cd))
    v = jnp.einsum("btd,dnh->btnh", x, p["v_kernel"].astype(cd))
    if config.qkv_bias:
        q, k, v = q + p["q_bias"].astype(cd), k + p["k_bias"].astype(cd), v + p["v_bias"].astype(cd)
    if config.qk_norm:
        q, k = rms_norm(q, p["q_norm"], config.rms_norm_eps), rms_norm(k, p["k_norm"], config.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    keys, values = (k, v) if kv_update is None else kv_update(k, v)
    a = attention(q, keys, values, mask, config.num_kv_heads)
    o = jnp.einsum("btnh,nhd->btd", a, p["o_kernel"].astype(cd))
    if config.o_bias:
        o = o + p["o_bias"].astype(cd)
    h = h + o
    x = rms_norm(h, p["mlp_norm"], config.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", x, p["gate_kernel"].astype(cd))
    up = jnp.einsum("btd,df->btf", x, p["up_kernel"].astype(cd))
    h = h + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["down_kernel"].astype(cd))
    return h, (k, v)


def _remat(fn, policy: str):
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
    # "minimal": keep the outputs of weight matmuls (dots without batch dimensions), recompute attention/norms
    return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


def split_layers(params: Params) -> Params:
    """`params` with the stacked block parameters split into a tuple of L per-layer dicts (see `forward`)."""
    layers = params["layers"]
    num_layers = jax.tree.leaves(layers)[0].shape[0]
    return {**params, "layers": tuple(jax.tree.map(lambda a: a[i], layers) for i in range(num_layers))}


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> dict:
    """Empty KV cache: {"k", "v"} of shape (L, B, S_max, K, hd) in the compute dtype."""
    dtype = dtype or jnp_dtype(config.compute_dtype)
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def embed_tokens(params: Params, config: ModelConfig, input_ids: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """(B, T) ids -> (B, T, D) embeddings in the compute dtype. The table is gathered over `fsdp` first (as every
    FSDP weight is before use) so the lookup output can be sharded by batch."""
    table = constrain(params["embed"], mesh, ("vocab", None))
    return jnp.take(table, input_ids, axis=0).astype(jnp_dtype(config.compute_dtype))


def lm_logits(params: Params, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Final-norm hidden (..., D) -> float32 logits (..., V) (tied: the embedding matrix transposed)."""
    cd = hidden.dtype
    if config.tie_word_embeddings:
        return jnp.einsum("...d,vd->...v", hidden, params["embed"].astype(cd), preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", hidden, params["lm_head"].astype(cd), preferred_element_type=jnp.float32)


def forward(params: Params, config: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            positions: jax.Array | None = None, *, mesh: Mesh | None = None, output_hidden_states: bool = False,
            hidden_state_fn: Callable | None = None, num_blocks: int | None = None, compute_logits: bool = True,
            cache: dict | None = None, cache_index: jax.Array | int | None = None,
            kv_mask: jax.Array | None = None) -> DecoderOutput:
    """Pure forward pass over `params` (a `Decoder.params()` dict).

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
        the unrolled loop then uses them as they are, instead of slicing the stacked arrays on every call (what a
        decode loop wants: the split happens once, outside the loop).
      cache / cache_index / kv_mask: KV-cache mode for generation. `cache` from `init_cache` (S_max slots); this
        call's T tokens are written at slots [cache_index, cache_index + T) of every row; `kv_mask` (B, S_max) marks
        slots holding real tokens (after this call's write). Query t attends to slots s <= cache_index + t with
        kv_mask set.
    """
    c = config
    n = c.num_layers if num_blocks is None else int(num_blocks)
    if not 0 <= n <= c.num_layers:
        raise InputError(f"num_blocks must be in [0, {c.num_layers}], got {n}")
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    if positions is None:
        positions = positions_from_mask(attention_mask)
    B, T = input_ids.shape
    valid = attention_mask.astype(bool)
    if cache is None:
        causal = jnp.tril(jnp.ones((T, T), bool))
        mask = causal[None] & valid[:, None, :]
    else:
        S = cache["k"].shape[2]
        slot_ok = jnp.arange(S)[None, :] <= (cache_index + jnp.arange(T))[:, None]
        mask = slot_ok[None] & kv_mask.astype(bool)[:, None, :]
    cos, sin = rope_cos_sin(c, positions)
    act = ("batch", "length", "act_embed")
    h = constrain(embed_tokens(params, c, input_ids, mesh), mesh, act)

    collect = None
    if output_hidden_states:
        collect = (lambda x: x) if hidden_state_fn is None else (lambda x: hidden_state_fn(x, attention_mask))
    layers = params["layers"]
    pre_split = isinstance(layers, (list, tuple))
    if pre_split and c.scan_layers:
        raise ValueError("per-layer parameters (a tuple of layer dicts) need config.scan_layers=False")

    def body(carry, xs):
        h, cache_k, cache_v = carry
        p, i = xs
        if p is None:  # truncated scanned trunk: index into the full stack instead of slicing (no weight copy)
            p = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), layers)
        kv_update = None
        if cache_k is not None:
            def kv_update(k, v):
                nonlocal cache_k, cache_v
                at = (i, 0, cache_index, 0, 0)
                cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), at)
                cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), at)
                keys = jax.lax.dynamic_index_in_dim(cache_k, i, keepdims=False).astype(k.dtype)
                values = jax.lax.dynamic_index_in_dim(cache_v, i, keepdims=False).astype(v.dtype)
                return keys, values
        h, _ = _block(h, p, cos, sin, mask, c, kv_update)
        h = constrain(h, mesh, act)
        return (h, cache_k, cache_v), (collect(h) if collect is not None else None)

    body = _remat(body, c.remat_policy)
    cache_k = cache["k"] if cache is not None else None
    cache_v = cache["v"] if cache is not None else None
    index = jnp.arange(n, dtype=jnp.int32)
    if c.scan_layers:
        per_layer = layers if n == c.num_layers else None
        (h, cache_k, cache_v), collected = jax.lax.scan(body, (h, cache_k, cache_v), (per_layer, index), length=n)
    else:
        outs = []
        for i in range(n):
            p_i = layers[i] if pre_split else jax.tree.map(lambda a: a[i], layers)
            (h, cache_k, cache_v), y = body((h, cache_k, cache_v), (p_i, jnp.int32(i)))
            outs.append(y)
        collected = jax.tree.map(lambda *ys: jnp.stack(ys), *outs) if (collect and outs) else None

    out: dict[str, Any] = {"last_block_output": h if collect is None or hidden_state_fn is None
                           else hidden_state_fn(h, attention_mask)}
    if n == c.num_layers:
        final = rms_norm(h, params["final_norm"], c.rms_norm_eps)
        out["final_hidden"] = final
        if compute_logits:
            out["logits"] = lm_logits(params, c, final)
    if collect is not None:
        emb = collect(embed_tokens(params, c, input_ids, mesh))
        last = collect(out["final_hidden"]) if n == c.num_layers else None
        entries = [jax.tree.map(lambda e: e[None], emb)]
        if n > 0:
            inner = collected if n < c.num_layers else jax.tree.map(lambda y: y[:-1], collected)
            entries.append(inner)
        if last is not None:
            entries.append(jax.tree.map(lambda e: e[None], last))
        out["hidden_states"] = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *entries)
    if cache is not None:
        out["cache"] = {"k": cache_k, "v": cache_v}
    return DecoderOutput(**out)


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
    return _unflatten(flat)


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


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
