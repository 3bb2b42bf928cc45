"""Hugging Face safetensors files (header reading, a memory-mapped reader, shard listing) and the mapping between HF
tensor names/layouts and `Decoder` parameters, shared by import (`lasa_jax.models.hf`) and export
(`lasa_jax.models.hf_export`)."""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from flax import nnx

from lasa_jax.infra.errors import InputError
from lasa_jax.models.decoder import Decoder
from lasa_jax.models.integrity import check_shards, read_header, read_index

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


