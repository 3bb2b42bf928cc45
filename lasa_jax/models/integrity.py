"""Checkpoint integrity: validate a Hugging Face checkpoint directory's files before any of it is loaded.

Everything here reads only file sizes, the safetensors headers, the index and config.json (and the tokenizer for
`check_tokenizer`), so a broken checkpoint is reported before any device memory is used. Every problem raises one
`lasa_jax.infra.errors.InputError` naming the file, the tensor or field, what was expected and what was found.

A safetensors file is an 8-byte little-endian header length n, then n bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data buffer; offsets
are relative to the start of the buffer (byte 8 + n). Checked: the file holds the 8 bytes and the n header bytes,
the header is a JSON object, every tensor has a known dtype, a shape of non-negative integers and a byte range
`end - begin == prod(shape) * itemsize` that lies inside the file (a truncated copy fails here, naming the first
tensor whose bytes are missing). An index `model.safetensors.index.json` must name existing shards, no tensor
twice (in the index or across shard headers), and every tensor it maps must be in the shard it names.
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from lasa_jax.infra.errors import InputError

INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype -> item size in bytes
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors library's own limit


def read_header(file: str | os.PathLike) -> tuple[dict[str, dict[str, Any]], int]:
    """The validated header of a .safetensors file: ({tensor name: entry}, n) where the data starts at 8 + n.

    Each entry holds "dtype" (safetensors name), "shape" (tuple) and "data_offsets" (begin, end) relative to the
    data buffer. Raises InputError naming the file (and tensor) when the file is truncated or corrupt.
    """
    file = os.fspath(file)
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise InputError(f"{file}: truncated safetensors file: expected at least 8 bytes (the header length), "
                             f"got {size}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise InputError(f"{file}: truncated or corrupt safetensors file: the header claims {n} bytes, but the "
                             f"file has {size} bytes in all (expected at least {8 + n}; an interrupted copy?)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: corrupt safetensors header: expected a JSON object of {n} bytes ({e})") from None
    if not isinstance(header, dict):
        raise InputError(f"{file}: corrupt safetensors header: expected a JSON object, got {type(header).__name__}")
    tensors = {}
    for name, meta in header.items():
        if name != "__metadata__":
            tensors[name] = _check_entry(file, name, meta, size - 8 - n)
    return tensors, n


def _check_entry(file: str, name: str, meta: Any, buffer_size: int) -> dict[str, Any]:
    where = f"{file}: tensor {name}"
    if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= set(meta):
        raise InputError(f"{where}: expected an entry with dtype, shape and data_offsets, got {meta!r}")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise InputError(f"{where}: unsupported dtype {dtype!r}; expected one of {sorted(DTYPE_SIZES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise InputError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise InputError(f"{where}: {dtype} {tuple(shape)} needs {nbytes} bytes, but its data_offsets {offsets} span "
                         f"{offsets[1] - offsets[0]}")
    if offsets[1] > buffer_size:
        raise InputError(f"{where}: truncated file: the tensor's bytes end at {offsets[1]} of the data buffer, which "
                         f"holds only {buffer_size} bytes (an interrupted copy?)")
    return {"dtype": dtype, "shape": tuple(shape), "data_offsets": tuple(offsets)}


def read_index(directory: str | os.PathLike) -> dict[str, str] | None:
    """The validated weight map {tensor name: shard file name} of `<directory>/model.safetensors.index.json`, or None
    when there is no index. Refuses invalid JSON, a missing/non-object weight_map, a tensor named twice, a shard
    name that leaves the directory and shards that do not exist."""
    index = os.path.join(os.fspath(directory), INDEX_FILE)
    if not os.path.isfile(index):
        return None
    pairs: list[tuple[str, Any]] = []

    def keep_pairs(items):
        pairs.append(items)
        return dict(items)

    with open(index, encoding="utf-8-sig") as f:
        try:
            data = json.load(f, object_pairs_hook=keep_pairs)
        except json.JSONDecodeError as e:
            raise InputError(f"{index}: not valid JSON ({e})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{index}: expected a JSON object with a 'weight_map' of tensor name -> shard file name")
    for items in pairs:  # the weight_map object is one of the parsed objects; find a repeated key in it
        names = [k for k, _ in items]
        if set(names) == set(weight_map) and len(names) != len(set(names)):
            twice = sorted({k for k in names if names.count(k) > 1})
            raise InputError(f"{index}: weight_map names tensor(s) {twice[:5]} more than once; expected each once")
    for shard in sorted(set(weight_map.values())):
        if os.path.basename(shard) != shard:
            raise InputError(f"{index}: shard {shard!r} must be a file name in the checkpoint directory")
        if not os.path.isfile(os.path.join(os.fspath(directory), shard)):
            tensor = next(k for k, v in weight_map.items() if v == shard)
            raise InputError(f"{index}: shard {shard} (holding e.g. {tensor}) does not exist in {directory}")
    return weight_map


def check_shards(directory: str | os.PathLike, files: Iterable[str],
                 weight_map: Mapping[str, str] | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """{tensor name: (file, header entry)} over the checkpoint's safetensors files, validated: every header (see
    `read_header`), no tensor in two files, and every tensor of `weight_map` in the shard it names."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for file in files:
        tensors, _ = read_header(file)
        for name, entry in tensors.items():
            if name in found:
                raise InputError(f"{directory}: tensor {name} is stored twice, in {os.path.basename(found[name][0])} "
                                 f"and {os.path.basename(file)}; expected it in one file")
            found[name] = (file, entry)
    for name, shard in (weight_map or {}).items():
        if name not in found or os.path.basename(found[name][0]) != shard:
            got = os.path.basename(found[name][0]) if name in found else "no shard"
            raise InputError(f"{os.path.join(os.fspath(directory), INDEX_FILE)}: maps tensor {name} to {shard}, but "
                             f"it is in {got}")
    return found


