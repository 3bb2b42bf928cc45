"""The SSI network: an MLP from one residual-stream vector to one logit; p(harmful) = sigmoid(logit).

Layout (flax NNX), for hidden widths (h_1, ..., h_n):
    x (N, d_model) float32 -> (x - input_mean) / input_std
      -> [Linear(h_i) -> LayerNorm(eps 1e-5) -> GELU (exact, erf) -> Dropout] x n -> Linear(1)
input_mean / input_std are fixed (not trained) per-dimension statistics of the training features
(`set_standardization`; std = sqrt(var + 1e-6)), or 0 / 1 when standardisation is off (the reference implementation
feeds raw features). Residual streams are off-centre and have a few very large dimensions; standardising
them makes the first layer's start well conditioned. They are part of the stored parameters, so inference applies
exactly the training-time transform.
No hidden layer (hidden_dims = ()) is a linear probe. The paper's released SSIs are "SimpleMLP" with one hidden
layer of width about d_model (the default here); the authors' trainer default "DeepMLP" is hidden_dims (256, 128)
with dropout 0.2. LayerNorm eps and exact GELU match PyTorch's defaults, as in the reference.

Parameters are flattened to dotted names for storage (`flatten_params` / `unflatten_params`):
    input_mean (d_model,), input_std (d_model,), hidden.<i>.linear.kernel (in, out), hidden.<i>.linear.bias (out,),
    hidden.<i>.norm.scale (out,),
    hidden.<i>.norm.bias (out,), output.kernel (h_n, 1), output.bias (1,)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lasa_jax.infra.trees import describe_diff, flatten, shape_diff, unflatten

LAYER_NORM_EPS = 1e-5
STANDARDIZE_EPS = 1e-6


class FeatureStats(nnx.Variable):
    """Fixed input statistics (not trained, not weight-decayed)."""


def resolve_hidden_dims(spec: Any, d_model: int) -> tuple[int, ...]:
    """Hidden widths from a config value: a sequence of ints and/or "d_model", or a comma-separated string of them
    ("d_model", "256,128", "" for a linear probe). Returns positive ints."""
    if spec is None:
        raise ValueError("hidden_dims must be given (e.g. 'd_model', '256,128' or '' for a linear probe)")
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    dims = []
    for item in items:
        if isinstance(item, str) and item == "d_model":
            dims.append(int(d_model))
            continue
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"hidden_dims: expected positive integers or 'd_model', got {item!r} in "
                             f"{spec!r}") from None
        if value < 1 or (not isinstance(item, str) and value != item):
            raise ValueError(f"hidden_dims: expected positive integers or 'd_model', got {item!r} in {spec!r}")
        dims.append(value)
    return tuple(dims)


class HiddenLayer(nnx.Module):
    """Linear -> LayerNorm (GELU and dropout are applied by the caller)."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(in_features, out_features, rngs=rngs)
        self.norm = nnx.LayerNorm(out_features, epsilon=LAYER_NORM_EPS, rngs=rngs)


class SSIClassifier(nnx.Module):
    """MLP classifier (see the module docstring). `model(features, dropout_key=None)` -> logits (N,) float32.

    Dropout is active only when a `dropout_key` is passed (training); without one the call is deterministic.
    """

    def __init__(self, d_model: int, hidden_dims: Sequence[int] = (), dropout: float = 0.0, *, rngs: nnx.Rngs):
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.d_model = int(d_model)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.dropout_rate = float(dropout)
        self.input_mean = FeatureStats(jnp.zeros((self.d_model,), jnp.float32))
        self.input_std = FeatureStats(jnp.ones((self.d_model,), jnp.float32))
        widths = (self.d_model, *self.hidden_dims)
        self.hidden = nnx.List([HiddenLayer(widths[i], widths[i + 1], rngs=rngs)
                                for i in range(len(self.hidden_dims))])
        self.output = nnx.Linear(widths[-1], 1, rngs=rngs)
        self.dropout = nnx.Dropout(self.dropout_rate)

    def __call__(self, features: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        x = (features.astype(jnp.float32) - self.input_mean[...]) / self.input_std[...]
        for layer in self.hidden:
            x = jax.nn.gelu(layer.norm(layer.linear(x)), approximate=False)
            if dropout_key is not None and self.dropout_rate > 0:
                dropout_key, key = jax.random.split(dropout_key)
                x = self.dropout(x, deterministic=False, rngs=key)
        return self.output(x)[..., 0]

    def set_standardization(self, features) -> None:
        """Set input_mean / input_std from (N, d_model) training features (float64 statistics)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.d_model or features.shape[0] < 1:
            raise ValueError(f"standardisation needs features of shape (N >= 1, {self.d_model}), got {features.shape}")
        self.input_mean[...] = jnp.asarray(features.mean(axis=0), jnp.float32)
        self.input_std[...] = jnp.asarray(np.sqrt(features.var(axis=0) + STANDARDIZE_EPS), jnp.float32)

    @property
    def standardized(self) -> bool:
        """Whether the input statistics differ from the identity (0 mean, unit std)."""
        return bool(jnp.any(self.input_mean[...] != 0) or jnp.any(self.input_std[...] != 1))

    def num_params(self) -> int:
        """Trainable parameter count (the fixed input statistics excluded)."""
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.to_pure_dict(nnx.state(self, nnx.Param))))


def new_classifier(d_model: int, hidden_dims: Sequence[int], dropout: float, seed: int) -> SSIClassifier:
    """Freshly initialised classifier (flax default initialisers, `nnx.Rngs(params=seed)`)."""
    return SSIClassifier(d_model, hidden_dims, dropout, rngs=nnx.Rngs(params=seed))


def split_classifier(classifier: SSIClassifier) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, trainable params, fixed input statistics) for the pure functions below."""
    return nnx.split(classifier, nnx.Param, FeatureStats)


def classifier_logits(graphdef: nnx.GraphDef, params: nnx.State, stats: nnx.State, features: jax.Array,
                      dropout_key: jax.Array | None = None) -> jax.Array:
    """Pure forward: (N, D) features -> (N,) logits of `nnx.merge(graphdef, params, stats)`."""
    return nnx.merge(graphdef, params, stats)(features, dropout_key=dropout_key)


# ------------------------------------------------------------------------------------------ parameter storage


def flatten_params(classifier: SSIClassifier) -> dict[str, np.ndarray]:
    """Dotted name -> float32 numpy copy of every parameter (names: module docstring)."""
    return {name: np.array(value, dtype=np.float32, copy=True)
            for name, value in flatten(nnx.to_pure_dict(nnx.state(classifier))).items()}


def unflatten_params(classifier: SSIClassifier, flat: dict[str, np.ndarray], where: str = "parameters") -> None:
    """Load dotted-name arrays into `classifier` in place; ValueError naming missing, unexpected or misshaped keys."""
    expected = {name: value.shape for name, value in flatten_params(classifier).items()}
    diff = shape_diff(expected, {name: np.shape(value) for name, value in flat.items()})
    if diff:
        raise ValueError(f"{where}: parameters do not match the architecture (d_model {classifier.d_model}, "
                         f"hidden_dims {list(classifier.hidden_dims)}):\n{describe_diff(diff)}")
    pure = unflatten({tuple(int(p) if p.isdigit() else p for p in name.split(".")): jnp.asarray(value, jnp.float32)
                      for name, value in flat.items()}, sep=None)
    state = nnx.state(classifier)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(classifier, state)
