"""GGUF import: convert a llama.cpp GGUF file into a Hugging Face checkpoint directory.

    from lasa_jax.models.gguf import convert_gguf
    convert_gguf("model.Q4_1.gguf", "model-hf/")   # then lasa_jax.models.from_pretrained("model-hf/")

The directory holds config.json, model.safetensors (every tensor dequantised, float32 by default),
generation_config.json, the tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja) and
gguf_import.json (provenance: the source file's name and sha256, the gguf/transformers versions, the dtype). Both
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` and `lasa_jax.models.from_pretrained(DIR)` load it, with
the weights, config and tokenizer transformers itself builds from the file (`from_pretrained(d, gguf_file=...)`).

Parsing is `gguf.GGUFReader`, dequantisation `gguf.quants.dequantize` (every type gguf 0.19 implements), and the
translation is transformers' own: its GGUF config-key mapping, its tokenizer builder
(`convert_gguf_tokenizer`), its Llama q/k un-permutation, and gguf's tensor-name map. None of it needs torch: the
conversion runs on a torch-free install.

Architectures: llama, qwen2, qwen3. Two deliberate differences from transformers' loader, both where it would
build a wrong model silently: a tensor that maps to no parameter of the architecture (e.g. llama3's
`rope_freqs.weight`) is an error rather than dropped, and a qwen3 head size comes from `attention.key_length`
(transformers falls back to the Qwen3Config default of 128, which equals key_length in released Qwen3 files).

The converted model is held in host memory once (float32: 4 bytes per parameter) and written as one
safetensors file; the output directory appears only when complete (`storage.atomic_directory`).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import time

import numpy as np

from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_directory, set_default_permissions, sha256_file
from lasa_jax.models.hf_layout import ARCHITECTURES, NP_DTYPES

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)  # llama, qwen2, qwen3
IMPORT_RECORD = "gguf_import.json"  # written into every converted directory
# HF parameter names per layer and per model for each architecture (what transformers' model class holds)
_LAYER_NAMES = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_EXTRA_LAYER_NAMES = {"llama": (), "qwen2": ("self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                             "self_attn.v_proj.bias"),
                      "qwen3": ("self_attn.q_norm.weight", "self_attn.k_norm.weight")}


def convert_gguf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, *, dtype: str = "float32",
                 overwrite: bool = False) -> pathlib.Path:
    """Write the HF checkpoint directory of a GGUF file; returns `output_dir`.

    Args:
      gguf_path: a llama/qwen2/qwen3 GGUF file (any tensor type gguf can dequantise).
      output_dir: the directory to create (atomically: it exists only once complete).
      dtype: "float32" (default) or "bfloat16", the dtype of the safetensors weights.
      overwrite: replace an existing `output_dir` (otherwise FileExistsError).
    Raises InputError naming the file (and the tensor or key) for a file that is not a readable GGUF, is
    truncated, has another architecture, a tensor type gguf cannot dequantise, or tensors that do not match it.
    """
    from safetensors.numpy import save_file

    if dtype not in NP_DTYPES:
        raise InputError(f"dtype: expected one of {sorted(NP_DTYPES)}, got {dtype!r}")
    if os.path.exists(output_dir) and not overwrite:  # before the work (atomic_directory checks it again)
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True (or choose another output directory)")
    start = time.perf_counter()
    path = os.fspath(gguf_path)
    reader = read_gguf(path)
    metadata = gguf_metadata(reader)
    tensor_names = [t.name for t in reader.tensors]
    config = hf_config_dict(metadata, tensor_names, path)
    tokenizer = gguf_tokenizer(metadata, path)
    tensors = {name: array.astype(NP_DTYPES[dtype]) for name, array in hf_tensors(reader, config, path)}
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        _save_config(config, dtype, tmp)
        weights = os.path.join(tmp, "model.safetensors")
        save_file(tensors, weights, metadata={"format": "pt"})
        set_default_permissions(weights)  # safetensors writes owner-only files
        tokenizer.save_pretrained(tmp)
        _write_record(path, dtype, len(tensors), tmp)
    log.info("converted %s (%s, %d tensors) to %s in %.1f s", path, config["model_type"], len(tensors),
             output_dir, time.perf_counter() - start)
    return pathlib.Path(output_dir)


def _write_record(path: str, dtype: str, num_tensors: int, directory: str) -> None:
    from importlib.metadata import version

    record = {"gguf_file": os.path.basename(path), "gguf_sha256": sha256_file(path), "dtype": dtype,
              "num_tensors": num_tensors, "gguf_version": version("gguf"),
              "transformers_version": version("transformers")}
    with open(os.path.join(directory, IMPORT_RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)


def read_gguf(path: str | os.PathLike):
    """`gguf.GGUFReader` of `path`, with every tensor's data checked to lie inside the file.

    A missing, truncated or corrupt file raises InputError naming it.
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: GGUF file not found")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeDecodeError, MemoryError) as e:
        raise InputError(f"{path}: not a readable GGUF file ({os.path.getsize(path)} bytes; truncated or "
                         f"corrupt): {type(e).__name__}: {e}") from None
    size = os.path.getsize(path)
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size or tensor.data.nbytes != int(tensor.n_bytes):
            raise InputError(f"{path}: truncated GGUF file: tensor {tensor.name} needs bytes up to {end}, "
                             f"the file has {size}")
    return reader


