"""Grouped-query attention by backend: the einsum reference, XLA and cuDNN (`jax.nn.dot_product_attention`), splash.

One contract for every backend: q (B,T,H,hd), k/v (B,S,K,hd), mask (B,T,S) bool (True = query t may attend key s)
-> (B,T,H,hd) in v's dtype; H a multiple of K (query head h uses key/value head h // (H // K)); scores scaled by
hd**-0.5 and the softmax taken in float32.

Backends (`attention(..., backend=...)`; `ModelConfig.attention_backend` names one):
  "einsum"  the reference (`einsum_attention`): masked scores set to MASK_VALUE, probabilities cast to v's dtype
            before the value product. Any platform, any mask.
  "xla"     `jax.nn.dot_product_attention(implementation="xla")` with the boolean mask. Same numerics as the
            einsum (masked logits -0.7 * float32 max, float32 softmax, probabilities in v's dtype). Any platform.
  "cudnn"   the same call with implementation="cudnn": cuDNN flash attention, GPU only (InputError elsewhere),
            float16/bfloat16 only (InputError for float32). The boolean mask becomes an additive bias of large
            finite negatives inside jax.
  "splash"  the Pallas TPU splash-attention kernel (`splash_attention`), TPU only through `attention` (InputError
            elsewhere; tests run the same kernel in Pallas interpret mode on CPU). The kernel's mask is static, so it
            gets a causal mask (key index <= query index) plus per-row segment ids read from `mask`; when `mask`
            is not of that form (e.g. a KV-cache step at a cache offset) or T, S are not multiples of 128, the
            einsum runs instead (a `lax.cond` on the mask; shapes decide at trace time). Decoding steps (T=1)
            therefore always use the einsum.
  "auto"    cudnn on GPU for float16/bfloat16 with hd a multiple of 8 and <= 128, splash on TPU when T and S are
            multiples of 128, otherwise the einsum.

Fully masked query rows (a left-padded position before the first real token): no backend gives NaN. einsum and
xla give uniform probabilities over all S keys (the mean of v); cuDNN adds the same large negative to every
score, so it is uniform too (not measured here: no GPU); splash lets such a row attend the keys no real row
attends (segment 0) at index <= t, a finite but different value. Such rows are padding and are ignored downstream;
on every row with at least one True the backends agree (tests/models/test_attention_kernels.py).

Splash runs as one `pallas_call` per batch element (vmapped); under GSPMD sharding (pjit with a mesh) XLA cannot
partition a Pallas call, so multi-chip use needs a `shard_map` around it (not done here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lasa_jax.infra.errors import InputError
from lasa_jax.models.config import ATTENTION_BACKENDS

MASK_VALUE = -1e30  # finite: a fully masked (padding) query row gives a uniform softmax, never NaN
SPLASH_BLOCKS = (512, 256, 128)  # splash tile sizes tried, largest first (the kernel needs multiples of 128)
CUDNN_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))

__all__ = ["ATTENTION_BACKENDS", "MASK_VALUE", "attention", "einsum_attention", "dot_product_attention",
           "splash_attention", "splash_mask_supported", "resolve_backend"]


def einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, num_kv_heads: int) -> jax.Array:
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


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                          implementation: str = "xla") -> jax.Array:
    """`jax.nn.dot_product_attention` on the contract's layout (it takes (B,T,N,hd) and K key heads directly)."""
    if implementation == "cudnn" and np.dtype(q.dtype) not in CUDNN_DTYPES:
        raise InputError(f"attention backend 'cudnn' needs float16 or bfloat16 inputs, got {q.dtype} "
                         "(use compute_dtype bfloat16, or attention_backend 'xla'/'einsum')")
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :], implementation=implementation)
    return out.astype(v.dtype)


def _splash_block(n: int) -> int | None:
    return next((b for b in SPLASH_BLOCKS if n % b == 0), None)


