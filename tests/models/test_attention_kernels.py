"""Attention backends against the einsum reference (lasa_jax.models.attention_kernels).

On CPU: "xla" (jax.nn.dot_product_attention) runs natively; "splash" runs the Pallas TPU kernel in interpret mode;
"cudnn" needs a GPU (only its platform/dtype errors are tested here). Tolerances: float32 1e-5 absolute (outputs
are averages of standard-normal values, |out| <= ~3.2; measured: xla 0.0, splash 1.1e-6); bfloat16 against the
bfloat16 einsum 3e-2 absolute (measured: xla 0.0, splash 1.6e-2 = 2 bfloat16 ulps at |out| ~3: splash keeps the
probabilities in float32 where the einsum rounds them to bfloat16). Splash rows with no key to attend are compared
only for finiteness (see the module docstring).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasa_jax.infra.errors import InputError
from lasa_jax.models.attention_kernels import (
    attention,
    dot_product_attention,
    einsum_attention,
    resolve_backend,
    splash_attention,
    splash_mask_supported,
)
from lasa_jax.models.config import ATTENTION_BACKENDS, ModelConfig

H, K, HD = 4, 2, 32  # grouped-query: 2 query heads per key/value head
F32_TOL = 1e-5
BF16_TOL = 3e-2


def qkv(B, T, S, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
               for shape in [(B, T, H, HD), (B, S, K, HD), (B, S, K, HD)])
    return q, k, v


def padded_mask(T, lengths, side):
    """The decoder's full-forward mask: causal & key padding; rows padded on `side` ("left" or "right")."""
    pos = np.arange(T)
    valid = np.stack([(pos >= T - n) if side == "left" else (pos < n) for n in lengths])
    return jnp.asarray(np.tril(np.ones((T, T), bool))[None] & valid[:, None, :])


def cache_mask(T, S, cache_index, kv_lengths):
    """The decoder's KV-cache mask: slot s <= cache_index + t, and slot s holds a real token."""
    slot_ok = np.arange(S)[None, :] <= (cache_index + np.arange(T))[:, None]
    kv = np.arange(S)[None, :] < np.asarray(kv_lengths)[:, None]
    return jnp.asarray(slot_ok[None] & kv[:, None, :])


def real_rows(mask):
    return np.asarray(mask).any(axis=-1)  # (B, T): rows with at least one key


MASKS = [("left", [128, 100, 37]), ("right", [128, 90, 5])]


@pytest.mark.parametrize("side,lengths", MASKS)
def test_xla_equals_einsum_float32(side, lengths):
    mask = padded_mask(128, lengths, side)
    q, k, v = qkv(3, 128, 128)
    ref = einsum_attention(q, k, v, mask, K)
    out = jax.jit(lambda *a: attention(*a, K, backend="xla"))(q, k, v, mask)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    np.testing.assert_allclose(out, ref, atol=F32_TOL, rtol=0)  # every row, fully masked ones included (uniform)


@pytest.mark.parametrize("side,lengths", MASKS)
def test_splash_interpret_equals_einsum_float32(side, lengths):
    mask = padded_mask(128, lengths, side)
    assert bool(splash_mask_supported(mask))  # the kernel branch runs, not the einsum fallback
    q, k, v = qkv(3, 128, 128, seed=1)
    ref = np.asarray(einsum_attention(q, k, v, mask, K))
    out = np.asarray(jax.jit(lambda *a: splash_attention(*a, K, interpret=True))(q, k, v, mask))
    assert np.isfinite(out).all()
    rows = real_rows(mask)
    np.testing.assert_allclose(out[rows], ref[rows], atol=F32_TOL, rtol=0)


@pytest.mark.slow  # ~25 s on the shared 2-core machine (interpret-mode backward kernels)
def test_splash_interpret_gradients_equal_einsum():
    mask = padded_mask(128, [128, 70], "left")
    q, k, v = qkv(2, 128, 128, seed=2)
    weight = jnp.asarray(real_rows(mask), jnp.float32)[:, :, None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)) * weight)

    ref = jax.grad(loss(lambda q, k, v: einsum_attention(q, k, v, mask, K)), argnums=(0, 1, 2))(q, k, v)
    got = jax.jit(jax.grad(loss(lambda q, k, v: splash_attention(q, k, v, mask, K, interpret=True)),
                           argnums=(0, 1, 2)))(q, k, v)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=0)


def test_bfloat16_within_tolerance():
    mask = padded_mask(128, [128, 64, 20], "left")
    q, k, v = qkv(3, 128, 128, jnp.bfloat16, seed=3)
    ref = np.asarray(einsum_attention(q, k, v, mask, K), np.float32)
    rows = real_rows(mask)
    xla = jax.jit(lambda *a: attention(*a, K, backend="xla"))(q, k, v, mask)
    splash = jax.jit(lambda *a: splash_attention(*a, K, interpret=True))(q, k, v, mask)
    for out in (xla, splash):
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32)[rows], ref[rows], atol=BF16_TOL, rtol=0)


def test_kv_cache_decode_step():
    """T=1 query against S cached slots (generation): xla equals the einsum; splash cannot tile T=1 and runs it."""
    mask = cache_mask(1, 128, cache_index=jnp.asarray([40]), kv_lengths=[41, 30])
    q, k, v = qkv(2, 1, 128, seed=4)
    ref = einsum_attention(q, k, v, mask, K)
    np.testing.assert_allclose(attention(q, k, v, mask, K, backend="xla"), ref, atol=F32_TOL, rtol=0)
    np.testing.assert_array_equal(splash_attention(q, k, v, mask, K, interpret=True), ref)


