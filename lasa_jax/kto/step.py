"""The KTO training step: one jit-compiled optimizer update over pure parameter dicts, with its optimizer, its
state and its FLOP count.

Step (one optimizer update on a global batch of B rows, `KTOStepConfig.grad_accum_steps` = A micro-batches):
  for each micro-batch m (b = B / A rows: rows m, m + A, m + 2A, ... of the global batch, so that every device
  holds its share of every micro-batch):
    kl_policy  = log π_θ of the KL rows (no gradient: z0 is gradient-stopped),
    ref, kl_ref = log π_ref of the policy and KL rows (one forward of the frozen reference over both, or the
                  precomputed values carried by the batch),
    loss_m, metrics_m = `lasa_jax.kto.loss.kto_loss` on the micro-batch; gradient of (n_m / N) * loss_m accumulated
                  (n_m valid rows in m, N in the global batch), so the accumulated loss is the mean over all rows.
  global-norm clipping, AdamW with linear warmup + cosine decay, update.

KL anchor scope: z0 is the mean over the rows of each micro-batch (all devices together), as in TRL and the
reference implementation (a per-micro-batch mean, averaged across processes). With A = 1 it is the mean
over the global batch; with A > 1 each micro-batch has its own z0, so A is not purely a memory knob: it also sets
the batch z0 is estimated on.

The policy's KL rows run as their own gradient-free forward, not concatenated with the policy rows: in one
forward the backward pass would run over the KL rows too (their cotangents are zero, but the weight-gradient
matmuls still cover them), i.e. 6 instead of 4 forward-equivalents per row without remat.

Sequence log-probabilities are computed from the final hidden states in chunks of `logits_chunk_size` positions
(`sequence_logps`): the (B, T, V) logits are never materialised, only (B, chunk, V) at a time, recomputed in the
backward pass.

Conventions: `TrainState` is a dict {"params", "opt_state", "step" (int32 scalar: updates done), "rng" (the run's
root PRNG key, uint32 (2,), saved and restored with the state; the step consumes no randomness (dropout is off, as
in the reference) and passes it through; a stochastic extension should use `fold_in(rng, step)` to stay
resume-exact)}. Batches are dicts of (B, S) int32 arrays `input_ids`, `attention_mask`, `loss_mask`,
`kl_input_ids`, `kl_attention_mask`, `kl_loss_mask`, (B,) bool `is_desirable`, `valid` and, with a precomputed
reference, (B,) float32 `ref_logps`, `kl_ref_logps` (`lasa_jax.kto.batches.KTOBatch.device_arrays`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lasa_jax.infra.errors import InputError
from lasa_jax.kto.loss import kto_loss
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.flops import forward_flops
from lasa_jax.models.logprobs import sequence_logps
from lasa_jax.sharding import constrain

TrainState = dict[str, Any]
POLICY_ROW_KEYS = ("input_ids", "attention_mask", "loss_mask")
KL_ROW_KEYS = ("kl_input_ids", "kl_attention_mask", "kl_loss_mask")


@dataclasses.dataclass(frozen=True)
class KTOStepConfig:
    """Static settings of the step (hashable). Loss: `lasa_jax.kto.loss.kto_loss`; logits_chunk_size 0 = no chunking."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    grad_accum_steps: int = 1
    logits_chunk_size: int = 128


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (HF defaults b1 0.9, b2 0.999, eps 1e-8, weight decay 0) after global-norm clipping, with a linear
    warmup from 0 over min(warmup_steps, total_steps) updates and a cosine decay to 0 at total_steps (HF
    `get_cosine_schedule_with_warmup`). Weight decay applies to matrices only (not norms or biases)."""

    learning_rate: float = 1e-6
    total_steps: int = 1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0


# ----------------------------------------------------------------------------------------------- optimizer
def learning_rate_schedule(config: OptimizerConfig) -> Callable[[jax.Array], jax.Array]:
    """step (updates done before this one) -> learning rate of this update."""
    if config.total_steps < 1:
        raise InputError(f"total_steps must be >= 1, got {config.total_steps}")
    warmup = min(max(config.warmup_steps, 0), config.total_steps)
    decay = max(config.total_steps - warmup, 1)
    peak = config.learning_rate

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup, 1)
        progress = jnp.clip((step - warmup) / decay, 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup, warm, cosine)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: every matrix (kernels, embedding, LM head), not norm
    scales or biases (as HF Trainer's decay groups). Keyed by the `Decoder.params()` names."""
    def decays(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return not (name.endswith("norm") or name.endswith("bias"))

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """clip_by_global_norm(max_grad_norm) then AdamW with `learning_rate_schedule` and `weight_decay_mask`
    (clipping off when max_grad_norm <= 0)."""
    adamw = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=weight_decay_mask)
    if config.max_grad_norm <= 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw)


