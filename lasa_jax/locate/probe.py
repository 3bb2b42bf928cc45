"""Where safety is decodable: a cheap harmful-vs-benign linear probe's validation AUROC at every residual index.

    result = layer_probe_auroc(features, labels, group_ids, seed=0)   # features (L+1, N, D), labels (N,) 0/1/-1

Used by Locate (`lasa_jax.locate.stage`) on the same one-pass all-layer capture as the silhouettes, so a user sees,
beside S_sem - S_lang, whether harmful and benign prompts are linearly separable at each layer before training an SSI.

Conventions
-----------
- labels: 1 harmful, 0 benign, -1 (or any other value) unknown: rows with unknown labels are left out.
- Split (`grouped_split`): by query group, so the translations of one query never straddle train and val; the
  groups of each class (a group's label is its first labelled row's) are permuted with
  `np.random.default_rng(seed)` and the first round(val_fraction * count) (at least 1) of each class go to val.
- Features per residual index: rows L2-normalised, then standardised with the TRAIN rows' per-feature mean and
  standard deviation (std 0 -> 1).
- Probe: L2-regularised logistic regression, the objective of `sklearn.linear_model.LogisticRegression(C=C)`:
  sum_i log(1 + exp(-y_i (w . x_i + b))) + ||w||^2 / (2 C), intercept b unpenalised, minimised by `num_steps`
  full-batch Newton steps from w = 0, b = 0 (Cholesky solve of the (D+1) x (D+1) Hessian). All residual indices of
  a chunk are fitted in one jitted vmap; chunks of at most `max_chunk_bytes` bound the device memory. Cost per
  layer: num_steps x 2 N_train (D+1)^2 flops (SmolLM2, N_train 2,266, D 576, 15 steps, 31 indices: ~0.9 TFLOP).
- AUROC (`auroc`): P(score of a random harmful val row > score of a random benign one), ties 1/2 (average ranks;
  equals `sklearn.metrics.roc_auc_score`), in jnp so it runs inside the same jit.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PROBE_KIND = "logistic regression (Newton), L2-normalised + standardised features"
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Per-residual-index validation AUROC (L+1,) of the probe, or None with `reason` when it could not run."""

    auroc: np.ndarray | None
    reason: str | None
    settings: dict

    def to_json_dict(self) -> dict:
        return {**self.settings, "reason": self.reason,
                "auroc": None if self.auroc is None else [float(v) for v in self.auroc]}


# ------------------------------------------------------------------------------------------------ jitted core


def auroc(labels: jax.Array, scores: jax.Array, mask: jax.Array) -> jax.Array:
    """AUROC of `scores` (N,) for 0/1 `labels` (N,) over rows where `mask` (N,) is True (average ranks, ties 1/2).

    Average rank of each masked score = 1 + #(masked scores below) + (#(masked scores equal) - 1) / 2, from one
    sort; NaN when a class is absent among the masked rows."""
    order = jnp.argsort(jnp.where(mask, scores, jnp.inf))
    sorted_scores = jnp.where(mask, scores, jnp.inf)[order]
    count = jnp.sum(mask)
    below = jnp.searchsorted(sorted_scores, scores, side="left")
    not_above = jnp.searchsorted(sorted_scores, scores, side="right")
    ranks = 1.0 + below + (not_above - below - 1) / 2.0  # 1-based average ranks among the masked rows
    positive = mask & (labels == 1)
    n_pos = jnp.sum(positive)
    n_neg = count - n_pos
    u = jnp.sum(jnp.where(positive, ranks, 0.0)) - n_pos * (n_pos + 1) / 2.0
    return jnp.where((n_pos > 0) & (n_neg > 0), u / jnp.maximum(n_pos * n_neg, 1), jnp.nan)


def _standardised(train: jax.Array, val: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rows of train (N_t, D) and val (N_v, D) L2-normalised, then standardised with the train rows' mean and std."""
    def unit(x):
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _TINY)

    train, val = unit(train), unit(val)
    mean = jnp.mean(train, axis=0)
    std = jnp.std(train, axis=0)
    scale = jnp.where(std > _TINY, std, 1.0)
    return (train - mean) / scale, (val - mean) / scale


def fit_logistic(x: jax.Array, labels: jax.Array, weights: jax.Array, *, c: float,
                 num_steps: int) -> tuple[jax.Array, jax.Array]:
    """Minimise sum_i weights_i log(1 + exp(-y_i (w . x_i + b))) + ||w||^2 / (2 c) (y = +-1 from 0/1 labels, b
    unpenalised) by `num_steps` Newton steps from zero. x (N, D), labels (N,), weights (N,) (0 = row unused).
    Returns (w (D,), b ())."""
    n, d = x.shape
    design = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)  # (N, D + 1), last column = intercept
    penalty = jnp.concatenate([jnp.full((d,), 1.0 / c, x.dtype), jnp.zeros((1,), x.dtype)])
    target = labels.astype(x.dtype)

    def step(theta, _):
        p = jax.nn.sigmoid(design @ theta)
        grad = design.T @ (weights * (p - target)) + penalty * theta
        curvature = weights * p * (1.0 - p)
        hessian = (design * curvature[:, None]).T @ design + jnp.diag(penalty + _TINY)
        return theta - jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(hessian), grad), None

    theta, _ = jax.lax.scan(step, jnp.zeros((d + 1,), x.dtype), None, length=num_steps)
    return theta[:d], theta[d]