def check_dtypes(directory: str | os.PathLike, tensors: Mapping[str, tuple[str, dict[str, Any]]],
                 hf_config: Mapping[str, Any]) -> None:
    """Every weight is a floating tensor, and of the dtype config.json names (`dtype` / `torch_dtype`), if any."""
    config_file = os.path.join(os.fspath(directory), "config.json")
    declared = hf_config.get("dtype") or hf_config.get("torch_dtype")
    for name, (file, entry) in sorted(tensors.items()):
        stored = FLOAT_DTYPES.get(entry["dtype"])
        if stored is None:
            raise InputError(f"{file}: tensor {name} is {entry['dtype']}; expected a floating dtype "
                             f"({', '.join(FLOAT_DTYPES)})")
        if isinstance(declared, str) and declared in FLOAT_DTYPES.values() and stored != declared:
            raise InputError(f"{file}: tensor {name} is stored as {stored}, but {config_file} declares dtype "
                             f"{declared!r}; expected every weight in {declared}")


def check_tokenizer(tokenizer, directory: str | os.PathLike, vocab_size: int | None,
                    require_chat_template: bool = False) -> None:
    """The tokenizer's ids fit the embedding rows (`vocab_size` of config.json) and, where the caller renders chat
    prompts, it has a chat template."""
    directory = os.fspath(directory)
    if vocab_size is not None:
        ids = list(tokenizer.get_vocab().values())
        largest = max(ids) if ids else -1
        if largest >= vocab_size:
            token = tokenizer.convert_ids_to_tokens(largest)
            raise InputError(f"{directory}: tokenizer id {largest} ({token!r}) does not fit the model's embedding: "
                             f"config.json vocab_size is {vocab_size} (expected every id < {vocab_size}; is the "
                             "tokenizer from another model?)")
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise InputError(f"{directory}: the tokenizer has no chat_template (expected one in tokenizer_config.json "
                         "or chat_template.jinja: this stage renders chat prompts)")