def state_shardings(optimizer: optax.GradientTransformation, params: Any, param_shardings: Any,
                    mesh: Mesh) -> TrainState:
    """Shardings of the `TrainState` for `params` (arrays or ShapeDtypeStructs) sharded as `param_shardings`:
    optimizer moments follow their parameter, counters and the RNG key are replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    abstract_opt_state = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt_state,
                                          param_shardings, transform_non_params=lambda _: replicated)
    return {"params": param_shardings, "opt_state": opt_shardings, "step": replicated, "rng": replicated}


def abstract_state(optimizer: optax.GradientTransformation, abstract_params: Any, shardings: TrainState) -> TrainState:
    """The `TrainState` as ShapeDtypeStructs carrying `shardings` (a checkpoint restore target)."""
    shapes = {"params": abstract_params, "opt_state": jax.eval_shape(optimizer.init, abstract_params),
              "step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.eval_shape(lambda: jax.random.PRNGKey(0))}
    return jax.tree.map(lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                        shapes, shardings)


def init_train_state(params: Any, optimizer: optax.GradientTransformation, seed: int, shardings: TrainState, *,
                     donate_params: bool = False) -> TrainState:
    """Fresh state: the given params, optimizer state created on its shards, step 0, rng = PRNGKey(seed).

    donate_params: reuse the buffers of `params` (they are invalid afterwards), so the parameters never exist twice.
    """
    def make(params):
        return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32),
                "rng": jax.random.PRNGKey(seed)}

    return jax.jit(make, out_shardings=shardings, donate_argnums=(0,) if donate_params else ())(params)


def reference_logps(ref_params: Any, ref_config: ModelConfig, batch: dict[str, jax.Array], *,
                    mesh: Mesh | None, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """(ref_logps, kl_ref_logps), each (B,) float32: the frozen reference on the policy rows and on the KL rows,
    in one forward over the 2B rows (interleaved: row 2i is policy row i, row 2i + 1 its KL row, so each device's
    batch shard stays on that device; one pass over the weights, larger matmuls; rows do not interact)."""
    rows = [jnp.stack([batch[p], batch[k]], axis=1).reshape((-1,) + batch[p].shape[1:])
            for p, k in zip(POLICY_ROW_KEYS, KL_ROW_KEYS)]
    rows = [constrain(x, mesh, ("batch", None)) for x in rows]
    both = sequence_logps(ref_params, ref_config, *rows, mesh=mesh, chunk_size=chunk_size).reshape(-1, 2)
    return jax.lax.stop_gradient(both[:, 0]), jax.lax.stop_gradient(both[:, 1])


batch_reference_logps = jax.jit(reference_logps, static_argnames=("ref_config", "mesh", "chunk_size"))


# ----------------------------------------------------------------------------------------------- the step
def _micro_batches(batch: dict[str, jax.Array], num_micro: int, mesh: Mesh | None) -> dict[str, jax.Array]:
    """(B, ...) -> (A, B / A, ...) with micro-batch m = rows m, m + A, ... (strided, so batch shards stay local)."""
    def split(x):
        micro = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
        return constrain(micro, mesh, (None, "batch") + (None,) * (x.ndim - 1))

    return {k: split(v) for k, v in batch.items()}


def _combine_metrics(per_micro: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Merge (A,)-stacked `kto_loss` metrics of the micro-batches into global-batch values (count-weighted)."""
    counts = {name: per_micro[f"count/{name}"] for name in ("desirable", "undesirable", "valid")}
    weight_of = {"rewards/desirable": "desirable", "logps/desirable": "desirable", "loss/desirable": "desirable",
                 "rewards/undesirable": "undesirable", "logps/undesirable": "undesirable",
                 "loss/undesirable": "undesirable", "kl": "valid", "kl_raw": "valid"}
    out = {f"count/{name}": c.sum() for name, c in counts.items()}
    for key, count_name in weight_of.items():
        c = counts[count_name]
        out[key] = (per_micro[key] * c).sum() / jnp.maximum(c.sum(), 1.0)
    both = (out["count/desirable"] > 0) & (out["count/undesirable"] > 0)
    out["margin"] = jnp.where(both, out["rewards/desirable"] - out["rewards/undesirable"], 0.0)
    return out