def _segments(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Splash segment ids from mask (B,T,S): query row t is 1 if it attends anything, key s is 1 if attended."""
    return mask.any(axis=2).astype(jnp.int32), mask.any(axis=1).astype(jnp.int32)


def splash_mask_supported(mask: jax.Array) -> jax.Array:
    """Scalar bool: `mask` (B,T,S) is what splash computes, causal (s <= t) AND equal segment ids (`_segments`).

    That is every row with a True equal to {s <= t} & (key s attended by some row), and every all-False row
    having a never-attended key at s <= t to fall back on (so no splash row is empty). The decoder's full-forward
    mask (causal & key padding, left or right) is of this form; a KV-cache step at a nonzero cache offset is not.
    """
    T, S = mask.shape[1:]
    q_seg, kv_seg = _segments(mask)
    causal = jnp.tril(jnp.ones((T, S), bool))[None]
    real_rows_ok = jnp.where(q_seg[:, :, None] == 1, mask == (causal & (kv_seg[:, None, :] == 1)), True).all()
    empty_rows_ok = jnp.where(q_seg == 0, (causal & (kv_seg[:, None, :] == 0)).any(axis=2), True).all()
    return real_rows_ok & empty_rows_ok


def _splash_kernel(q, k, v, q_seg, kv_seg, *, interpret: bool):
    """The splash kernel on (B,H,T,hd) q (already scaled) and (B,K,S,hd) k/v, causal + segment ids."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    H, T = q.shape[1:3]
    S = k.shape[2]
    bq, bkv = _splash_block(T), _splash_block(S)
    blocks = sa.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                           block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    heads = sa.MultiHeadMask([sa.CausalMask((T, S)) for _ in range(H)])
    kernel = sa.make_splash_mha(heads, block_sizes=blocks, head_shards=1, q_seq_shards=1, mask_value=MASK_VALUE,
                                interpret=interpret)
    return jax.vmap(kernel)(q, k, v, sa.SegmentIds(q=q_seg, kv=kv_seg))


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, num_kv_heads: int, *,
                     interpret: bool | None = None) -> jax.Array:
    """The contract through the Pallas splash kernel where it applies, else `einsum_attention` (module docstring).

    `interpret` defaults to True off TPU (Pallas interpret mode: the same kernel code, slowly, for tests).
    In the kernel, q is scaled by hd**-0.5 (in float32, then cast to q's dtype) before the float32 score product,
    and the softmax probabilities stay float32 in the value product (bfloat16 may differ from the einsum by
    bfloat16 rounding of the scaled q and of the probabilities).
    """
    B, T, H, hd = q.shape
    S = k.shape[1]
    if k.shape[2] != num_kv_heads:
        raise InputError(f"k has {k.shape[2]} heads, num_kv_heads is {num_kv_heads}")
    if _splash_block(T) is None or _splash_block(S) is None:
        return einsum_attention(q, k, v, mask, num_kv_heads)
    if interpret is None:
        interpret = jax.default_backend() != "tpu"

    def kernel_branch(q, k, v, mask):
        q_seg, kv_seg = _segments(mask)
        qs = (q.astype(jnp.float32) * (hd ** -0.5)).astype(q.dtype).transpose(0, 2, 1, 3)
        out = _splash_kernel(qs, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), q_seg, kv_seg,
                             interpret=interpret)
        return out.transpose(0, 2, 1, 3).astype(v.dtype)

    def einsum_branch(q, k, v, mask):
        return einsum_attention(q, k, v, mask, num_kv_heads)

    return jax.lax.cond(splash_mask_supported(mask), kernel_branch, einsum_branch, q, k, v, mask)


def resolve_backend(backend: str, q_shape: tuple[int, ...], k_shape: tuple[int, ...], dtype,
                    platform: str | None = None) -> str:
    """The implementation `attention` runs for `backend` ("einsum", "xla", "cudnn" or "splash"); InputError for
    an unknown backend or one this platform lacks. `platform` defaults to `jax.default_backend()`."""
    if backend not in ATTENTION_BACKENDS:
        raise InputError(f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    platform = platform or jax.default_backend()
    if backend == "cudnn" and platform != "gpu":
        raise InputError(f"attention backend 'cudnn' needs a GPU (this platform is {platform!r}); "
                         "use 'xla', 'einsum' or 'auto'")
    if backend == "splash" and platform != "tpu":
        raise InputError(f"attention backend 'splash' is the Pallas TPU kernel (this platform is {platform!r}); "
                         "use 'xla', 'einsum' or 'auto'")
    if backend != "auto":
        return backend
    hd = q_shape[-1]
    if platform == "gpu" and np.dtype(dtype) in CUDNN_DTYPES and hd % 8 == 0 and hd <= 128:
        return "cudnn"
    if platform == "tpu" and _splash_block(q_shape[1]) and _splash_block(k_shape[1]):
        return "splash"
    return "einsum"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, num_kv_heads: int,
              backend: str = "einsum") -> jax.Array:
    """Grouped-query attention by backend. q (B,T,H,hd), k/v (B,S,K,hd), mask (B,T,S) bool -> (B,T,H,hd).

    `backend`: one of ATTENTION_BACKENDS (module docstring); the choice is made at trace time from the shapes,
    dtype and `jax.default_backend()`.
    """
    impl = resolve_backend(backend, q.shape, k.shape, q.dtype)
    if impl == "einsum":
        return einsum_attention(q, k, v, mask, num_kv_heads)
    if impl == "splash":
        return splash_attention(q, k, v, mask, num_kv_heads)
    return dot_product_attention(q, k, v, mask, implementation=impl)
