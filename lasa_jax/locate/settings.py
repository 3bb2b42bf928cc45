"""Locate's settings: the one reader and validator of a `configs/locate.py` config (field meanings: that file).

`settings(config) -> LocateSettings` checks every value before any work and names the bad field as
`config_field("selection.metric")` spells it; `data_settings(config.data)` reads the data section alone (what the
corpus functions of `lasa_jax.locate.corpus` take). The model fields are `lasa_jax.models.loading.ModelSettings`
(`read_model_settings`); the model path is required only when `run` has to load the model, so `settings` accepts
a config without one.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.data.languages import normalize_language
from lasa_jax.infra.base_config import template_kwargs
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.locate.selection import BOOTSTRAP_MODES
from lasa_jax.locate.silhouette import METRICS
from lasa_jax.models.capture import POOLINGS
from lasa_jax.models.loading import ModelSettings, read_model_settings

DATA_SOURCES = ("default", "jsonl", "hub", "translated_json", "multijail")
TSNE_MIN_ITER = 250  # sklearn's lower bound for TSNE max_iter


@dataclasses.dataclass(frozen=True)
class LocateData:
    """`config.data`: where the parallel texts come from and which of them are kept (`lasa_jax.locate.corpus`)."""
    source: str
    root: str
    path: str
    languages: tuple[str, ...]  # ISO 639-1 codes, order kept, no duplicates
    min_languages: int
    max_groups_per_source: int  # 0 = all
    splits: tuple[str, ...]
    hub_split: str
    hub_data_files: str
    hub_cache_dir: str
    allow_missing_held_out: bool
    allow_held_out: bool
    common_sources_only: bool


@dataclasses.dataclass(frozen=True)
class LocateSelection:
    """`config.selection`: the arguments of `select_bottleneck_layer`."""
    metric: str
    include_embeddings: bool
    include_final: bool
    num_bootstrap: int
    bootstrap: str
    confidence: float


@dataclasses.dataclass(frozen=True)
class LocateProbe:
    """`config.probe`: the harmful-vs-benign probe per residual index (`lasa_jax.locate.probe`)."""
    enabled: bool
    val_fraction: float
    c: float
    num_steps: int


@dataclasses.dataclass(frozen=True)
class LocateSettings:
    """Everything Locate reads from its config. probe None: the config has no probe section (probe disabled)."""
    model: ModelSettings  # model.path "" = none given (run then needs a loaded model)
    seed: int
    pooling: str
    chat_template: bool
    template_kwargs: Mapping[str, Any]
    max_length: int
    capture_batch_size: int  # 0 = auto
    reuse_activations: bool
    progress: bool
    data: LocateData
    selection: LocateSelection
    probe: LocateProbe | None
    tsne_layers: str  # comma-separated residual indices and/or "best"; "" = none (`parse_tsne_layers`)
    tsne_max_iter: int


def _fail(field: str, expected: str, value: Any) -> InputError:
    return InputError(f"{config_field(field)} must be {expected}, got {value!r}")


def _data_languages(languages: Sequence[str] | str) -> tuple[str, ...]:
    """data.languages as ISO codes (order kept, duplicates dropped; a comma-separated string is split)."""
    if isinstance(languages, str):
        languages = [part for part in languages.split(",") if part.strip()]
    try:
        codes = tuple(dict.fromkeys(normalize_language(str(lang).strip()) for lang in languages))
    except ValueError as err:
        raise InputError(f"{config_field('data.languages')}: {err}") from err
    if len(codes) < 2:
        raise _fail("data.languages", "at least 2 language codes", languages)
    return codes


def parse_tsne_layers(value: str, best_layer: int, num_layers: int | None = None) -> tuple[int, ...]:
    """report.tsne_layers: comma-separated residual indices and/or "best" (k*); "" = no t-SNE plot.

    Returns the distinct indices in the order given; with `num_layers`, each must lie in 0..num_layers.
    """
    layers = []
    for item in (part.strip() for part in str(value).split(",")):
        if not item:
            continue
        if item == "best":
            layers.append(best_layer)
        elif item.isdigit():
            layers.append(int(item))
        else:
            raise _fail("report.tsne_layers", 'comma-separated residual indices or "best" ("" = none)', value)
        if num_layers is not None and not 0 <= layers[-1] <= num_layers:
            raise _fail("report.tsne_layers", f"residual indices in 0..{num_layers} for this model", value)
    return tuple(dict.fromkeys(layers))


def data_settings(data) -> LocateData:
    """The validated `config.data` section."""
    if data.source not in DATA_SOURCES:
        raise _fail("data.source", f"one of {DATA_SOURCES}", data.source)
    if data.max_groups_per_source < 0:
        raise _fail("data.max_groups_per_source", "0 (all groups) or a positive number", data.max_groups_per_source)
    if data.min_languages < 2:
        raise _fail("data.min_languages", "at least 2 (a group needs 2 languages to be parallel)", data.min_languages)
    return LocateData(
        source=data.source, root=str(data.root or ""), path=str(data.path or ""),
        languages=_data_languages(data.languages), min_languages=int(data.min_languages),
        max_groups_per_source=int(data.max_groups_per_source), splits=tuple(data.splits),
        hub_split=data.hub_split, hub_data_files=str(data.hub_data_files or ""),
        hub_cache_dir=str(data.hub_cache_dir or ""),
        allow_missing_held_out=bool(data.get("allow_missing_held_out", False)),
        allow_held_out=bool(data.allow_held_out), common_sources_only=bool(data.get("common_sources_only", False)))


def _selection_settings(selection) -> LocateSelection:
    if selection.metric not in METRICS:
        raise _fail("selection.metric", f"one of {METRICS}", selection.metric)
    if selection.bootstrap == "expanded":
        raise InputError(f"{config_field('selection.bootstrap')}: the 'expanded' bootstrap was removed (biased "
                         f"upwards, see lasa_jax/locate/selection.py); use 'points'")
    if selection.bootstrap not in BOOTSTRAP_MODES:
        raise _fail("selection.bootstrap", f"one of {BOOTSTRAP_MODES}", selection.bootstrap)
    if selection.num_bootstrap < 1:
        raise _fail("selection.num_bootstrap", "a number of group resamples >= 1", selection.num_bootstrap)
    if not 0.0 < selection.confidence < 1.0:
        raise _fail("selection.confidence", "in (0, 1)", selection.confidence)
    return LocateSelection(metric=selection.metric, include_embeddings=bool(selection.include_embeddings),
                           include_final=bool(selection.include_final), num_bootstrap=int(selection.num_bootstrap),
                           bootstrap=selection.bootstrap, confidence=float(selection.confidence))


def _probe_settings(probe) -> LocateProbe | None:
    if probe is None:
        return None
    if not 0.0 < probe.val_fraction < 1.0:
        raise _fail("probe.val_fraction", "in (0, 1)", probe.val_fraction)
    if not probe.c > 0:
        raise _fail("probe.c", "a positive inverse regularisation strength", probe.c)
    if probe.num_steps < 1:
        raise _fail("probe.num_steps", "a number of Newton steps >= 1", probe.num_steps)
    return LocateProbe(enabled=bool(probe.enabled), val_fraction=float(probe.val_fraction), c=float(probe.c),
                       num_steps=int(probe.num_steps))


def settings(config) -> LocateSettings:
    """The validated settings of a `configs/locate.py` config; InputError naming the first bad field."""
    if config.pooling not in POOLINGS:
        raise _fail("pooling", f"one of {POOLINGS}", config.pooling)
    if config.max_length < 1:
        raise _fail("max_length", "a positive number of tokens", config.max_length)
    if config.capture_batch_size < 0:
        raise _fail("capture_batch_size", "0 (auto) or a positive number of prompts", config.capture_batch_size)
    model = read_model_settings(config)
    chat_kwargs = template_kwargs(config)
    data = data_settings(config.data)
    selection = _selection_settings(config.selection)
    probe = _probe_settings(config.get("probe"))
    parse_tsne_layers(config.report.tsne_layers, best_layer=0)
    if config.report.tsne_max_iter < TSNE_MIN_ITER:
        raise _fail("report.tsne_max_iter", f"an iteration count >= {TSNE_MIN_ITER}", config.report.tsne_max_iter)
    return LocateSettings(
        model=model, seed=int(config.seed), pooling=config.pooling,
        chat_template=bool(config.chat_template), template_kwargs=chat_kwargs, max_length=int(config.max_length),
        capture_batch_size=int(config.capture_batch_size), reuse_activations=bool(config.reuse_activations),
        progress=bool(config.progress), data=data, selection=selection, probe=probe,
        tsne_layers=str(config.report.tsne_layers), tsne_max_iter=int(config.report.tsne_max_iter))