@functools.partial(jax.jit, static_argnames=("c", "num_steps"))
def _probe_aurocs_jit(train_layers, train_labels, val_layers, val_labels, *, c, num_steps):
    """train_layers (K, N_t, D), val_layers (K, N_v, D), labels 0/1 -> val AUROC (K,), one vmap over the K layers."""
    def one_layer(train, val):
        train, val = _standardised(train.astype(jnp.float32), val.astype(jnp.float32))
        w, b = fit_logistic(train, train_labels, jnp.ones(train.shape[0], jnp.float32), c=c, num_steps=num_steps)
        return auroc(val_labels, val @ w + b, jnp.ones(val.shape[0], bool))

    return jax.vmap(one_layer)(train_layers, val_layers)


# --------------------------------------------------------------------------------------------- host wrappers


def grouped_split(labels: Sequence[int], group_ids: Sequence[Any], *, val_fraction: float = 0.25,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train (N,) bool, val (N,) bool) over the labelled rows (label 0 or 1), split by query group and stratified
    by the group's class (module docstring). Rows with other labels are in neither.

    Deliberately not `lasa_jax.data.groups.grouped_split` (named multi-way splits of labelled records, a group's
    class = its maximum label, train cut first): this one works on row arrays with unlabelled rows and draws the val
    groups first, and its draws define the probe AUROC of existing Locate runs."""
    labels = np.asarray(labels)
    group_ids = np.asarray(group_ids)
    labelled = np.isin(labels, (0, 1))
    groups, first_row = np.unique(group_ids[labelled], return_index=True)
    group_class = labels[labelled][first_row]
    rng = np.random.default_rng(seed)
    val_groups = []
    for cls in (0, 1):
        members = rng.permutation(groups[group_class == cls])
        if len(members) >= 2:
            val_groups.extend(members[:max(1, int(round(val_fraction * len(members))))].tolist())
    val = labelled & np.isin(group_ids, np.array(val_groups, dtype=group_ids.dtype))
    return labelled & ~val, val


def _unavailable_reason(labels: np.ndarray, train: np.ndarray, val: np.ndarray) -> str | None:
    labelled = np.isin(labels, (0, 1))
    if not labelled.any():
        return "no harmful/benign labels in the capture (every label is unknown)"
    for name, rows in (("train", train), ("val", val)):
        present = set(labels[rows].tolist())
        if present != {0, 1}:
            return (f"the grouped {name} split needs harmful and benign rows, got classes {sorted(present)} "
                    f"({int(np.sum(labels == 1))} harmful, {int(np.sum(labels == 0))} benign labelled rows)")
    return None


def layer_probe_auroc(features: Any, labels: Sequence[int], group_ids: Sequence[Any], *, seed: int = 0,
                      val_fraction: float = 0.25, c: float = 1.0, num_steps: int = 15,
                      max_chunk_bytes: int = 1 << 30) -> ProbeResult:
    """Validation AUROC of the probe at every residual index of `features` (L+1, N, D) (module docstring).

    labels (N,): 1 harmful, 0 benign, anything else unknown (left out). Returns auroc None and a `reason` when the
    labelled rows do not give both classes on both sides of the grouped split."""
    features = np.asarray(features) if not isinstance(features, jax.Array) else features
    if features.ndim != 3:
        raise ValueError(f"features (L+1, N, D) must be a 3-D array, got shape {features.shape}")
    labels = np.asarray(labels)
    if labels.shape != (features.shape[1],) or np.asarray(group_ids).shape != labels.shape:
        raise ValueError(f"labels and group_ids must have one entry per row ({features.shape[1]}), got "
                         f"{labels.shape} and {np.asarray(group_ids).shape}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = grouped_split(labels, group_ids, val_fraction=val_fraction, seed=seed)
    settings = {"kind": PROBE_KIND, "c": float(c), "num_newton_steps": int(num_steps), "val_fraction": val_fraction,
                "split": "by query group, stratified by class", "seed": int(seed),
                "num_train": int(train.sum()), "num_val": int(val.sum()),
                "num_val_harmful": int(np.sum(val & (labels == 1))),
                "num_val_benign": int(np.sum(val & (labels == 0)))}
    reason = _unavailable_reason(labels, train, val)
    if reason is not None:
        return ProbeResult(None, reason, settings)
    train_rows, val_rows = np.flatnonzero(train), np.flatnonzero(val)  # only labelled rows reach the device
    train_labels = jnp.asarray((labels[train_rows] == 1).astype(np.int32))
    val_labels = jnp.asarray((labels[val_rows] == 1).astype(np.int32))
    num_layers = features.shape[0]
    width = features.shape[2]
    per_layer_bytes = 4 * (2 * (len(train_rows) + len(val_rows)) * (width + 1) + 2 * (width + 1) ** 2)
    chunk = max(1, min(num_layers, max_chunk_bytes // per_layer_bytes))
    values = []
    for start in range(0, num_layers, chunk):
        index = np.minimum(np.arange(start, start + chunk), num_layers - 1)  # last chunk padded: one compilation
        block = np.asarray(features[index], np.float32) if chunk < num_layers else np.asarray(features, np.float32)
        aurocs = _probe_aurocs_jit(jnp.asarray(block[:, train_rows]), train_labels, jnp.asarray(block[:, val_rows]),
                                   val_labels, c=float(c), num_steps=int(num_steps))
        values.append(np.asarray(aurocs)[:min(chunk, num_layers - start)])
    return ProbeResult(np.concatenate(values).astype(np.float64), None, settings)
