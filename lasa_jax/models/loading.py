"""Loading a model and its tokenizer for a stage: `ModelSettings` (the model fields of a stage config, read by
`read_model_settings`, the one reader of those fields), `load_model` (weights onto the mesh with those dtypes and
attention backend) and `load_tokenizer` (checked against the model's config; never `trust_remote_code`)."""
from __future__ import annotations

import dataclasses
import os

import ml_collections

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.config import ATTENTION_BACKENDS, DTYPES


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """How a stage loads a model (`lasa_jax.models.loading.load_model`): path (a local Hugging Face directory, a hub
    id or a URL), dtype of the parameters, compute_dtype ("" = dtype) and the attention backend
    (`lasa_jax.models.attention_kernels`)."""

    path: str
    dtype: str = "bfloat16"
    compute_dtype: str = ""
    attention_backend: str = "einsum"


def read_model_settings(config: ml_collections.ConfigDict, path_field: str = "model_path") -> ModelSettings:
    """The model fields of a stage config: `path_field` (default model_path), dtype, compute_dtype and
    attention_backend, checked (the path may be empty here: a stage that needs it says so)."""
    dtype, compute = str(config.dtype), str(config.get("compute_dtype") or "")
    for name, value in (("dtype", dtype), ("compute_dtype", compute or dtype)):
        if value not in DTYPES:
            raise InputError(f"{config_field(name)} must be one of {DTYPES}, got {value!r}")
    backend = str(config.get("attention_backend", "einsum"))
    if backend not in ATTENTION_BACKENDS:
        raise InputError(f"{config_field('attention_backend')} must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    return ModelSettings(path=str(config.get(path_field) or ""), dtype=dtype, compute_dtype=compute,
                         attention_backend=backend)


def load_model(settings: ModelSettings, mesh=None, path: str | None = None, **kwargs):
    """`from_pretrained` of `path` (default `settings.path`) with the settings' dtypes and attention backend;
    keyword arguments go to `from_pretrained`."""
    from lasa_jax.models.hf import from_pretrained

    path = path or settings.path
    if not path:
        raise InputError(f"{config_field('model_path')} is required (a local Hugging Face model directory or a hub id)")
    kwargs.setdefault("attention_backend", settings.attention_backend)
    return from_pretrained(path, dtype=settings.dtype, mesh=mesh, compute_dtype=settings.compute_dtype or None,
                           **kwargs)


def load_tokenizer(path: str, require_chat_template: bool = False):
    """The model directory's tokenizer (never `trust_remote_code`), checked against the directory's config.json: every
    token id must index an embedding row; `require_chat_template` refuses a tokenizer without a chat template.
    A URL is downloaded to a temporary directory first (transformers reads local files)."""
    from transformers import AutoTokenizer

    if storage.is_url(path):
        with storage.local_copy(path) as local:
            return load_tokenizer(local, require_chat_template)

    from lasa_jax.infra.storage import read_json
    from lasa_jax.models.integrity import check_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    config_file = os.path.join(path, "config.json")
    vocab_size = read_json(config_file, "config.json").get("vocab_size") if os.path.isfile(config_file) else None
    check_tokenizer(tokenizer, path, vocab_size if isinstance(vocab_size, int) else None, require_chat_template)
    return tokenizer
