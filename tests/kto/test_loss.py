"""KTO loss against a numpy transcription of TRL's KTOTrainer.kto_loss; completion log-probs against numpy."""
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasa_jax.kto.loss import kto_loss
from lasa_jax.models.logprobs import completion_logps


def trl_kto_reference(policy, ref, kl_policy, kl_ref, desirable, beta, w_d, w_u):
    """TRL (loss_type="kto"): kl = mean(kl_policy - kl_ref).clamp(min=0); losses = cat(w_d * chosen_losses,
    w_u * rejected_losses); loss = losses.nanmean(); rewards = beta * logratios."""
    kl = max(float(np.mean(kl_policy - kl_ref)), 0.0)
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
    chosen = policy[desirable] - ref[desirable]
    rejected = policy[~desirable] - ref[~desirable]
    losses = np.concatenate([w_d * (1 - sigmoid(beta * (chosen - kl))), w_u * (1 - sigmoid(beta * (kl - rejected)))])
    return losses.mean(), kl, beta * chosen, beta * rejected


def _inputs(rng, batch, kl_shift):
    policy = rng.normal(-40, 10, batch)
    ref = policy + rng.normal(0, 3, batch)
    kl_ref = rng.normal(-60, 10, batch)
    kl_policy = kl_ref + rng.normal(kl_shift, 1, batch)
    return policy, ref, kl_policy, kl_ref


@pytest.mark.parametrize("kl_shift", [2.0, -2.0], ids=["kl_positive", "kl_clamped"])
@pytest.mark.parametrize("composition", ["mixed", "all_desirable", "all_undesirable"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_matches_trl_formula(kl_shift, composition, weights):
    rng = np.random.default_rng(zlib.crc32(repr((kl_shift, composition, weights)).encode()))
    batch, beta = 12, 0.1
    policy, ref, kl_policy, kl_ref = _inputs(rng, batch, kl_shift)
    desirable = {"mixed": rng.random(batch) < 0.5, "all_desirable": np.ones(batch, bool),
                 "all_undesirable": np.zeros(batch, bool)}[composition]
    if composition == "mixed":
        desirable[:2] = [True, False]
    loss, metrics = kto_loss(jnp.asarray(policy), jnp.asarray(ref), jnp.asarray(kl_policy), jnp.asarray(kl_ref),
                             jnp.asarray(desirable), beta=beta, desirable_weight=weights[0],
                             undesirable_weight=weights[1])
    want_loss, want_kl, chosen_rewards, rejected_rewards = trl_kto_reference(
        policy, ref, kl_policy, kl_ref, desirable, beta, *weights)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], want_kl, atol=1e-4)
    np.testing.assert_allclose(metrics["kl_raw"], np.mean(kl_policy - kl_ref), rtol=1e-5)
    assert (float(metrics["kl"]) == 0.0) == (kl_shift < 0)
    assert float(metrics["count/desirable"]) == desirable.sum()
    assert float(metrics["count/undesirable"]) == (~desirable).sum()
    for name, rewards, logps in (("desirable", chosen_rewards, policy[desirable]),
                                 ("undesirable", rejected_rewards, policy[~desirable])):
        value = float(metrics[f"rewards/{name}"])
        assert np.isfinite(value)
        np.testing.assert_allclose(value, rewards.mean() if rewards.size else 0.0, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics[f"logps/{name}"], logps.mean() if logps.size else 0.0, rtol=1e-5)
    want_margin = chosen_rewards.mean() - rejected_rewards.mean() if composition == "mixed" else 0.0
    np.testing.assert_allclose(metrics["margin"], want_margin, rtol=1e-5, atol=1e-6)


