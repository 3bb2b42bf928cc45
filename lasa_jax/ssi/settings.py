"""The SSI stage's settings: the one reader and validator of an SSI config section (configs/ssi.py, where each
field is described).

`settings(config) -> SSISettings` checks every value before any work and names a bad field as
`config_field("threshold.rule")` spells it; `data_settings(config.data)` does the same for the data section alone
(`lasa_jax.ssi.data.load_ssi_data` takes its result). The model (`model_path`, dtype, compute_dtype,
attention_backend) is read by `lasa_jax.models.loading.read_model_settings`; `model_path` is required only when
`run` loads the model. `run_hash` identifies the whole section (hashed as written, so a finished artifact of the
same configuration is recognised across versions).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from lasa_jax.data.languages import normalize_language
from lasa_jax.infra.base_config import template_kwargs
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.capture import POOLINGS
from lasa_jax.models.loading import ModelSettings, read_model_settings
from lasa_jax.ssi.metrics import THRESHOLD_RULES
from lasa_jax.ssi.mlp import resolve_hidden_dims
from lasa_jax.ssi.training import TrainSettings

DATA_SOURCES = ("polyrefuse", "jsonl", "authors")


@dataclasses.dataclass(frozen=True)
class SSIDataSettings:
    """`config.data`: where the labelled prompts come from and how they are split (`lasa_jax.ssi.data`).

    train_languages: ISO 639-1 codes, at least one; test_languages: the cross-lingual test languages, those of
    train_languages removed (empty: every other language of the source). root "" = no shared data folder.
    """

    source: str
    root: str
    train_languages: tuple[str, ...]
    test_languages: tuple[str, ...]
    include_flores: bool
    flores_split: str
    allow_missing_held_out: bool
    eval_multijail: bool
    dedup_jaccard: float  # 0 = off
    dedup_language: str
    max_groups_per_split: int  # 0 = all
    jsonl_path: str
    jsonl_splits: tuple[str, ...]
    unsafe_train_path: str
    ultrafeedback_dir: str
    ultrafeedback_per_language: int  # 0 = all
    val_fraction: float
    test_fraction: float


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
    """`config.ssi`: the MLP (`lasa_jax.ssi.mlp`). hidden_dims: the spec `resolve_hidden_dims` reads ("d_model",
    "256,128", "" = a linear probe), resolved once the model's width is known."""

    hidden_dims: str
    dropout: float
    standardize: bool


@dataclasses.dataclass(frozen=True)
class ThresholdSettings:
    """`config.threshold`: the rule choosing the decision threshold on validation logits (`lasa_jax.ssi.metrics`)."""

    rule: str
    fpr_bound: float


@dataclasses.dataclass(frozen=True)
class SSISettings:
    """Everything the SSI stage reads from its config. residual_index < 0: k* of `locate_workdir`;
    capture_batch_size None = automatic; feature_cache_dir "" = `<workdir>/feature_cache`; run_hash: 16 hex of the
    section's SHA-256 (recorded in metrics.json)."""

    model: ModelSettings
    residual_index: int
    locate_workdir: str
    pooling: str
    chat_template: bool
    template_kwargs: Mapping[str, Any]
    max_length: int
    capture_batch_size: int | None
    feature_cache_dir: str
    overwrite: bool
    seed: int
    data: SSIDataSettings
    classifier: ClassifierSettings
    train: TrainSettings
    threshold: ThresholdSettings
    run_hash: str


def _fail(field: str, expected: str, value: Any) -> InputError:
    return InputError(f"{config_field(field)} must be {expected}, got {value!r}")


def _languages(values, field: str) -> tuple[str, ...]:
    """ISO codes of a list of languages (order kept, duplicates dropped); InputError naming `field`."""
    try:
        return tuple(dict.fromkeys(normalize_language(v) for v in values))
    except ValueError as err:
        raise InputError(f"{config_field(field)}: {err}") from None


