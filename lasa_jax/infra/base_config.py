"""The config fields every stage shares (`base_config`) and the parsers of shared field formats.

Each `configs/<stage>.py` starts from `base_config()`; `template_kwargs` and `comma_list` read the two field formats
several stages use (a JSON object of chat-template variables; a comma-separated list).
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections

from lasa_jax.infra.errors import InputError, config_field


def base_config() -> ml_collections.ConfigDict:
    """Fields shared by all stage configs (each `configs/<stage>.py` starts from this)."""
    c = ml_collections.ConfigDict()
    c.model_path = ""            # local HF directory (or hub id) of the base model
    c.dtype = "bfloat16"         # parameter dtype: float32 | bfloat16
    c.compute_dtype = ""         # "" = same as dtype
    c.seed = 42
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1 = remaining devices
    c.distributed = "auto"       # auto | on | off: jax.distributed.initialize() for multi-process runs
    c.attention_backend = "einsum"  # einsum | xla | cudnn | splash | auto (lasa_jax/models/attention_kernels.py)
    return c



def template_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`--config.template_kwargs`: a JSON object of chat-template variables (e.g. '{"enable_thinking": false}' for
    Qwen3), or "" for none. One field, parsed here, for every stage that renders chat templates, so training and
    inference render identically."""
    value = config.get("template_kwargs", "")
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"{config_field('template_kwargs')} must be a JSON object, got {value!r} ({e})") from None
    if not isinstance(parsed, dict):
        raise InputError(f"{config_field('template_kwargs')} must be a JSON object, got {value!r}")
    return parsed



def comma_list(value: str) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"] (config fields holding lists as comma-separated strings)."""
    return [item.strip() for item in str(value or "").split(",") if item.strip()]