def train_step(state: TrainState, batch: dict[str, jax.Array], ref_params: Any | None, *,
               policy_config: ModelConfig, ref_config: ModelConfig | None, optimizer: optax.GradientTransformation,
               schedule: Callable, step_config: KTOStepConfig,
               mesh: Mesh | None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update (module docstring). `ref_params` None: the batch carries `ref_logps`/`kl_ref_logps`.

    Returns (new state, metrics): the `kto_loss` metrics of the global batch plus "loss", "grad_norm" (before
    clipping), "learning_rate" and "finite" (1.0 iff loss and gradient norm are finite).
    """
    sc = step_config
    params = state["params"]
    num_rows = batch["input_ids"].shape[0]
    if num_rows % sc.grad_accum_steps:
        raise InputError(f"batch of {num_rows} rows is not divisible by grad_accum_steps={sc.grad_accum_steps}")
    micro = _micro_batches(batch, sc.grad_accum_steps, mesh)
    total_valid = jnp.maximum(batch["valid"].sum().astype(jnp.float32), 1.0)

    def micro_step(grad_sum, mb):
        kl_policy = jax.lax.stop_gradient(sequence_logps(params, policy_config, *(mb[k] for k in KL_ROW_KEYS),
                                                         mesh=mesh, chunk_size=sc.logits_chunk_size))
        if ref_params is None:
            ref, kl_ref = mb["ref_logps"], mb["kl_ref_logps"]
        else:
            ref, kl_ref = reference_logps(ref_params, ref_config, mb, mesh=mesh, chunk_size=sc.logits_chunk_size)
        share = mb["valid"].sum().astype(jnp.float32) / total_valid

        def loss_fn(p):
            logps = sequence_logps(p, policy_config, *(mb[k] for k in POLICY_ROW_KEYS), mesh=mesh,
                                   chunk_size=sc.logits_chunk_size)
            loss, metrics = kto_loss(logps, ref, kl_policy, kl_ref, mb["is_desirable"], beta=sc.beta,
                                     desirable_weight=sc.desirable_weight,
                                     undesirable_weight=sc.undesirable_weight, valid=mb["valid"])
            return share * loss, metrics

        (weighted_loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        grad_sum = jax.tree.map(lambda s, g: s + g.astype(jnp.float32), grad_sum, grads)
        return grad_sum, (weighted_loss, metrics)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grads, (weighted_losses, per_micro) = jax.lax.scan(micro_step, zeros, micro)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    metrics = _combine_metrics(per_micro)
    metrics["loss"] = weighted_losses.sum()
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = schedule(state["step"])
    metrics["finite"] = (jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])).astype(jnp.float32)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_state = {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
                 "step": state["step"] + 1, "rng": state["rng"]}
    return new_state, metrics


def make_train_step(*, policy_config: ModelConfig, ref_config: ModelConfig | None,
                    optimizer_config: OptimizerConfig, step_config: KTOStepConfig, mesh: Mesh,
                    shardings: TrainState) -> Callable:
    """`train_step` jit-compiled with its static settings bound, the state donated and pinned to `shardings`.

    Call as `step_fn(state, batch, ref_params)` (ref_params None with a precomputed reference).
    """
    optimizer = make_optimizer(optimizer_config)
    schedule = learning_rate_schedule(optimizer_config)

    def step(state, batch, ref_params):
        return train_step(state, batch, ref_params, policy_config=policy_config, ref_config=ref_config,
                          optimizer=optimizer, schedule=schedule, step_config=step_config, mesh=mesh)

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step, donate_argnums=(0,), out_shardings=(shardings, replicated))


# ----------------------------------------------------------------------------------------------- FLOPs
def step_flops(config: ModelConfig, policy_lengths: np.ndarray, kl_lengths: np.ndarray,
               online_reference: bool) -> tuple[float, float]:
    """(policy-only FLOPs, total FLOPs) of one KTO step over rows of the given real (unpadded) lengths.

    Forward FLOPs per row: `lasa_jax.models.flops.forward_flops` (weight matmuls, causal attention, LM head; backward =
    2 x forward; remat recomputation is not counted). Policy-only ("useful", as for SFT): forward + backward of the
    policy rows, 3 forwards. Total adds the policy
    forward on the KL rows and, with an online reference, its forwards on the policy and KL rows (about 6
    forward-equivalents per row online, 4 with a precomputed reference).
    """
    policy = sum(forward_flops(config, 1, int(n)) for n in policy_lengths)
    kl = sum(forward_flops(config, 1, int(n)) for n in kl_lengths)
    useful = 3.0 * policy
    total = useful + kl + (policy + kl if online_reference else 0.0)
    return useful, total


def model_flops_utilisation(flops_per_second: float, peak_flops_per_device: float | None,
                            num_devices: int) -> float | None:
    """Achieved / peak FLOP/s over all devices, or None without a peak figure."""
    if not peak_flops_per_device or peak_flops_per_device <= 0 or not math.isfinite(flops_per_second):
        return None
    return flops_per_second / (peak_flops_per_device * num_devices)
