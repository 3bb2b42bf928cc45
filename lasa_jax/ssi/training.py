"""Training the SSI classifier on cached features: optax AdamW, class balancing, early stopping with a real
best-parameter restore (a copy of the parameters, not a reference the next step overwrites).

One epoch is one jit-compiled `lax.scan` over fixed-size batches (rows are gathered on the device from the full
feature matrix), so an epoch compiles once and runs without per-step Python dispatch.

Loss: binary cross-entropy on the logit, per-row weights w, batch loss = sum(w * bce) / sum(w).
Class balancing (`class_balance`):
- "pos_weight" (default): shuffled batches, harmful rows weighted n_benign / n_harmful (of the training set);
- "balanced_batches": every batch holds batch_size // 2 harmful and the rest benign rows, each class walked
  through its own seeded permutations (the minority class is revisited), unweighted;
- "none": shuffled batches, unweighted (the reference's setting).
Padding rows of the last batch have weight 0. An epoch is ceil(n_train / batch_size) steps in every mode.

Optimiser: clip_by_global_norm(grad_clip) then AdamW(learning_rate, weight_decay) (decoupled decay, as PyTorch).
The learning rate is multiplied by `lr_plateau_factor` when the early-stopping metric has not improved for more than
`lr_plateau_patience` epochs (PyTorch ReduceLROnPlateau semantics, as the reference; 0 disables), passed to the
compiled epoch as a scale
of the whole update, which is exactly a learning-rate change for AdamW.

Early stopping: after each epoch the validation metric (`early_stopping_metric`: "loss" = class-balanced BCE,
lower is better; "auroc", "accuracy" (p > 0.5), "balanced_accuracy": higher is better) is compared with the best
so far; an improvement must exceed `min_delta`. The best epoch's parameters are copied to host memory (a real copy,
not a reference to buffers the next step overwrites) and restored at the end; training stops after `patience`
epochs without improvement.

Determinism: parameters are initialised from `seed`; epoch e's batch order comes from
`np.random.default_rng([seed, e])` and its dropout key from `fold_in(key(seed), e)`, so a run is a prefix of any
longer run with the same settings.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lasa_jax.ssi.mlp import (
    SSIClassifier,
    classifier_logits,
    flatten_params,
    new_classifier,
    split_classifier,
    unflatten_params,
)
from lasa_jax.statistics import roc_auc

log = logging.getLogger(__name__)

CLASS_BALANCE_MODES = ("pos_weight", "balanced_batches", "none")
EARLY_STOPPING_METRICS = {"loss": "min", "auroc": "max", "accuracy": "max", "balanced_accuracy": "max"}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; the defaults are the reference trainer's (AdamW, learning rate 1e-3, weight decay
    1e-4, clip 1.0, batches of 64, 20 epochs, patience 5, plateau patience 2 and factor 0.5); class balancing and
    the stopping metric are ours."""

    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    batch_size: int = 64
    num_epochs: int = 20
    patience: int = 5
    early_stopping_metric: str = "loss"
    min_delta: float = 0.0
    class_balance: str = "pos_weight"
    lr_plateau_patience: int = 2
    lr_plateau_factor: float = 0.5
    seed: int = 42

    def __post_init__(self):
        if self.class_balance not in CLASS_BALANCE_MODES:
            raise ValueError(f"class_balance must be one of {CLASS_BALANCE_MODES}, got {self.class_balance!r}")
        if self.early_stopping_metric not in EARLY_STOPPING_METRICS:
            raise ValueError(f"early_stopping_metric must be one of {tuple(EARLY_STOPPING_METRICS)}, "
                             f"got {self.early_stopping_metric!r}")
        for name in ("batch_size", "num_epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.class_balance == "balanced_batches" and self.batch_size < 2:
            raise ValueError("class_balance 'balanced_batches' needs batch_size >= 2")
        if self.learning_rate <= 0 or self.weight_decay < 0 or self.grad_clip <= 0 or self.min_delta < 0:
            raise ValueError("learning_rate and grad_clip must be > 0, weight_decay and min_delta >= 0")
        if self.lr_plateau_patience < 0 or not 0 < self.lr_plateau_factor <= 1:
            raise ValueError("lr_plateau_patience must be >= 0 and lr_plateau_factor in (0, 1]")


@dataclasses.dataclass
class TrainResult:
    """classifier: holds the best epoch's parameters. best_epoch / epochs_run: 0-based best epoch and the number
    of epochs run. history: one dict per epoch (train_loss, val_loss, val_accuracy, val_balanced_accuracy,
    val_auroc, learning_rate). pos_weight: the harmful-row weight used ("pos_weight" mode, else 1)."""

    classifier: SSIClassifier
    best_epoch: int
    epochs_run: int
    history: list[dict[str, Any]]
    pos_weight: float


def _check_features(features, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"{what}: expected features (N, D) and labels (N,), got {features.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what}: labels must be 0 (benign) or 1 (harmful)")
    if len(np.unique(labels)) < 2:
        raise ValueError(f"{what}: needs both harmful (1) and benign (0) rows, got only label {labels[:1].tolist()}")
    if not np.isfinite(features).all():
        raise ValueError(f"{what}: features contain NaN or infinity")
    return features, labels.astype(np.float32)


def weighted_bce(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(w * BCE(logit, label)) / sum(w), computed stably from log-sigmoids; 0 when all weights are 0."""
    losses = -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
    return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-12)


def _epoch_batches(labels: np.ndarray, settings: TrainSettings, epoch: int,
                   pos_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(steps, B) row indices and weights of one epoch (see the module docstring)."""
    n, batch = labels.size, settings.batch_size
    steps = math.ceil(n / batch)
    rng = np.random.default_rng([settings.seed, epoch])
    if settings.class_balance == "balanced_batches":
        n_pos = batch // 2
        positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        pos_stream = _cycled_permutations(positives, steps * n_pos, rng)
        neg_stream = _cycled_permutations(negatives, steps * (batch - n_pos), rng)
        rows = np.concatenate([pos_stream.reshape(steps, n_pos), neg_stream.reshape(steps, batch - n_pos)], axis=1)
        return rows.astype(np.int32), np.ones(rows.shape, np.float32)
    order = rng.permutation(n)
    rows = np.zeros(steps * batch, np.int32)
    rows[:n] = order
    weights = np.zeros(steps * batch, np.float32)
    weights[:n] = np.where(labels[order] == 1, pos_weight, 1.0)
    return rows.reshape(steps, batch), weights.reshape(steps, batch)


def _cycled_permutations(indices: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    repeats = math.ceil(count / indices.size)
    return np.concatenate([rng.permutation(indices) for _ in range(repeats)])[:count]


def make_optimizer(settings: TrainSettings) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW(learning_rate, weight_decay)."""
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip),
                       optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay))


@functools.lru_cache(maxsize=16)
def _epoch_fn(graphdef: nnx.GraphDef, learning_rate: float, weight_decay: float, grad_clip: float):
    """Compiled epoch: scan of train steps over (steps, B) row indices and weights (cached per architecture and
    optimiser, so repeated trainings reuse the compiled program)."""
    optimizer = make_optimizer(TrainSettings(learning_rate=learning_rate, weight_decay=weight_decay,
                                             grad_clip=grad_clip))

    def epoch(params, stats, opt_state, features, labels, rows, weights, lr_scale, key):
        def step(carry, batch):
            params, opt_state, key = carry
            batch_rows, batch_weights = batch
            key, dropout_key = jax.random.split(key)
            x, y = features[batch_rows], labels[batch_rows]

            def loss_fn(p):
                return weighted_bce(classifier_logits(graphdef, p, stats, x, dropout_key), y, batch_weights)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            updates = jax.tree.map(lambda u: lr_scale * u, updates)
            params = optax.apply_updates(params, updates)
            return (params, opt_state, key), (loss, jnp.sum(batch_weights))

        (params, opt_state, _), (losses, batch_weights) = jax.lax.scan(step, (params, opt_state, key), (rows, weights))
        mean_loss = jnp.sum(losses * batch_weights) / jnp.maximum(jnp.sum(batch_weights), 1e-12)
        return params, opt_state, mean_loss

    return jax.jit(epoch, donate_argnums=(0, 2))


def _validation_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    weights = np.where(labels == 1, n_neg / n_pos, 1.0).astype(np.float32)
    loss = float(weighted_bce(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)))
    flags = logits > 0.0  # p > 0.5
    tpr = float(np.mean(flags[labels == 1]))
    tnr = float(np.mean(~flags[labels == 0]))
    return {"val_loss": loss, "val_accuracy": float(np.mean(flags == (labels == 1))),
            "val_balanced_accuracy": 0.5 * (tpr + tnr), "val_auroc": roc_auc(labels.astype(int), logits)}


def predict_logits(classifier: SSIClassifier, features, chunk_size: int = 4096) -> np.ndarray:
    """(N, D) features -> (N,) float32 logits, deterministic (no dropout), in chunks padded to powers of two."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != classifier.d_model:
        raise ValueError(f"features must have shape (N, {classifier.d_model}), got {features.shape}")
    graphdef, params, stats = split_classifier(classifier)
    out = np.zeros(features.shape[0], np.float32)
    for start in range(0, features.shape[0], chunk_size):
        chunk = features[start:start + chunk_size]
        padded = max(8, 1 << (chunk.shape[0] - 1).bit_length())
        batch = np.zeros((padded, chunk.shape[1]), np.float32)
        batch[:chunk.shape[0]] = chunk
        out[start:start + chunk.shape[0]] = np.asarray(_logits_jit(graphdef, params, stats, batch))[:chunk.shape[0]]
    return out


_logits_jit = jax.jit(classifier_logits, static_argnums=0)


def _improved(value: float | None, best: float | None, mode: str, min_delta: float) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def train_classifier(train_features, train_labels, val_features, val_labels, *, hidden_dims=(), dropout: float = 0.0,
                     standardize: bool = True, settings: TrainSettings = TrainSettings()) -> TrainResult:
    """Train an `SSIClassifier` on (N, D) float32 features and 0/1 labels; select and restore the best epoch on the
    validation set (module docstring). Both sets need harmful and benign rows. standardize: fix the classifier's
    input statistics to those of the training features (`SSIClassifier.set_standardization`)."""
    train_features, train_labels = _check_features(train_features, train_labels, "training set")
    val_features, val_labels = _check_features(val_features, val_labels, "validation set")
    if val_features.shape[1] != train_features.shape[1]:
        raise ValueError(f"validation features have width {val_features.shape[1]}, training features "
                         f"{train_features.shape[1]}")
    n_pos = float(train_labels.sum())
    pos_weight = (train_labels.size - n_pos) / n_pos if settings.class_balance == "pos_weight" else 1.0
    classifier = new_classifier(train_features.shape[1], hidden_dims, dropout, settings.seed)
    if standardize:
        classifier.set_standardization(train_features)
    graphdef, params, stats = split_classifier(classifier)
    opt_state = make_optimizer(settings).init(params)
    run_epoch = _epoch_fn(graphdef, settings.learning_rate, settings.weight_decay, settings.grad_clip)
    features_device = jnp.asarray(train_features)
    labels_device = jnp.asarray(train_labels)
    base_key = jax.random.key(settings.seed)
    mode = EARLY_STOPPING_METRICS[settings.early_stopping_metric]
    metric_key = f"val_{settings.early_stopping_metric}"

    history: list[dict[str, Any]] = []
    best_value, best_epoch, best_params = None, -1, None
    lr_scale, since_best, since_lr_change = 1.0, 0, 0
    for epoch in range(settings.num_epochs):
        rows, weights = _epoch_batches(train_labels, settings, epoch, pos_weight)
        params, opt_state, train_loss = run_epoch(params, stats, opt_state, features_device, labels_device, rows,
                                                  weights, jnp.float32(lr_scale), jax.random.fold_in(base_key, epoch))
        nnx.update(classifier, params)
        record = {"epoch": epoch, "train_loss": float(train_loss), "learning_rate": settings.learning_rate * lr_scale,
                  **_validation_metrics(predict_logits(classifier, val_features), val_labels)}
        history.append(record)
        if _improved(record[metric_key], best_value, mode, settings.min_delta):
            best_value, best_epoch, best_params = record[metric_key], epoch, flatten_params(classifier)
            since_best = since_lr_change = 0
        else:
            since_best += 1
            since_lr_change += 1
        log.info("SSI epoch %d: train loss %.4f, val loss %.4f, val acc %.4f, val AUROC %s, lr %.2e%s", epoch,
                 record["train_loss"], record["val_loss"], record["val_accuracy"], record["val_auroc"],
                 record["learning_rate"], " (best)" if best_epoch == epoch else "")
        if since_best >= settings.patience:
            break
        if settings.lr_plateau_patience and since_lr_change > settings.lr_plateau_patience:
            lr_scale *= settings.lr_plateau_factor
            since_lr_change = 0
    if best_params is None:  # the metric was undefined in every epoch
        raise ValueError(f"early-stopping metric {metric_key} was undefined in every epoch")
    unflatten_params(classifier, best_params, where="best epoch")
    return TrainResult(classifier, best_epoch, len(history), history, float(pos_weight))