def data_settings(data) -> SSIDataSettings:
    """Read and validate the data section (`config.data` of configs/ssi.py)."""
    source = data.source
    if source not in DATA_SOURCES:
        raise InputError(f"{config_field('data.source')} must be one of {DATA_SOURCES}, got {source!r}")
    train_languages = _languages(data.train_languages, "data.train_languages")
    if not train_languages:
        raise InputError(f"{config_field('data.train_languages')} must name at least one language")
    test_languages = tuple(lang for lang in _languages(data.test_languages, "data.test_languages")
                           if lang not in train_languages)
    root = str(data.root or "")
    if source == "polyrefuse" and not root:
        raise InputError(f"{config_field('data.root')} is required for data.source='polyrefuse' (the shared data "
                         "folder holding polyrefuse/ and flores200_sib200/)")
    if source == "jsonl" and not data.jsonl_path:
        raise InputError(f"{config_field('data.jsonl_path')} is required for data.source='jsonl'")
    if source == "authors" and (not data.unsafe_train_path or not data.ultrafeedback_dir):
        raise InputError(f"data.source='authors' needs {config_field('data.unsafe_train_path')} (unsafe_train.json) "
                         f"and {config_field('data.ultrafeedback_dir')} (monolingual_first1000_<lang>.json files)")
    val_fraction, test_fraction = float(data.val_fraction), float(data.test_fraction)
    if source != "polyrefuse":
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise _fail(f"data.{name}", "a fraction in [0, 1)", value)
        if val_fraction + test_fraction >= 1.0:
            raise InputError(f"{config_field('data.val_fraction')} + {config_field('data.test_fraction')} must be "
                             f"below 1 (the rest trains), got {val_fraction} + {test_fraction}")
    dedup_jaccard = float(data.dedup_jaccard)
    if not 0.0 <= dedup_jaccard <= 1.0:
        raise _fail("data.dedup_jaccard", "a Jaccard similarity in [0, 1] (0 = off)", data.dedup_jaccard)
    for name in ("max_groups_per_split", "ultrafeedback_per_language"):
        if int(data[name]) < 0:
            raise _fail(f"data.{name}", "an integer >= 0 (0 = all)", data[name])
    return SSIDataSettings(
        source=source, root=root, train_languages=train_languages, test_languages=test_languages,
        include_flores=bool(data.include_flores), flores_split=str(data.flores_split),
        allow_missing_held_out=bool(data.get("allow_missing_held_out", False)),
        eval_multijail=bool(data.eval_multijail), dedup_jaccard=dedup_jaccard,
        dedup_language=str(data.dedup_language), max_groups_per_split=int(data.max_groups_per_split),
        jsonl_path=str(data.jsonl_path or ""), jsonl_splits=tuple(data.jsonl_splits),
        unsafe_train_path=str(data.unsafe_train_path or ""), ultrafeedback_dir=str(data.ultrafeedback_dir or ""),
        ultrafeedback_per_language=int(data.ultrafeedback_per_language), val_fraction=val_fraction,
        test_fraction=test_fraction)


def _classifier_settings(ssi) -> ClassifierSettings:
    try:
        resolve_hidden_dims(ssi.hidden_dims, d_model=1)  # the spec's syntax; widths are resolved at run time
    except ValueError as err:
        raise InputError(f"{config_field('ssi.hidden_dims')}: {err}") from None
    if not 0.0 <= float(ssi.dropout) < 1.0:
        raise _fail("ssi.dropout", "a number in [0, 1)", ssi.dropout)
    return ClassifierSettings(hidden_dims=ssi.hidden_dims, dropout=float(ssi.dropout),
                              standardize=bool(ssi.standardize))


def _train_settings(config) -> TrainSettings:
    t = config.train
    try:
        return TrainSettings(learning_rate=t.learning_rate, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                             batch_size=t.batch_size, num_epochs=t.num_epochs, patience=t.patience,
                             early_stopping_metric=t.early_stopping_metric, min_delta=t.min_delta,
                             class_balance=t.class_balance, lr_plateau_patience=t.lr_plateau_patience,
                             lr_plateau_factor=t.lr_plateau_factor, seed=config.seed)
    except ValueError as err:  # TrainSettings names the field within the section
        raise InputError(f"{config_field('train')}: {err}") from None


def _threshold_settings(threshold) -> ThresholdSettings:
    if threshold.rule not in THRESHOLD_RULES:
        raise _fail("threshold.rule", f"one of {THRESHOLD_RULES}", threshold.rule)
    if not 0.0 <= float(threshold.fpr_bound) <= 1.0:
        raise _fail("threshold.fpr_bound", "a rate in [0, 1]", threshold.fpr_bound)
    return ThresholdSettings(rule=threshold.rule, fpr_bound=float(threshold.fpr_bound))


def settings(config) -> SSISettings:
    """Read and validate an SSI config section (configs/ssi.py)."""
    threshold = _threshold_settings(config.threshold)
    if config.pooling not in POOLINGS:
        raise _fail("pooling", f"one of {POOLINGS}", config.pooling)
    if int(config.max_length) < 1:
        raise _fail("max_length", "an integer >= 1 (the prompt token budget)", config.max_length)
    if int(config.capture_batch_size) < 0:
        raise _fail("capture_batch_size", "an integer >= 0 (0 = automatic)", config.capture_batch_size)
    run_hash = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return SSISettings(
        model=read_model_settings(config), residual_index=int(config.residual_index),
        locate_workdir=str(config.locate_workdir or ""), pooling=config.pooling,
        chat_template=bool(config.chat_template), template_kwargs=template_kwargs(config),
        max_length=int(config.max_length), capture_batch_size=int(config.capture_batch_size) or None,
        feature_cache_dir=str(config.feature_cache_dir or ""), overwrite=bool(config.overwrite), seed=int(config.seed),
        data=data_settings(config.data), classifier=_classifier_settings(config.ssi), train=_train_settings(config),
        threshold=threshold, run_hash=run_hash)
