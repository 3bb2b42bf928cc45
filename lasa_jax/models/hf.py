"""Hugging Face checkpoint import (streamed onto shardings) and export (size-capped safetensors shards).

Import reads safetensors files through a memory map of each file: every device shard of every parameter is built
by `jax.make_array_from_callback` from exactly the slice of the HF tensor it holds, converted to the parameter
dtype on the fly. Stacked block parameters are assembled on the device layer by layer (into a donated buffer), so
the host holds at most one layer's slice of one tensor at a time: no host copy of the model, nor of a stacked
parameter, is ever built. Pickle checkpoints
(`*.bin`, `*.pt`) are refused; nothing runs `trust_remote_code`.

Export gathers one HF tensor (one layer of one stacked parameter) at a time, writes `model-0000k-of-0000N.safetensors`
shards capped at `max_shard_size` plus `model.safetensors.index.json`, `config.json` (through the transformers
config class), and the tokenizer / generation config files of the source directory, into a temporary directory
that is renamed at the end.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from lasa_jax import io_utils
from lasa_jax.config import ModelConfig
from lasa_jax.errors import InputError
from lasa_jax.io_utils import atomic_directory, read_json, set_default_permissions, write_failed
from lasa_jax.models.decoder import Decoder, abstract_decoder, param_shardings
from lasa_jax.models.integrity import check_dtypes, check_shards, read_header, read_index
from lasa_jax.sharding import check_replicated, logical_to_spec, to_host
from lasa_jax.trees import describe_diff, shape_diff

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "added_tokens.json")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# tensors some older checkpoints carry that hold no parameters
IGNORED_HF_TENSORS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


# ----------------------------------------------------------------------------------------------- safetensors
@dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`


def read_safetensors_header(file: str) -> dict[str, TensorInfo]:
    """Parse and validate a .safetensors header (`integrity.read_header`): {name: TensorInfo}."""
    entries, n = read_header(file)
    return {name: TensorInfo(file, SAFETENSORS_DTYPES[e["dtype"]], e["shape"], 8 + n + e["data_offsets"][0])
            for name, e in entries.items()}


class SafetensorsReader:
    """Lazy, memory-mapped access to the tensors of a local HF checkpoint directory."""

    def __init__(self, directory: str):
        self.directory = directory
        self.files = checkpoint_files(directory)
        self.entries = check_shards(directory, self.files, read_index(directory))  # validated before any read
        self.tensors: dict[str, TensorInfo] = {}
        for file in self.files:
            self.tensors.update(read_safetensors_header(file))
        self._maps: dict[str, np.memmap] = {}

    def array(self, name: str) -> np.ndarray:
        """Memory-mapped view of tensor `name` (reads happen only for the slices used)."""
        info = self.tensors[name]
        if info.file not in self._maps:
            self._maps[info.file] = np.memmap(info.file, dtype=np.uint8, mode="r")
        count = int(np.prod(info.shape)) if info.shape else 1
        flat = self._maps[info.file][info.offset: info.offset + count * info.dtype.itemsize]
        return flat.view(info.dtype).reshape(info.shape)


def checkpoint_files(directory: str) -> list[str]:
    """The safetensors files of a local checkpoint; refuses pickle checkpoints with a clear message."""
    single = os.path.join(directory, "model.safetensors")
    weight_map = read_index(directory)
    if weight_map is not None:
        return sorted({os.path.join(directory, v) for v in weight_map.values()})
    if os.path.isfile(single):
        return [single]
    shards = sorted(glob.glob(os.path.join(directory, "model-*.safetensors")))
    if shards:
        return shards
    pickles = [os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.bin")) +
               glob.glob(os.path.join(directory, "*.pt")) + glob.glob(os.path.join(directory, "*.pth"))]
    if pickles:
        raise InputError(f"{directory}: only pickle checkpoints found ({', '.join(sorted(pickles))}); lasa_jax never "
                         "unpickles. Convert them to safetensors first (e.g. load with transformers in a trusted "
                         "environment and call save_pretrained(..., safe_serialization=True)).")
    raise FileNotFoundError(f"{directory}: no model.safetensors, model-*.safetensors or "
                            "model.safetensors.index.json found")


# ----------------------------------------------------------------------------------------------- name mapping
# layout kinds: how an HF tensor (PyTorch nn.Linear weight = (out, in)) maps to our parameter (per layer)
#   copy        same layout
#   transpose   ours (in, out) = hf.T
#   heads_in    ours (D, N, hd) from hf (N*hd, D)      q/k/v projections
#   heads_bias  ours (N, hd) from hf (N*hd,)            q/k/v biases
#   heads_out   ours (H, hd, D) from hf (D, H*hd)       o projection
LAYER_TENSORS = {
    "attn_norm": ("input_layernorm.weight", "copy"),
    "q_kernel": ("self_attn.q_proj.weight", "heads_in"),
    "k_kernel": ("self_attn.k_proj.weight", "heads_in"),
    "v_kernel": ("self_attn.v_proj.weight", "heads_in"),
    "q_bias": ("self_attn.q_proj.bias", "heads_bias"),
    "k_bias": ("self_attn.k_proj.bias", "heads_bias"),
    "v_bias": ("self_attn.v_proj.bias", "heads_bias"),
    "o_kernel": ("self_attn.o_proj.weight", "heads_out"),
    "o_bias": ("self_attn.o_proj.bias", "copy"),
    "q_norm": ("self_attn.q_norm.weight", "copy"),
    "k_norm": ("self_attn.k_norm.weight", "copy"),
    "mlp_norm": ("post_attention_layernorm.weight", "copy"),
    "gate_kernel": ("mlp.gate_proj.weight", "transpose"),
    "up_kernel": ("mlp.up_proj.weight", "transpose"),
    "down_kernel": ("mlp.down_proj.weight", "transpose"),
}
TOP_TENSORS = {"embed": ("model.embed_tokens.weight", "copy"), "final_norm": ("model.norm.weight", "copy"),
               "lm_head": ("lm_head.weight", "transpose")}


@dataclass(frozen=True)
class ParamMapping:
    path: tuple[str, ...]   # path in Decoder.params()
    hf_names: tuple[str, ...]  # one per layer for stacked parameters, else one
    kind: str
    shape: tuple[int, ...]  # our full shape (with the layers axis for stacked parameters)
    axes: tuple[str, ...]

    @property
    def stacked(self) -> bool:
        return self.path[0] == "layers"


def param_mappings(model: Decoder) -> list[ParamMapping]:
    """Our parameters (in HF tensor order) with their HF tensor names and layout kinds."""
    out = []
    state = nnx.state(model, nnx.Param)
    flat = {path: var for path, var in nnx.to_flat_state(state)}
    L = model.config.num_layers
    for key in ("embed",):
        out.append(_mapping(flat, (key,), TOP_TENSORS[key]))
    for key, (suffix, kind) in LAYER_TENSORS.items():
        if ("layers", key) in flat:
            names = tuple(f"model.layers.{i}.{suffix}" for i in range(L))
            var = flat[("layers", key)]
            out.append(ParamMapping(("layers", key), names, kind, tuple(var.get_value().shape),
                                    tuple(var.get_metadata()["axes"])))
    for key in ("final_norm", "lm_head"):
        if (key,) in flat:
            out.append(_mapping(flat, (key,), TOP_TENSORS[key]))
    return out


def _mapping(flat, path, spec):
    var = flat[path]
    return ParamMapping(path, (spec[0],), spec[1], tuple(var.get_value().shape), tuple(var.get_metadata()["axes"]))


def hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """HF tensor shape for one layer of our parameter shape `ours` (without the layers axis)."""
    if kind == "copy":
        return ours
    if kind == "transpose":
        return ours[::-1]
    if kind == "heads_in":
        d, n, hd = ours
        return (n * hd, d)
    if kind == "heads_bias":
        n, hd = ours
        return (n * hd,)
    if kind == "heads_out":
        h, hd, d = ours
        return (d, h * hd)
    raise ValueError(kind)


def to_hf_layout(kind: str, x: np.ndarray) -> np.ndarray:
    """Our per-layer array -> HF tensor layout."""
    if kind == "copy":
        return x
    if kind == "transpose":
        return x.T
    if kind == "heads_in":
        d, n, hd = x.shape
        return x.transpose(1, 2, 0).reshape(n * hd, d)
    if kind == "heads_bias":
        return x.reshape(-1)
    if kind == "heads_out":
        h, hd, d = x.shape
        return x.transpose(2, 0, 1).reshape(d, h * hd)
    raise ValueError(kind)


def read_hf_slice(tensor: np.ndarray, kind: str, ours: tuple[int, ...], index: tuple[slice, ...]) -> np.ndarray:
    """Read only the part of the HF `tensor` (memmap) that lands in `index` of our per-layer layout `ours`."""
    sl = [slice(*s.indices(n)) for s, n in zip(index, ours)]
    if kind == "copy":
        return np.asarray(tensor[tuple(sl)])
    if kind == "transpose":
        return np.asarray(tensor[tuple(sl[::-1])]).T
    if kind == "heads_in":
        d, n, h = sl
        hd = ours[2]
        block = np.asarray(tensor[n.start * hd: n.stop * hd, d])
        return block.reshape(n.stop - n.start, hd, -1).transpose(2, 0, 1)[:, :, h]
    if kind == "heads_bias":
        n, h = sl
        hd = ours[1]
        return np.asarray(tensor[n.start * hd: n.stop * hd]).reshape(-1, hd)[:, h]
    if kind == "heads_out":
        n, h, d = sl
        hd = ours[1]
        block = np.asarray(tensor[d, n.start * hd: n.stop * hd])
        return block.reshape(-1, n.stop - n.start, hd).transpose(1, 2, 0)[:, h, :]
    raise ValueError(kind)


# ----------------------------------------------------------------------------------------------- import
def resolve_model_path(path: str | os.PathLike) -> str:
    """A local directory (or a URL of one) as is; otherwise a hub id `org/name` is downloaded (safetensors +
    configs only)."""
    path = os.fspath(path)
    if os.path.isdir(path) or (io_utils.is_url(path) and io_utils.isdir(path)):
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
    if io_utils.is_url(path):
        with io_utils.local_copy(path) as local:
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
        sharding = _get(shardings, m.path) if shardings is not None else device
        _put(params, m.path, _load_param(reader, m, target, sharding))
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


def _get(tree: dict, path: tuple[str, ...]):
    for key in path:
        tree = tree[key]
    return tree


def _put(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def model_fingerprint(path: str | os.PathLike, windows_per_tensor: int = 3, window_bytes: int = 4096) -> str:
    """Sampled content hash identifying a checkpoint's weights, independent of how they are split into files.

    Hashes the architecture from config.json and, for every tensor in name order, its name, dtype, shape and up to
    `windows_per_tensor` byte windows (start, middle, end). Cheap for large checkpoints (~12 KiB read per tensor).
    A full fine-tune changes every window, so it tells a fine-tuned model from its base; an edit confined to bytes
    outside the sampled windows would go unnoticed (it is a guard against mix-ups, not a cryptographic digest).
    An exported copy of a model (same dtype) has the same fingerprint.
    """
    if io_utils.is_url(path):
        with io_utils.local_copy(path) as local:
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
            yield m.hf_names[0], to_hf_layout(m.kind, to_host(_get(params, m.path))).astype(target)
    for i in range(model.config.num_layers):
        for m in stacked:
            yield m.hf_names[i], to_hf_layout(m.kind, to_host(_get(params, m.path)[i])).astype(target)
    for m in top:
        if m.path != ("embed",):
            yield m.hf_names[0], to_hf_layout(m.kind, to_host(_get(params, m.path))).astype(target)


def save_pretrained(model: Decoder, out_dir: str | os.PathLike, *, dtype: str | None = None,
                    max_shard_size: int | str = "2GB", overwrite: bool = False,
                    tokenizer_source: str | os.PathLike | None = None) -> str | None:
    """Write `model` as an HF checkpoint directory loadable by `AutoModelForCausalLM.from_pretrained`.

    dtype: "float32"/"bfloat16" (default: the parameter dtype). Tokenizer and generation-config files are copied
    from `tokenizer_source` (default: the directory the model was loaded from). On a multi-process run every
    process must call this (tensors are gathered collectively); only process 0 writes. Returns out_dir on the
    writing process. `out_dir` may be a URL (gs://, memory://): the files are written to a local temporary
    directory (transformers and safetensors write local files), then copied there (`io_utils.atomic_directory`).
    """
    from transformers import AutoConfig

    out_dir = os.fspath(out_dir) if io_utils.is_url(out_dir) else os.path.abspath(os.fspath(out_dir))
    writer = jax.process_index() == 0
    if writer and io_utils.exists(out_dir) and not overwrite:
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
        hf = {}
        source = model.source_path
        if source and io_utils.isfile(os.path.join(source, "config.json")):
            with io_utils.open_file(os.path.join(source, "config.json")) as f:
                hf = json.load(f)
            for legacy in ("rope_theta", "rope_scaling"):
                hf.pop(legacy, None)
        hf.update(model.config.to_hf_dict())
        hf["architectures"] = [ARCHITECTURES[model.config.model_type]]
        hf["dtype"] = dtype
        hf.pop("transformers_version", None)
        model_type = hf.pop("model_type")
        AutoConfig.for_model(model_type, **hf).save_pretrained(tmp)
        tok_dir = tokenizer_source or source
        if tok_dir:
            for name in TOKENIZER_FILES:
                src = os.path.join(tok_dir, name)
                if io_utils.is_url(src) and io_utils.isfile(src):
                    with io_utils.open_file(src, "rb") as fin, open(os.path.join(tmp, name), "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                elif not io_utils.is_url(src) and os.path.isfile(src):
                    shutil.copy2(src, os.path.join(tmp, name))
    return out_dir


def _write_shard(save_file, directory: str, k: int, tensors: dict[str, np.ndarray]) -> None:
    path = os.path.join(directory, f"shard-{k:05d}.tmp")
    try:
        save_file(tensors, path, metadata={"format": "pt"})
    except Exception as e:  # safetensors reports I/O failures as SafetensorError "... (os error N)"
        if "os error" in str(e):
            raise write_failed(e, path) from e
        raise
    set_default_permissions(path)  # safetensors writes owner-only files
