"""Hugging Face checkpoint import, streamed onto shardings (export: `lasa_jax.models.hf_export`; file reading and
the name/layout mapping: `lasa_jax.models.hf_layout`).

Import reads safetensors files through a memory map of each file: every device shard of every parameter is built
by `jax.make_array_from_callback` from exactly the slice of the HF tensor it holds, converted to the parameter
dtype on the fly. Stacked block parameters are assembled on the device layer by layer (into a donated buffer), so
the host holds at most one layer's slice of one tensor at a time: no host copy of the model, nor of a stacked
parameter, is ever built. Pickle checkpoints (`*.bin`, `*.pt`) are refused; nothing runs `trust_remote_code`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import read_json
from lasa_jax.infra.trees import describe_diff, get_path, put_path, shape_diff
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import Decoder, abstract_decoder, param_shardings
from lasa_jax.models.hf_layout import (
    IGNORED_HF_TENSORS,
    NP_DTYPES,
    ParamMapping,
    SafetensorsReader,
    TensorInfo,
    checkpoint_files,
    hf_shape,
    param_mappings,
    read_hf_slice,
    read_safetensors_header,
)
from lasa_jax.models.integrity import check_dtypes
from lasa_jax.sharding import check_replicated, logical_to_spec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- import
def resolve_model_path(path: str | os.PathLike) -> str:
    """A local directory (or a URL of one) as is; otherwise a hub id `org/name` is downloaded (safetensors +
    configs only)."""
    path = os.fspath(path)
    if os.path.isdir(path) or (storage.is_url(path) and storage.isdir(path)):
        return path  # a URL is downloaded by from_pretrained
    if os.path.exists(path):
        raise InputError(f"{path}: expected a Hugging Face model directory, got a file")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        from huggingface_hub import snapshot_download

        return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.jinja", "tokenizer*",
                                                       "*.model", "*.txt"])
    raise FileNotFoundError(f"{path}: no such model directory (and not a hub id of the form org/name)")


def _check_tensors(reader: SafetensorsReader, mappings: list[ParamMapping], config: ModelConfig, directory: str):
    expected: dict[str, tuple[int, ...]] = {}
    for m in mappings:
        per_layer = m.shape[1:] if m.stacked else m.shape
        for name in m.hf_names:
            expected[name] = hf_shape(m.kind, per_layer)
    present = {name: tuple(tensor.shape) for name, tensor in reader.tensors.items()}
    ignorable = [n for n in present if IGNORED_HF_TENSORS.fullmatch(n)]
    if config.tie_word_embeddings:
        ignorable.append("lm_head.weight")  # tied: HF ignores a stored copy as well
    diff = shape_diff(expected, present, ignore=ignorable, found_label="file")
    if diff:
        raise InputError(f"{directory}: checkpoint does not match its config.json "
                         f"({config.model_type}, {config.num_layers} layers):\n" + describe_diff(diff))


def from_pretrained(path: str | os.PathLike, dtype: str = "float32", mesh: Mesh | None = None, *,
                    compute_dtype: str | None = None, scan_layers: bool = True, remat_policy: str = "none",
                    attention_backend: str = "einsum",
                    replicated_warning_bytes: int = 64 * 2**20) -> Decoder:
    """Load a Llama / Qwen2 / Qwen3 HF checkpoint directory (or hub id) into a `Decoder`.

    Args:
      path: local directory with config.json and model.safetensors or sharded model-*.safetensors (+ index).
      dtype: parameter dtype ("float32" or "bfloat16"); compute_dtype defaults to it.
      mesh: optional `lasa_jax.sharding.make_mesh` mesh: each tensor is streamed directly onto its shards.

    A URL (gs://, memory://) is downloaded to a temporary directory first; `source_path` stays the URL.
    """
    if storage.is_url(path):
        with storage.local_copy(path) as local:
            model = from_pretrained(local, dtype, mesh, compute_dtype=compute_dtype, scan_layers=scan_layers,
                                    remat_policy=remat_policy, attention_backend=attention_backend,
                                    replicated_warning_bytes=replicated_warning_bytes)
        model.source_path = os.fspath(path)
        return model
    directory = resolve_model_path(path)
    config = ModelConfig.from_pretrained(directory, param_dtype=dtype, compute_dtype=compute_dtype or dtype,
                                         scan_layers=scan_layers, remat_policy=remat_policy,
                                         attention_backend=attention_backend)
    reader = SafetensorsReader(directory)  # validates every header, the index and the shards (integrity.py)
    check_dtypes(directory, reader.entries, read_json(os.path.join(directory, "config.json"), "config.json"))
    model = abstract_decoder(config, mesh)
    mappings = param_mappings(model)
    _check_tensors(reader, mappings, config, directory)
    target = NP_DTYPES[dtype]
    shardings = param_shardings(model, mesh) if mesh is not None else None
    device = SingleDeviceSharding(jax.devices()[0])
    params: dict = {}
    for m in mappings:
        sharding = get_path(shardings, m.path) if shardings is not None else device
        put_path(params, m.path, _load_param(reader, m, target, sharding))
    if mesh is not None:
        check_replicated(((".".join(m.path), m.shape, logical_to_spec(m.axes, m.shape, mesh), target.itemsize)
                          for m in mappings), replicated_warning_bytes)
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, state)
    model.set_params(params)
    model.source_path = os.path.abspath(directory)
    model.fingerprint = model_fingerprint(directory)
    return model


def _load_param(reader: SafetensorsReader, m: ParamMapping, target: np.dtype, sharding) -> jax.Array:
    """One parameter on `sharding`, read shard by shard from the memory-mapped HF tensors.

    A stacked parameter is built on the device one layer at a time: each HF layer tensor goes to its shards, then is
    written into a donated (L, ...) buffer, so the host never holds more than one layer's slice.
    """
    if not m.stacked:
        return jax.make_array_from_callback(
            m.shape, sharding, lambda index: read_hf_slice(reader.array(m.hf_names[0]), m.kind, m.shape,
                                                           index).astype(target))
    layer_shape = m.shape[1:]
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(m.shape) - len(sharding.spec))
        if spec[0] is not None:
            raise ValueError(f"{'.'.join(m.path)}: the layers axis must not be sharded, got {sharding.spec}")
        layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*spec[1:]))
    else:
        layer_sharding = sharding
    buffer = _zeros(m.shape, target, sharding)
    for i, name in enumerate(m.hf_names):
        layer = jax.make_array_from_callback(
            layer_shape, layer_sharding,
            lambda index, name=name: read_hf_slice(reader.array(name), m.kind, layer_shape, index).astype(target))
        buffer = _write_layer(buffer, layer, np.int32(i))
    return buffer


def _zeros(shape, dtype, sharding) -> jax.Array:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)()


@functools.partial(jax.jit, donate_argnums=(0,))
def _write_layer(buffer: jax.Array, layer: jax.Array, index: jax.Array) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(buffer, layer.astype(buffer.dtype), index, axis=0)




def model_fingerprint(path: str | os.PathLike, windows_per_tensor: int = 3, window_bytes: int = 4096) -> str:
    """Sampled content hash identifying a checkpoint's weights, independent of how they are split into files.

    Hashes the architecture from config.json and, for every tensor in name order, its name, dtype, shape and up to
    `windows_per_tensor` byte windows (start, middle, end). Cheap for large checkpoints (~12 KiB read per tensor).
    A full fine-tune changes every window, so it tells a fine-tuned model from its base; an edit confined to bytes
    outside the sampled windows would go unnoticed (it is a guard against mix-ups, not a cryptographic digest).
    An exported copy of a model (same dtype) has the same fingerprint.
    """
    if storage.is_url(path):
        with storage.local_copy(path) as local:
            return model_fingerprint(local, windows_per_tensor, window_bytes)
    directory = os.fspath(path)
    h = hashlib.sha256()
    h.update(json.dumps(ModelConfig.from_pretrained(directory).to_hf_dict(), sort_keys=True).encode())
    infos: dict[str, TensorInfo] = {}
    for file in checkpoint_files(directory):
        infos.update(read_safetensors_header(file))
    handles: dict[str, object] = {}
    try:
        for name in sorted(infos):
            info = infos[name]
            nbytes = int(np.prod(info.shape)) * info.dtype.itemsize if info.shape else info.dtype.itemsize
            h.update(f"{name}|{info.dtype.str}|{info.shape}".encode())
            f = handles.get(info.file) or handles.setdefault(info.file, open(info.file, "rb"))
            for k in range(windows_per_tensor):
                span = nbytes - window_bytes
                start = max(0, min(span, span * k // max(1, windows_per_tensor - 1)))
                f.seek(info.offset + start)
                h.update(f.read(min(window_bytes, nbytes)))
    finally:
        for f in handles.values():
            f.close()
    return h.hexdigest()[:24]


# export and the layout tables, re-exported: lasa_jax.models.hf stays the one import path for HF checkpoints