@pytest.mark.parametrize("cache_index,supported", [(0, True), (64, False)])
def test_kv_cache_prefill(cache_index, supported):
    """T=128 queries written at `cache_index` into S=256 slots: at offset 0 the mask is causal & segments (kernel
    branch); at offset 64 it is not, and splash falls back to the einsum (same numbers either way)."""
    mask = cache_mask(128, 256, cache_index, kv_lengths=[cache_index + 128, cache_index + 100])
    assert bool(splash_mask_supported(mask)) == supported
    q, k, v = qkv(2, 128, 256, seed=5)
    ref = np.asarray(einsum_attention(q, k, v, mask, K))
    rows = real_rows(mask)
    xla = np.asarray(attention(q, k, v, mask, K, backend="xla"))
    splash = np.asarray(jax.jit(lambda *a: splash_attention(*a, K, interpret=True))(q, k, v, mask))
    np.testing.assert_allclose(xla, ref, atol=F32_TOL, rtol=0)
    np.testing.assert_allclose(splash[rows], ref[rows], atol=F32_TOL, rtol=0)


def test_fully_masked_rows_are_finite_and_uniform():
    mask = padded_mask(128, [10], "left")  # rows 0..117 see no key
    q, k, v = qkv(1, 128, 128, seed=6)
    mean_v = np.repeat(np.asarray(v).mean(axis=1), H // K, axis=1)  # (B, H, hd): uniform over all S keys
    for out in (einsum_attention(q, k, v, mask, K), dot_product_attention(q, k, v, mask),
                splash_attention(q, k, v, mask, K, interpret=True)):
        assert np.isfinite(np.asarray(out)).all()
    for out in (einsum_attention(q, k, v, mask, K), dot_product_attention(q, k, v, mask)):
        np.testing.assert_allclose(np.asarray(out)[0, 0], mean_v[0], atol=F32_TOL, rtol=0)


def test_backend_choice_and_errors():
    assert set(ATTENTION_BACKENDS) == {"einsum", "xla", "cudnn", "splash", "auto"}
    q_shape, k_shape = (2, 128, H, 64), (2, 128, K, 64)
    assert resolve_backend("auto", q_shape, k_shape, jnp.float32, "cpu") == "einsum"
    assert resolve_backend("auto", q_shape, k_shape, jnp.bfloat16, "gpu") == "cudnn"
    assert resolve_backend("auto", q_shape, k_shape, jnp.float32, "gpu") == "einsum"
    assert resolve_backend("auto", q_shape, k_shape, jnp.float32, "tpu") == "splash"
    assert resolve_backend("auto", (2, 1, H, 64), k_shape, jnp.float32, "tpu") == "einsum"  # decode step
    with pytest.raises(InputError, match="attention backend must be one of"):
        resolve_backend("flash", q_shape, k_shape, jnp.float32, "cpu")
    with pytest.raises(InputError, match="'cudnn' needs a GPU"):
        resolve_backend("cudnn", q_shape, k_shape, jnp.bfloat16, "cpu")
    with pytest.raises(InputError, match="'splash' is the Pallas TPU kernel"):
        resolve_backend("splash", q_shape, k_shape, jnp.float32, "gpu")
    with pytest.raises(InputError, match="float16 or bfloat16"):
        dot_product_attention(*qkv(1, 4, 4), jnp.ones((1, 4, 4), bool), implementation="cudnn")
    q, k, v = qkv(1, 4, 4)
    mask = jnp.ones((1, 4, 4), bool)
    np.testing.assert_array_equal(attention(q, k, v, mask, K, backend="auto"), einsum_attention(q, k, v, mask, K))
    with pytest.raises(InputError, match="attention backend must be one of"):
        attention(q, k, v, mask, K, backend="nope")


def test_model_config_field():
    base = dict(model_type="llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=4,
                num_kv_heads=2, head_dim=4, rms_norm_eps=1e-6, rope_theta=1e4)
    config = ModelConfig(**base)
    assert config.attention_backend == "einsum"
    other = config.replace(attention_backend="xla")
    assert other.to_hf_dict() == config.to_hf_dict()  # not in config.json, fingerprint or run identity
    assert hash(other) != hash(config)  # but part of the jit static key
    with pytest.raises(InputError, match="attention_backend must be one of"):
        ModelConfig(**base, attention_backend="flash")


def test_decoder_runs_the_configured_backend(tmp_path):
    """The decoder's blocks call this module with `ModelConfig.attention_backend`: a tiny Qwen2 model loaded with
    backend "xla" gives the einsum backend's logits and hidden states on a left-padded batch (the einsum is the
    decoder's reference)."""
    from lasa_jax.models import attention_kernels, blocks
    from lasa_jax.models.hf import from_pretrained
    from lasa_jax.testing import build_tiny_hf_model

    assert blocks.attention is attention_kernels.attention
    directory = tmp_path / "qwen2"
    build_tiny_hf_model(directory, "qwen2")
    ids = np.array([[0, 0, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], np.int32)
    outputs = {}
    for backend in ("einsum", "xla"):
        model = from_pretrained(directory, "float32", attention_backend=backend)
        assert model.config.attention_backend == backend
        outputs[backend] = model(ids, mask, output_hidden_states=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(outputs["xla"].logits)[real], np.asarray(outputs["einsum"].logits)[real],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outputs["xla"].hidden_states)[:, real],
                               np.asarray(outputs["einsum"].hidden_states)[:, real], atol=1e-5, rtol=1e-5)
