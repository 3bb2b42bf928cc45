"""Hugging Face checkpoint export (size-capped safetensors shards).

Export gathers one HF tensor (one layer of one stacked parameter) at a time, writes `model-0000k-of-0000N.safetensors`
shards capped at `max_shard_size` plus `model.safetensors.index.json`, `config.json` (through the transformers
config class), and the tokenizer / generation config files of the source directory, into a temporary directory
that is renamed at the end (a URL: written locally, then copied; `lasa_jax.infra.storage`).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator

import jax
import numpy as np

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_directory, set_default_permissions, write_failed
from lasa_jax.infra.trees import get_path
from lasa_jax.models.decoder import Decoder
from lasa_jax.models.hf_layout import ARCHITECTURES, NP_DTYPES, TOKENIZER_FILES, param_mappings, to_hf_layout
from lasa_jax.sharding import to_host

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- export
def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise InputError(f"max_shard_size: expected bytes or a size like '2GB', got {size!r}")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def iter_hf_tensors(model: Decoder, dtype: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, host array in HF layout) one tensor at a time; stacked parameters are gathered layer by layer."""
    target = NP_DTYPES[dtype or model.config.param_dtype]
    params = model.params()
    mappings = param_mappings(model)
    # HF order: embeddings, then layer by layer, then final norm and head
    top = [m for m in mappings if not m.stacked]
    stacked = [m for m in mappings if m.stacked]
    for m in top:
        if m.path == ("embed",):
            yield m.hf_names[0], to_hf_layout(m.kind, to_host(get_path(params, m.path))).astype(target)
    for i in range(model.config.num_layers):
        for m in stacked:
            yield m.hf_names[i], to_hf_layout(m.kind, to_host(get_path(params, m.path)[i])).astype(target)
    for m in top:
        if m.path != ("embed",):
            yield m.hf_names[0], to_hf_layout(m.kind, to_host(get_path(params, m.path))).astype(target)


def save_pretrained(model: Decoder, out_dir: str | os.PathLike, *, dtype: str | None = None,
                    max_shard_size: int | str = "2GB", overwrite: bool = False,
                    tokenizer_source: str | os.PathLike | None = None) -> str | None:
    """Write `model` as an HF checkpoint directory loadable by `AutoModelForCausalLM.from_pretrained`.

    dtype: "float32"/"bfloat16" (default: the parameter dtype). Tokenizer and generation-config files are copied
    from `tokenizer_source` (default: the directory the model was loaded from). On a multi-process run every
    process must call this (tensors are gathered collectively); only process 0 writes. Returns out_dir on the
    writing process. `out_dir` may be a URL (gs://, memory://): the files are written to a local temporary
    directory (transformers and safetensors write local files), then copied there (`storage.atomic_directory`).
    """
    out_dir = os.fspath(out_dir) if storage.is_url(out_dir) else os.path.abspath(os.fspath(out_dir))
    writer = jax.process_index() == 0
    if writer and storage.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    dtype = dtype or model.config.param_dtype
    if dtype not in NP_DTYPES:
        raise InputError(f"dtype must be one of {sorted(NP_DTYPES)}, got {dtype!r}")
    cap = _parse_size(max_shard_size)
    if not writer:
        for _ in iter_hf_tensors(model, dtype):  # take part in the collective gathers
            pass
        return None
    from safetensors.numpy import save_file

    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        shards: list[dict[str, np.ndarray]] = [{}]
        sizes = [0]
        for name, array in iter_hf_tensors(model, dtype):
            if sizes[-1] and sizes[-1] + array.nbytes > cap:
                _write_shard(save_file, tmp, len(shards), shards[-1])
                shards[-1] = {n: None for n in shards[-1]}  # keep names for the index, free the arrays
                shards.append({})
                sizes.append(0)
            shards[-1][name] = np.ascontiguousarray(array)
            sizes[-1] += array.nbytes
        _write_shard(save_file, tmp, len(shards), shards[-1])
        total = len(shards)
        weight_map = {}
        for k, shard in enumerate(shards, start=1):
            final = f"model-{k:05d}-of-{total:05d}.safetensors"
            os.replace(os.path.join(tmp, f"shard-{k:05d}.tmp"), os.path.join(tmp, final))
            weight_map.update({name: final for name in shard})
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}, f, indent=2)
        _write_config(model, dtype, tmp)
        _copy_tokenizer_files(tokenizer_source or model.source_path, tmp)
    return out_dir


def _write_config(model: Decoder, dtype: str, directory: str) -> None:
    """config.json through the transformers config class: the source's fields (without legacy rope keys) updated
    with the model's architecture, its class name and `dtype`."""
    from transformers import AutoConfig

    hf = {}
    source = model.source_path
    if source and storage.isfile(os.path.join(source, "config.json")):
        with storage.open_file(os.path.join(source, "config.json")) as f:
            hf = json.load(f)
        for legacy in ("rope_theta", "rope_scaling"):
            hf.pop(legacy, None)
    hf.update(model.config.to_hf_dict())
    hf["architectures"] = [ARCHITECTURES[model.config.model_type]]
    hf["dtype"] = dtype
    hf.pop("transformers_version", None)
    model_type = hf.pop("model_type")
    AutoConfig.for_model(model_type, **hf).save_pretrained(directory)


def _copy_tokenizer_files(source: str | os.PathLike | None, directory: str) -> None:
    """The tokenizer and generation-config files of `source` (a local directory or a URL) that exist."""
    if not source:
        return
    for name in TOKENIZER_FILES:
        src = os.path.join(source, name)
        if storage.is_url(src) and storage.isfile(src):
            with storage.open_file(src, "rb") as fin, open(os.path.join(directory, name), "wb") as fout:
                shutil.copyfileobj(fin, fout)
        elif not storage.is_url(src) and os.path.isfile(src):
            shutil.copy2(src, os.path.join(directory, name))


def _write_shard(save_file, directory: str, k: int, tensors: dict[str, np.ndarray]) -> None:
    path = os.path.join(directory, f"shard-{k:05d}.tmp")
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except Exception as e:  # safetensors reports I/O failures as SafetensorError "... (os error N)"
        if "os error" in str(e):
            raise write_failed(e, path) from e
        raise
    set_default_permissions(path)  # safetensors writes owner-only files
