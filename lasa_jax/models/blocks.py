"""Layer numerics: the embedding lookup, one block (pre-norm grouped-query attention + SwiGLU MLP, with its
stacked parameters) and the LM head.

Shapes: B batch, T query length, S key length (T, or the KV-cache length), D hidden size, H query heads,
K key/value heads, hd head_dim, F MLP width. Numerics: matmuls in the compute dtype of `h`; RMSNorm statistics,
RoPE angles and the attention softmax in float32 (as transformers).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from lasa_jax.models import kv_cache
from lasa_jax.models.attention_kernels import attention
from lasa_jax.models.config import ModelConfig
from lasa_jax.sharding import constrain

ACT = ("batch", "length", "act_embed")  # logical axes of the residual stream (B, T, D)


def jnp_dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


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


def block(h: jax.Array, p: dict, cos: jax.Array, sin: jax.Array, mask: jax.Array, config: ModelConfig,
          layer_cache: dict | None = None, write_index: jax.Array | int | None = None) -> tuple[jax.Array, dict | None]:
    """One pre-norm block. h (B,T,D) in compute dtype; p: this block's parameters (no layers axis).

    With `layer_cache` ({"k", "v"} of (B, S, K, hd), see `kv_cache`), this call's keys/values are written at
    `write_index` (scalar or per row (B,)) and attention runs over the cached keys/values (mask (B, T, S)).
    Returns (h, updated layer_cache or None).
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
    keys, values = k, v
    if layer_cache is not None:
        layer_cache = kv_cache.write(layer_cache, k, v, write_index)
        keys, values = layer_cache["k"].astype(cd), layer_cache["v"].astype(cd)
    a = attention(q, keys, values, mask, config.num_kv_heads, config.attention_backend)
    o = jnp.einsum("btnh,nhd->btd", a, p["o_kernel"].astype(cd))
    if config.o_bias:
        o = o + p["o_bias"].astype(cd)
    h = h + o
    x = rms_norm(h, p["mlp_norm"], config.rms_norm_eps)
    gate = jnp.einsum("btd,df->btf", x, p["gate_kernel"].astype(cd))
    up = jnp.einsum("btd,df->btf", x, p["up_kernel"].astype(cd))
    h = h + jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, p["down_kernel"].astype(cd))
    return h, layer_cache


def remat(fn, policy: str):
    """`fn` under the config's remat policy: "none", "full" (save nothing) or "minimal" (save weight matmuls)."""
    if policy == "none":
        return fn
    if policy == "full":
        return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.nothing_saveable)
    return jax.checkpoint(fn, prevent_cse=False, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


def embed_tokens(params: dict, config: ModelConfig, input_ids: jax.Array, mesh: Mesh | None = None) -> jax.Array:
    """(B, T) ids -> (B, T, D) embeddings in the compute dtype, batch-sharded.

    The lookup runs on the table as it is sharded (vocab over `tensor`, embed over `fsdp`): XLA partitions the
    gather (a masked lookup per vocab shard plus a reduction of the (B, T, D) result, D-sharded rows gathered as
    activations), so the (V, D) table is never gathered whole."""
    emb = jnp.take(params["embed"], input_ids, axis=0).astype(jnp_dtype(config.compute_dtype))
    return constrain(emb, mesh, ACT)


def lm_logits(params: dict, config: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Final-norm hidden (..., D) -> float32 logits (..., V) (tied: the embedding matrix transposed)."""
    cd = hidden.dtype
    if config.tie_word_embeddings:
        return jnp.einsum("...d,vd->...v", hidden, params["embed"].astype(cd), preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", hidden, params["lm_head"].astype(cd), preferred_element_type=jnp.float32)