def gguf_metadata(reader) -> dict:
    """{key: value} of the file's metadata (arrays as lists, strings decoded), as transformers reads them."""
    return {key: field.contents() for key, field in reader.fields.items()}


def hf_config_dict(metadata: dict, tensor_names: list[str], path: str) -> dict:
    """The transformers config dict transformers' GGUF loader builds for this file (llama/qwen2/qwen3 only)."""
    from transformers.integrations import GGUF_CONFIG_MAPPING

    architecture = metadata.get("general.architecture")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise InputError(f"{path}: general.architecture: expected one of {list(SUPPORTED_ARCHITECTURES)}, "
                         f"got {architecture!r}")
    # llama.cpp writes the output projection only when it is not the embedding matrix
    config: dict = {"tie_word_embeddings": "output.weight" not in tensor_names}
    for key, value in metadata.items():
        prefix, _, rest = key.partition(".")
        target = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if target is not None and target != -1:
            config[target] = value
    if "vocab_size" not in config and isinstance(metadata.get("tokenizer.ggml.tokens"), list):
        config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    if architecture == "qwen3" and "qwen3.attention.key_length" in metadata:
        config["head_dim"] = metadata["qwen3.attention.key_length"]
    required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    missing = [name for name in required if name not in config]
    if missing:
        raise InputError(f"{path}: GGUF metadata lacks the {architecture} keys for {missing}")
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    return config


def _save_config(config: dict, dtype: str, directory: str) -> None:
    from transformers import AutoConfig, GenerationConfig

    kwargs = dict(config)
    model_type = kwargs.pop("model_type")
    hf = AutoConfig.for_model(model_type, **kwargs)
    hf.architectures = [ARCHITECTURES[model_type]]
    hf.dtype = dtype
    hf.save_pretrained(directory)
    GenerationConfig.from_model_config(hf).save_pretrained(directory)


def gguf_tokenizer(metadata: dict, path: str):
    """The `PreTrainedTokenizerFast` transformers builds from the file's tokenizer metadata (with chat template)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    # as transformers.integrations.gguf.gguf_tokenizer_mapping.get_gguf_tokenizer, on GGUFReader's metadata
    grouped = {group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items()
                       if f"tokenizer.{key}" in metadata}
               for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if "tokens" not in tokenizer_dict:
        raise InputError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens (no tokenizer to import)")
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    tokens = tokenizer_dict["tokens"]
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise InputError(f"{path}: tokenizer.ggml.{key}: expected an id below {len(tokens)}, got {token_id}")
        tokenizer_config[name] = tokens[token_id] if token_id is not None else None
    try:
        backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    except ValueError as e:
        raise InputError(f"{path}: tokenizer: {e}") from None
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


def hf_tensors(reader, config: dict, path: str):
    """(HF name, float32 array in HF layout) for every tensor of the file, dequantised.

    Raises InputError for a tensor type gguf cannot dequantise, a tensor with no HF counterpart, a missing tensor
    or a wrong shape, naming the file and the tensor.
    """
    from gguf.quants import dequantize
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    architecture = config["model_type"]
    names = _gguf_to_hf_names(architecture, config)
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
    expected = set(names.values())
    seen = set()
    for tensor in reader.tensors:
        if tensor.name not in names:
            raise InputError(f"{path}: tensor {tensor.name} ({tensor.tensor_type.name}) has no counterpart in a "
                             f"transformers {architecture} model with this config; not converted")
        try:
            weights = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError:
            raise InputError(f"{path}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf "
                             "(gguf.quants.dequantize) cannot dequantise") from None
        weights = processor.process(weights=weights, name=tensor.name).weights
        hf_name = names[tensor.name]
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if tuple(weights.shape) != shape:
            raise InputError(f"{path}: tensor {tensor.name}: expected shape {shape}, dequantised to {weights.shape}")
        seen.add(hf_name)
        yield hf_name, np.ascontiguousarray(weights, dtype=np.float32)
    missing = sorted(expected - seen)
    if missing:
        reverse = {v: k for k, v in names.items()}
        raise InputError(f"{path}: missing tensors {[reverse[m] for m in missing][:10]} "
                         f"({len(missing)} in all) for a {architecture} model of {config['num_hidden_layers']} "
                         "layers")


def _gguf_to_hf_names(architecture: str, config: dict) -> dict[str, str]:
    """{GGUF tensor name: HF parameter name} for this architecture and config, from gguf's tensor-name map."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next(key for key, value in MODEL_ARCH_NAMES.items() if value == architecture)
    layers = config["num_hidden_layers"]
    name_map = get_tensor_name_map(arch, layers)
    hf_names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config["tie_word_embeddings"]:
        hf_names.append("lm_head.weight")
    for i in range(layers):
        hf_names += [f"model.layers.{i}.{n}" for n in _LAYER_NAMES + _EXTRA_LAYER_NAMES[architecture]]
    out = {}
    for hf_name in hf_names:
        base, suffix = hf_name.rsplit(".", 1)
        gguf_name = name_map.get_name(base)
        if gguf_name is None:
            raise RuntimeError(f"gguf has no tensor name for {hf_name} ({architecture})")
        out[f"{gguf_name}.{suffix}"] = hf_name
    return out
