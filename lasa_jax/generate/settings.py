"""The generate stage's settings: the one reader and validator of a generate config section (configs/generate.py,
where each field is described).

`settings(config) -> GenerateSettings` checks every value before any work and names a bad field as
`config_field("decoding.top_p")` spells it. The two models share the section's dtype, compute_dtype and attention
backend (`lasa_jax.models.loading.ModelSettings`): `model` generates, `base_model` is the frozen model the SSI reads
(path "" = no SSI). In mode "prefix_only" the base model generates, so both name it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from lasa_jax.data.eval_sets import EvalSetSelection, HubSetOptions
from lasa_jax.decoding.answers import GATED_MODES, MODES, Decoding
from lasa_jax.infra.base_config import comma_list, template_kwargs
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.loading import ModelSettings, read_model_settings


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    """Everything the generate stage reads from its config. model: the model that generates; base_model: the
    frozen model the SSI reads (path "" = no SSI); tokenizer_path: the generating model's path unless set;
    max_prompt_length None: no cut; eos_token_ids () = the model's own stop tokens
    (`lasa_jax.decoding.stop_tokens.stop_token_ids`)."""

    mode: str
    model: ModelSettings
    base_model: ModelSettings
    ssi_dir: str
    tokenizer_path: str
    prefix: str
    template_kwargs: Mapping[str, Any]
    max_prompt_length: int | None
    eval_sets: EvalSetSelection
    decoding: Decoding
    eos_token_ids: tuple[int, ...]
    output: str
    chunk_size: int
    resume: bool
    progress: bool

    @property
    def scores(self) -> bool:
        """Whether the SSI scores the prompts (gated modes, or a baseline that records scores)."""
        return self.mode in GATED_MODES or bool(self.ssi_dir)


def eval_set_selection(config) -> EvalSetSelection:
    """The eval_sets, data_root, languages, max_per_language(_sets) and hub fields of a generate config."""
    hub = config.hub
    try:
        field_map = json.loads(hub.field_map) if hub.field_map else None
    except json.JSONDecodeError as e:
        raise InputError(f"{config_field('hub.field_map')} must be a JSON object, got {hub.field_map!r} "
                         f"({e})") from None
    if field_map is not None and not isinstance(field_map, dict):
        raise InputError(f"{config_field('hub.field_map')} must be a JSON object, got {hub.field_map!r}")
    specs = tuple(comma_list(config.eval_sets))
    if not specs:
        raise InputError(f"{config_field('eval_sets')} is empty")
    limit_sets = tuple(comma_list(config.get("max_per_language_sets", ""))) or None
    unknown = sorted(set(limit_sets or ()) - set(specs))
    if unknown:
        raise InputError(f"{config_field('max_per_language_sets')}: {unknown} not in {config_field('eval_sets')} "
                         f"{list(specs)}")
    return EvalSetSelection(specs, data_root=config.data_root, languages=tuple(comma_list(config.languages)) or None,
                            max_per_language=int(config.max_per_language),
                            hub=HubSetOptions(name=hub.name or None, split=hub.split, expected=hub.expected or None,
                                              language=hub.language or None, field_map=field_map),
                            limit_sets=limit_sets)


def _model_paths(config) -> tuple[str, str]:
    """(model that generates, base model the SSI reads or ""); prefix_only generates with the base model, so
    base_model_path defaults to model_path there and the two must not differ."""
    if config.mode not in MODES:
        raise InputError(f"{config_field('mode')}: expected one of {MODES}, got {config.mode!r}")
    base = config.base_model_path
    if config.mode == "prefix_only":
        base = base or config.model_path
        if config.model_path and os.path.abspath(config.model_path) != os.path.abspath(base):
            raise InputError(f"mode prefix_only generates with the base model the SSI reads: "
                             f"{config_field('model_path')} ({config.model_path!r}) must be empty or equal to "
                             f"{config_field('base_model_path')} ({config.base_model_path!r})")
        return base, base
    return config.model_path, base


def _decoding(config) -> Decoding:
    """`config.decoding` (sampling seed: `config.seed`), each value checked."""
    d = config.decoding
    decoding = Decoding(max_new_tokens=int(d.max_new_tokens), temperature=float(d.temperature), top_p=float(d.top_p),
                        top_k=int(d.top_k), seed=int(config.seed), batch_size=int(d.batch_size))
    checks = (("max_new_tokens", decoding.max_new_tokens >= 1, "an integer >= 1"),
              ("temperature", decoding.temperature >= 0.0, "a number >= 0 (0 = greedy)"),
              ("top_p", 0.0 < decoding.top_p <= 1.0, "a number in (0, 1]"),
              ("top_k", decoding.top_k >= 0, "an integer >= 0 (0 = off)"),
              ("batch_size", decoding.batch_size >= 1, "an integer >= 1"))
    for name, ok, expected in checks:
        if not ok:
            raise InputError(f"{config_field('decoding.' + name)} must be {expected}, got {d[name]!r}")
    return decoding


def _eos_token_ids(value) -> tuple[int, ...]:
    items = comma_list(value)
    if not all(item.isdigit() for item in items):
        raise InputError(f"{config_field('eos_token_ids')} must be comma-separated token ids (\"\" = the model's own), "
                         f"got {value!r}")
    return tuple(int(item) for item in items)


def settings(config) -> GenerateSettings:
    """Read and validate a generate config section."""
    model_path, base_model_path = _model_paths(config)
    if (config.mode in GATED_MODES or config.ssi_dir) and (not config.ssi_dir or not base_model_path):
        raise InputError(f"mode {config.mode!r} (or recording SSI scores) needs {config_field('ssi_dir')} and "
                         f"{config_field('base_model_path')} (the frozen base model the SSI reads)")
    if int(config.chunk_size) < 1:
        raise InputError(f"{config_field('chunk_size')} must be >= 1, got {config.chunk_size}")
    if int(config.max_prompt_length) < 0:
        raise InputError(f"{config_field('max_prompt_length')} must be >= 0 (0 = no cut), got "
                         f"{config.max_prompt_length}")
    if not config.output:
        raise InputError(f"{config_field('output')} must name the generations file (e.g. generations.jsonl)")
    model = read_model_settings(config)
    return GenerateSettings(
        mode=config.mode, model=dataclasses.replace(model, path=model_path),
        base_model=dataclasses.replace(model, path=base_model_path), ssi_dir=config.ssi_dir,
        tokenizer_path=config.tokenizer_path or model_path, prefix=config.prefix,
        template_kwargs=template_kwargs(config), max_prompt_length=int(config.max_prompt_length) or None,
        eval_sets=eval_set_selection(config), decoding=_decoding(config),
        eos_token_ids=_eos_token_ids(config.eos_token_ids), output=config.output, chunk_size=int(config.chunk_size),
        resume=bool(config.resume), progress=bool(config.progress))
