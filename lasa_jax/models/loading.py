"""Loading a model and its tokenizer for a stage: `load_model` (weights onto the mesh, with the run's dtypes and
attention backend) and `load_tokenizer` (checked against the model's config; never `trust_remote_code`)."""
from __future__ import annotations

import os

import ml_collections

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError, config_field


def load_model(config: ml_collections.ConfigDict, mesh=None, path: str | None = None, **kwargs):
    """`from_pretrained` with the config's dtype fields and, when the config has one, its `attention_backend`
    (lasa_jax.models.attention_kernels; not a base field, so it does not enter stage hashes unless set);
    `path` overrides `config.model_path`."""
    from lasa_jax.models.hf import from_pretrained

    path = path or config.model_path
    if not path:
        raise InputError(f"{config_field('model_path')} is required (a local Hugging Face model directory or a hub id)")
    kwargs.setdefault("attention_backend", config.get("attention_backend", "einsum"))
    return from_pretrained(path, dtype=config.dtype, mesh=mesh, compute_dtype=config.get("compute_dtype") or None,
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
