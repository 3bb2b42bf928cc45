"""The KTO loss (Ethayarajh et al. 2024) as TRL's KTOTrainer computes it, over per-row sequence log-probabilities.

`kto_loss` is a pure jit-compiled function; the training step (`lasa_jax.kto.step`) runs the policy and reference
models and calls it. Conventions:

- A sequence log-probability is the **sum** of token log-probabilities over the completion positions
  (`lasa_jax.models.logprobs.completion_logps`).
- r = log π_θ(y|x) − log π_ref(y|x); reward = β·r.
- KL anchor z0 = max(mean over valid KL rows of (log π_θ − log π_ref), 0), gradient stopped. The KL rows pair each
  prompt with another row's completion (see `lasa_jax.kto.batches`). Called on the global batch, the mean is
  over the whole global batch (the reference averaged per-device means across processes: the same for equal
  per-device row counts).
- Desirable rows: w_d·(1 − σ(β(r − z0))); undesirable rows: w_u·(1 − σ(β(z0 − r))); loss = mean over valid rows
  (TRL concatenates the weighted per-row losses and takes their mean).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def kto_loss(policy_logps: jax.Array, ref_logps: jax.Array, kl_policy_logps: jax.Array, kl_ref_logps: jax.Array,
             is_desirable: jax.Array, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0, valid: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """KTO loss over a batch of B unpaired rows.

    Args:
      policy_logps, ref_logps: (B,) summed completion log-probs of each row under the policy / reference.
      kl_policy_logps, kl_ref_logps: (B,) the same for the KL rows (prompt of row i, another row's completion).
      is_desirable: (B,) bool (or 0/1).
      beta, desirable_weight, undesirable_weight: scalars (traced: changing them does not recompile).
      valid: optional (B,) bool; rows with False (padding of a fixed-shape batch) contribute nothing, neither to
        the loss nor to z0 nor to the metrics. Their log-probs may be anything, NaN included.

    Returns (loss, metrics); loss is a float32 scalar. Metrics (float32 scalars, no gradient):
      kl: z0 after the clamp at 0 (what TRL logs); kl_raw: before the clamp;
      rewards/desirable, rewards/undesirable: mean β·r over valid rows of that class (0 when the class is absent);
      logps/desirable, logps/undesirable: mean policy log-prob over those rows (0 when absent);
      margin: rewards/desirable − rewards/undesirable when both classes are present, else 0;
      loss/desirable, loss/undesirable: mean weighted loss over those rows (0 when absent);
      count/desirable, count/undesirable, count/valid: number of rows.
    """
    f32 = jnp.float32
    policy_logps, ref_logps = policy_logps.astype(f32), ref_logps.astype(f32)
    valid = jnp.ones(policy_logps.shape, bool) if valid is None else valid.astype(bool)
    desirable = is_desirable.astype(bool) & valid
    undesirable = ~is_desirable.astype(bool) & valid
    n_valid = valid.sum().astype(f32)
    n_desirable = desirable.sum().astype(f32)
    n_undesirable = undesirable.sum().astype(f32)

    # where() before any arithmetic on invalid rows keeps NaN/inf there out of values and gradients.
    kl_logratios = jnp.where(valid, kl_policy_logps.astype(f32) - kl_ref_logps.astype(f32), 0.0)
    kl_raw = jax.lax.stop_gradient(kl_logratios.sum() / jnp.maximum(n_valid, 1.0))
    z0 = jnp.maximum(kl_raw, 0.0)
    logratios = jnp.where(valid, policy_logps - ref_logps, 0.0)
    # 1 − σ(x) computed as σ(−x): equal, without cancellation when σ(x) rounds to 1 in float32.
    desirable_losses = desirable_weight * jax.nn.sigmoid(-beta * (logratios - z0))
    undesirable_losses = undesirable_weight * jax.nn.sigmoid(-beta * (z0 - logratios))
    losses = jnp.where(desirable, desirable_losses, jnp.where(undesirable, undesirable_losses, 0.0))
    loss = losses.sum() / jnp.maximum(n_valid, 1.0)

    def class_mean(values, mask, count):
        return jnp.where(mask, jax.lax.stop_gradient(values), 0.0).sum() / jnp.maximum(count, 1.0)

    rewards = beta * logratios
    safe_policy_logps = jnp.where(valid, policy_logps, 0.0)
    reward_desirable = class_mean(rewards, desirable, n_desirable)
    reward_undesirable = class_mean(rewards, undesirable, n_undesirable)
    metrics = {
        "kl": z0,
        "kl_raw": kl_raw,
        "rewards/desirable": reward_desirable,
        "rewards/undesirable": reward_undesirable,
        "logps/desirable": class_mean(safe_policy_logps, desirable, n_desirable),
        "logps/undesirable": class_mean(safe_policy_logps, undesirable, n_undesirable),
        "margin": jnp.where((n_desirable > 0) & (n_undesirable > 0), reward_desirable - reward_undesirable, 0.0),
        "loss/desirable": class_mean(losses, desirable, n_desirable),
        "loss/undesirable": class_mean(losses, undesirable, n_undesirable),
        "count/desirable": n_desirable,
        "count/undesirable": n_undesirable,
        "count/valid": n_valid,
    }
    return loss, metrics