def test_valid_mask_equals_dropping_rows_even_with_nan_padding():
    rng = np.random.default_rng(1)
    policy, ref, kl_policy, kl_ref = _inputs(rng, 10, 1.5)
    desirable = rng.random(10) < 0.5
    valid = np.array([True] * 7 + [False] * 3)
    padded = [np.where(valid, x, np.nan) for x in (policy, ref, kl_policy, kl_ref)]
    loss, metrics = kto_loss(*map(jnp.asarray, padded), jnp.asarray(desirable), valid=jnp.asarray(valid))
    want, _ = kto_loss(*(jnp.asarray(x[:7]) for x in (policy, ref, kl_policy, kl_ref)), jnp.asarray(desirable[:7]))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert float(metrics["count/valid"]) == 7
    grads = jax.grad(lambda p: kto_loss(p, *map(jnp.asarray, padded[1:]), jnp.asarray(desirable),
                                        valid=jnp.asarray(valid))[0])(jnp.asarray(padded[0]))
    assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[7:] == 0)


def test_gradients_stop_at_kl_anchor_and_match_formula():
    rng = np.random.default_rng(2)
    policy, ref, kl_policy, kl_ref = map(jnp.asarray, _inputs(rng, 8, 3.0))
    desirable = jnp.asarray(rng.random(8) < 0.5)
    grad_kl = jax.grad(lambda k: kto_loss(policy, ref, k, kl_ref, desirable)[0])(kl_policy)
    assert np.all(np.asarray(grad_kl) == 0)
    beta = 0.1
    grad_policy = jax.grad(lambda p: kto_loss(p, ref, kl_policy, kl_ref, desirable, beta=beta)[0])(policy)
    z0 = max(float(jnp.mean(kl_policy - kl_ref)), 0.0)
    r = np.asarray(policy - ref, np.float64)
    sign = np.where(np.asarray(desirable), 1.0, -1.0)
    s = 1 / (1 + np.exp(-beta * sign * (r - z0)))
    want = -beta * sign * s * (1 - s) / len(r)  # d/dr of mean(1 - sigmoid(beta * sign * (r - z0)))
    np.testing.assert_allclose(grad_policy, want, rtol=1e-4)


def test_completion_logps_matches_numpy():
    rng = np.random.default_rng(3)
    batch, length, vocab = 3, 9, 17
    logits = rng.normal(0, 3, (batch, length, vocab)).astype(np.float32)
    input_ids = rng.integers(0, vocab, (batch, length))
    loss_mask = np.zeros((batch, length), np.int32)
    loss_mask[0, 4:] = 1
    loss_mask[1, 2:6] = 1
    loss_mask[2, 0] = 1  # position 0 has no predicting logits: contributes nothing
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = np.zeros(batch)
    for b in range(batch):
        for t in range(1, length):
            if loss_mask[b, t]:
                want[b] += log_softmax[b, t - 1, input_ids[b, t]]
    got = completion_logps(jnp.asarray(logits), jnp.asarray(input_ids), jnp.asarray(loss_mask))
    assert got.dtype == jnp.float32 and got.shape == (batch,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert want[2] == 0.0
    # bfloat16 logits are promoted to float32 before the log-softmax
    got_bf16 = completion_logps(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(input_ids), jnp.asarray(loss_mask))
    assert got_bf16.dtype == jnp.float32
    np.testing.assert_allclose(got_bf16, want, rtol=2e-2, atol=0.2)


def test_all_rows_invalid_gives_zero_loss_and_finite_metrics():
    nan = jnp.full((4,), jnp.nan)
    valid = jnp.zeros((4,), bool)
    loss, metrics = kto_loss(nan, nan, nan, nan, jnp.asarray([True, False, True, False]), valid=valid)
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert float(metrics["count/valid"]) == 0 and float(metrics["kl"]) == 0.0
    grads = jax.grad(lambda p: kto_loss(p, nan, nan, nan, jnp.ones(4, bool), valid=valid)[0])(nan)
    assert np.all(np.asarray(grads) == 0)


def test_loss_keeps_precision_far_from_the_anchor():
    # beta * r = ±40: 1 - sigmoid(40) ~ 4e-18 underflows to 0 in float32 when computed as a difference
    policy = jnp.asarray([400.0, -400.0])
    zeros = jnp.zeros(2)
    loss, metrics = kto_loss(policy, zeros, zeros, zeros, jnp.asarray([True, False]))
    want = np.exp(-40.0) / (1 + np.exp(-40.0))
    np.testing.assert_allclose(metrics["loss/desirable"], want, rtol=1e-5)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
