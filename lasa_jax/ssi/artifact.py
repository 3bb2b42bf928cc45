"""The one SSI artifact schema, written by the trainer and read by every consumer (one residual-index convention,
one set of files and keys).

An SSI is a directory:
    config.json         `SSIConfig` (schema below), format "lasa_jax.ssi", schema_version 1
    params.safetensors  float32 parameters, dotted names (`lasa_jax.ssi.mlp`)
    metrics.json        training history and evaluation metrics (written by the trainer; optional for loading)
    metrics_per_language.png

config.json fields: residual_index (HF hidden_states entry k the features come from; 0 = embeddings, L = after the
final norm), threshold_logit (harmful iff logit > threshold_logit; chosen on logits, which do not saturate),
threshold (= sigmoid(threshold_logit), a probability kept for readers of older artifacts; an artifact without
threshold_logit, written before it existed, decides harmful iff p > threshold), threshold_rule, fpr_bound, d_model
(base model width = MLP input width), hidden_dims (MLP hidden widths, [] = linear probe), dropout, standardize
(the MLP standardises its input with fixed training-set statistics stored among the parameters), pooling ("last" |
"mean"), chat_template
(bool: prompts rendered through the chat template, else raw text), template_kwargs, max_length (prompt token
budget; longer prompts lose their oldest user-content tokens), base_model_fingerprint (`model.fingerprint` of the
frozen model the features come from), base_model_path (informational), base_model_num_layers, base_model_dtype
(parameter dtype the features were computed in), tokenizer_check (digest of probe prompts' token ids under these
settings, `features.tokenization_fingerprint`), train_languages, best_epoch.

`load_ssi(path, model=None)` reads and validates a directory (`path` may also be a workdir holding `ssi/`);
`SSIScorer(model, ssi)` checks that `model` is the base model (fingerprint and width, both named in the error) and
scores prompt strings with exactly the training-time tokenisation, truncation, pooling and residual index.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_directory, atomic_write_json, set_default_permissions
from lasa_jax.ssi.features import prompt_features, tokenization_fingerprint
from lasa_jax.ssi.metrics import DECISION_RULE, THRESHOLD_RULES
from lasa_jax.ssi.mlp import SSIClassifier, flatten_params, new_classifier, unflatten_params
from lasa_jax.ssi.plot import plot_per_language
from lasa_jax.ssi.training import predict_logits

log = logging.getLogger(__name__)

FORMAT = "lasa_jax.ssi"
SCHEMA_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
METRICS_FILE = "metrics.json"
PLOT_FILE = "metrics_per_language.png"
ARTIFACT_SUBDIR = "ssi"  # the trainer writes <workdir>/ssi


@dataclasses.dataclass(frozen=True)
class SSIConfig:
    """The content of an SSI's config.json (fields: module docstring)."""

    residual_index: int
    threshold: float
    d_model: int
    hidden_dims: tuple[int, ...]
    pooling: str
    chat_template: bool
    base_model_fingerprint: str
    train_languages: tuple[str, ...]
    max_length: int
    dropout: float = 0.0
    standardize: bool = False
    threshold_rule: str = "tpr_at_fpr"
    fpr_bound: float = 0.05
    template_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    base_model_path: str | None = None
    base_model_num_layers: int | None = None
    base_model_dtype: str | None = None
    tokenizer_check: str | None = None
    best_epoch: int | None = None
    threshold_logit: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "decision_rule": DECISION_RULE}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else (
                dict(value) if isinstance(value, Mapping) else value)
        return out

    @classmethod
    def from_json_dict(cls, data: Any, where: str) -> SSIConfig:
        """Validate and convert a config.json object; ValueError naming `where` and the field."""
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise InputError(f"{where}: field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise InputError(f"{where}: unsupported schema_version {data.get('schema_version')!r} "
                             f"(this lasa_jax reads {SCHEMA_VERSION})")

        def field(name, check, expected, default=dataclasses.MISSING):
            if name not in data:
                if default is dataclasses.MISSING:
                    raise InputError(f"{where}: missing field {name!r}")
                return default
            value = data[name]
            if not check(value):
                raise InputError(f"{where}: field {name!r} must be {expected}, got {value!r}")
            return value

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def is_str(v):
            return isinstance(v, str) and bool(v)

        return cls(
            residual_index=field("residual_index", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            threshold=float(field("threshold", is_number, "a number")),
            d_model=field("d_model", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            hidden_dims=tuple(field("hidden_dims", lambda v: isinstance(v, list) and all(is_int(h) and h >= 1
                                                                                         for h in v),
                                    "a list of positive integers")),
            pooling=field("pooling", lambda v: v in ("last", "mean"), "'last' or 'mean'"),
            chat_template=field("chat_template", lambda v: isinstance(v, bool), "true or false"),
            base_model_fingerprint=field("base_model_fingerprint", is_str, "a non-empty string"),
            train_languages=tuple(field("train_languages", lambda v: isinstance(v, list) and all(map(is_str, v)),
                                        "a list of language codes")),
            max_length=field("max_length", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            dropout=float(field("dropout", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)", 0.0)),
            standardize=field("standardize", lambda v: isinstance(v, bool), "true or false", False),
            threshold_rule=field("threshold_rule", lambda v: v in THRESHOLD_RULES, f"one of {THRESHOLD_RULES}",
                                 "tpr_at_fpr"),
            fpr_bound=float(field("fpr_bound", lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]", 0.05)),
            template_kwargs=dict(field("template_kwargs", lambda v: isinstance(v, dict), "an object", {})),
            base_model_path=field("base_model_path", lambda v: v is None or isinstance(v, str), "a string", None),
            base_model_num_layers=field("base_model_num_layers", lambda v: v is None or is_int(v), "an integer",
                                        None),
            base_model_dtype=field("base_model_dtype", lambda v: v is None or isinstance(v, str), "a string", None),
            tokenizer_check=field("tokenizer_check", lambda v: v is None or isinstance(v, str), "a string", None),
            best_epoch=field("best_epoch", lambda v: v is None or is_int(v), "an integer", None),
            threshold_logit=field("threshold_logit", lambda v: v is None or is_number(v), "a number", None),
        )


@dataclasses.dataclass
class SSI:
    """A loaded (or freshly trained) SSI: its config, the classifier, and the directory it came from (or None)."""

    config: SSIConfig
    classifier: SSIClassifier
    path: str | None = None

    def __post_init__(self):
        if self.classifier.d_model != self.config.d_model or self.classifier.hidden_dims != self.config.hidden_dims:
            raise InputError(f"classifier (d_model {self.classifier.d_model}, hidden_dims "
                             f"{list(self.classifier.hidden_dims)}) does not match the config (d_model "
                             f"{self.config.d_model}, hidden_dims {list(self.config.hidden_dims)})")

    def logits(self, features) -> np.ndarray:
        """(N, d_model) features -> (N,) float32 logits of p(harmful)."""
        return predict_logits(self.classifier, features)

    def probabilities(self, features) -> np.ndarray:
        """(N, d_model) features -> (N,) float32 p(harmful) = sigmoid(logit)."""
        return sigmoid(self.logits(features))

    def decide(self, logits) -> np.ndarray:
        """(N,) logits -> (N,) bool: harmful iff logit > threshold_logit (an artifact without threshold_logit: iff
        sigmoid(logit) > threshold, its rule when written)."""
        logits = np.asarray(logits)
        if self.config.threshold_logit is None:
            return sigmoid(logits) > self.config.threshold
        return logits > self.config.threshold_logit


# ------------------------------------------------------------------------------------------------ save / load


def save_ssi(path: str | os.PathLike, ssi: SSI, *, metrics: Mapping[str, Any] | None = None,
             overwrite: bool = False) -> str:
    """Write the SSI directory atomically (nothing appears at `path` until every file is complete).

    metrics: optional metrics.json content; if it has "evaluation" (set name -> `evaluate_by_language` output) the
    per-language PNG is drawn from it. Returns the absolute path. FileExistsError if `path` exists and not overwrite.
    """
    from safetensors.numpy import save_file

    with atomic_directory(path, overwrite=overwrite) as tmp:
        atomic_write_json(os.path.join(tmp, CONFIG_FILE), ssi.config.to_json_dict())
        save_file(flatten_params(ssi.classifier), os.path.join(tmp, PARAMS_FILE),
                  metadata={"format": FORMAT, "schema_version": str(SCHEMA_VERSION)})
        set_default_permissions(os.path.join(tmp, PARAMS_FILE))  # safetensors writes owner-only files
        if metrics is not None:
            atomic_write_json(os.path.join(tmp, METRICS_FILE), dict(metrics))
            if metrics.get("evaluation"):
                plot_per_language(metrics["evaluation"], os.path.join(tmp, PLOT_FILE),
                                  title=f"SSI at residual index {ssi.config.residual_index}, threshold "
                                        f"{_threshold_text(ssi.config)} ({ssi.config.threshold_rule})")
    return os.fspath(path) if storage.is_url(path) else os.path.abspath(path)


def sigmoid(logits) -> np.ndarray:
    """float32 sigmoid of float32 logits (computed in float64)."""
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))).astype(np.float32)


def _threshold_text(config: SSIConfig) -> str:
    if config.threshold_logit is None:
        return f"p > {config.threshold:.4g}"
    return f"logit > {config.threshold_logit:.4g} (p > {config.threshold:.4g})"


def resolve_ssi_dir(path: str | os.PathLike) -> pathlib.Path:
    """The SSI directory: `path` itself if it holds config.json and params.safetensors, else `path/ssi` (a trainer
    workdir, whose own config.json is the run config)."""
    path = storage.to_path(path)
    for candidate in (path, path / ARTIFACT_SUBDIR):
        if (candidate / CONFIG_FILE).is_file() and (candidate / PARAMS_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"no SSI at {path}: expected {CONFIG_FILE} and {PARAMS_FILE} in it or in "
                            f"{path / ARTIFACT_SUBDIR}")


def load_ssi(path: str | os.PathLike, model=None) -> SSI:
    """Read an SSI directory (or a trainer workdir holding `ssi/`); with `model`, also check it is the base model
    (`check_base_model`)."""

    directory = resolve_ssi_dir(path)
    config_path = directory / CONFIG_FILE
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{config_path}: not valid JSON ({err})") from err
    config = SSIConfig.from_json_dict(data, str(config_path))
    params_path = directory / PARAMS_FILE
    if not params_path.is_file():
        raise FileNotFoundError(f"{params_path} not found (the SSI parameters)")
    classifier = new_classifier(config.d_model, config.hidden_dims, config.dropout, seed=0)
    unflatten_params(classifier, storage.load_safetensors(params_path), where=str(params_path))
    ssi = SSI(config, classifier, str(directory))
    if model is not None:
        check_base_model(ssi, model)
    return ssi


def check_base_model(ssi: SSI, model) -> None:
    """ValueError unless `model` is the SSI's base model: same fingerprint and width (both values named)."""
    where = ssi.path or "SSI"
    if model.fingerprint != ssi.config.base_model_fingerprint:
        raise InputError(f"{where}: the SSI was trained on features of the model with fingerprint "
                         f"{ssi.config.base_model_fingerprint!r} ({ssi.config.base_model_path or 'path unknown'}), but "
                         f"the given model has fingerprint {model.fingerprint!r} ({model.source_path}); load the "
                         f"base model the SSI was trained on")
    if model.config.hidden_size != ssi.config.d_model:
        raise InputError(f"{where}: the SSI expects d_model {ssi.config.d_model} but the given model has hidden_size "
                         f"{model.config.hidden_size}")
    if not ssi.config.residual_index <= model.config.num_layers:
        raise InputError(f"{where}: residual_index {ssi.config.residual_index} exceeds the model's "
                         f"{model.config.num_layers} layers")
    if ssi.config.base_model_dtype and ssi.config.base_model_dtype != model.config.param_dtype:
        log.warning("%s: the SSI features were computed with %s parameters, this model holds %s; scores may differ "
                    "slightly", where, ssi.config.base_model_dtype, model.config.param_dtype)


# ------------------------------------------------------------------------------------------------------ scorer


class SSIScorer:
    """Scores prompt strings with an SSI on its base model.

    `probs, flags = scorer.score(prompts)`: probs (N,) float32 p(harmful), flags (N,) bool (`SSI.decide`: logit >
    threshold_logit). `scorer.score_logits(prompts)` returns (logits, flags).
    `scorer(prompts)` returns the flags only (the callable `assign_latent_labels(mode="ssi")` expects).
    The tokenizer defaults to the one in `model.source_path`; its rendering of fixed probe prompts must match the
    SSI's `tokenizer_check`, else ValueError.
    """

    def __init__(self, model, ssi: SSI, tokenizer=None, *, batch_size: int | None = None, progress: bool = False):
        check_base_model(ssi, model)
        if tokenizer is None:
            if not model.source_path:
                raise InputError("SSIScorer: pass the tokenizer (the model has no source_path to load it from)")
            from lasa_jax.models.loading import load_tokenizer

            tokenizer = load_tokenizer(model.source_path)
        config = ssi.config
        if config.tokenizer_check is not None:
            check = tokenization_fingerprint(tokenizer, chat_template=config.chat_template,
                                             max_length=config.max_length, template_kwargs=config.template_kwargs)
            if check != config.tokenizer_check:
                raise InputError(f"{ssi.path or 'SSI'}: the tokenizer renders probe prompts differently from the one "
                                 f"the SSI was trained with (tokenizer_check {check!r} != {config.tokenizer_check!r}, "
                                 f"chat_template={config.chat_template})")
        self.model = model
        self.ssi = ssi
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress

    @property
    def threshold(self) -> float:
        """The probability threshold (sigmoid of threshold_logit), for reports."""
        return self.ssi.config.threshold

    @property
    def threshold_logit(self) -> float | None:
        """The logit threshold the flags use (None for an artifact written before it existed)."""
        return self.ssi.config.threshold_logit

    def features(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, d_model) float32 features, computed exactly as at training time."""
        config = self.ssi.config
        return prompt_features(self.model, self.tokenizer, list(prompts), residual_index=config.residual_index,
                               pooling=config.pooling, chat_template=config.chat_template,
                               max_length=config.max_length, template_kwargs=config.template_kwargs,
                               batch_size=self.batch_size, progress=self.progress)

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N,) float32, harmful flags (N,) bool) of prompt strings."""
        if isinstance(prompts, str):
            raise InputError("SSIScorer.score takes a list of prompt strings, got a single string")
        logits, flags = self.score_logits(prompts)
        return sigmoid(logits), flags

    def score_logits(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N,) float32, harmful flags (N,) bool) of prompt strings."""
        if isinstance(prompts, str):
            raise InputError("SSIScorer.score_logits takes a list of prompt strings, got a single string")
        logits = self.ssi.logits(self.features(prompts))
        return logits, self.ssi.decide(logits)

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        return self.score(prompts)[1]
