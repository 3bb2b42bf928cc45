"""`ModelConfig`: the architecture of a Llama-3.x / Qwen2.5 / Qwen3 decoder, read from a Hugging Face `config.json`.

One decoder implementation serves the three families; they differ only in the flags below:

| family | q/k/v bias | o bias | q/k RMSNorm | head_dim         | typical rope           |
|--------|------------|--------|-------------|------------------|------------------------|
| llama  | attention_bias | attention_bias | no | hidden / heads   | llama3 scaling         |
| qwen2  | always     | no     | no          | hidden / heads   | default, theta 1e6     |
| qwen3  | attention_bias | attention_bias | yes | explicit (128)   | default, theta 1e6     |

RoPE parameters are read from `rope_parameters` (transformers 5) or from top-level `rope_theta` / `rope_scaling`
(transformers 4 checkpoints); both spellings give the same `ModelConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from lasa_jax.infra.errors import InputError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "minimal")
ATTENTION_BACKENDS = ("einsum", "xla", "cudnn", "splash", "auto")  # lasa_jax.models.attention_kernels


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture (from HF) plus runtime choices (dtypes, scan, remat). Hashable: used as a jit static argument.

    Runtime fields: `param_dtype` (storage of parameters), `compute_dtype` (matmuls and activations; RMSNorm
    statistics, RoPE angles and softmax are always float32), `scan_layers` (run the stacked blocks with `lax.scan`
    instead of an unrolled Python loop) and `remat_policy` ("none", "full": recompute each block in the backward
    pass, "minimal": keep the outputs of weight matmuls and recompute the rest) and `attention_backend` (one of
    ATTENTION_BACKENDS, see lasa_jax.models.attention_kernels). Runtime fields are not part of `to_hf_dict`, so they
    change neither a saved config.json nor a checkpoint's fingerprint or run identity.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    max_position_embeddings: int = 8192
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    # runtime
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_backend: str = "einsum"

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise InputError(f"model_type {self.model_type!r} is not supported; expected one of "
                             f"{SUPPORTED_MODEL_TYPES}")
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise InputError(f"rope type {self.rope_type!r} is not supported; expected one of {SUPPORTED_ROPE_TYPES}")
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise InputError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if self.remat_policy not in REMAT_POLICIES:
            raise InputError(f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise InputError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")
        if self.num_heads % self.num_kv_heads:
            raise InputError(f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                             f"({self.num_kv_heads})")

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        d, f, h, k, hd, layers = (self.hidden_size, self.intermediate_size, self.num_heads, self.num_kv_heads,
                                  self.head_dim, self.num_layers)
        per_layer = d * hd * (h + 2 * k) + h * hd * d + 3 * d * f + 2 * d
        per_layer += (h + 2 * k) * hd if self.qkv_bias else 0
        per_layer += d if self.o_bias else 0
        per_layer += 2 * hd if self.qk_norm else 0
        total = layers * per_layer + d
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return total

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies, float32 (head_dim // 2,), computed as transformers does (incl. llama3)."""
        exponent = np.arange(0, self.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(self.head_dim)
        inv = (np.float32(1.0) / (np.float32(self.rope_theta) ** exponent)).astype(np.float32)
        if self.rope_type == "llama3":
            factor = self.rope_factor
            low_wavelen = self.rope_original_max_position / self.rope_low_freq_factor
            high_wavelen = self.rope_original_max_position / self.rope_high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
            smooth = (self.rope_original_max_position / wavelen - self.rope_low_freq_factor) / (
                self.rope_high_freq_factor - self.rope_low_freq_factor)
            smoothed = (1 - smooth) * scaled / factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv

    # ------------------------------------------------------------------ HF conversion
    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], source: str = "config.json", **runtime) -> ModelConfig:
        """Build from a parsed HF config dict. `source` names the file in error messages."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise InputError(f"{source}: model_type {model_type!r} is not supported; expected one of "
                             f"{SUPPORTED_MODEL_TYPES}")

        def need(key):
            if key not in hf or hf[key] is None:
                raise InputError(f"{source}: required field {key!r} is missing")
            return hf[key]

        hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
        kv_heads = int(hf.get("num_key_value_heads") or heads)
        head_dim = hf.get("head_dim") or hidden // heads
        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise InputError(f"{source}: hidden_act {act!r} is not supported (expected 'silu')")
        if hf.get("mlp_bias"):
            raise InputError(f"{source}: mlp_bias=true is not supported")
        if hf.get("use_sliding_window"):
            raise InputError(f"{source}: use_sliding_window=true is not supported (full attention only)")
        rope = _read_rope(hf, source)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None)
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(hf.get("max_position_embeddings", 8192)),
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            **rope,
            **runtime,
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **runtime) -> ModelConfig:
        """Read `<path>/config.json` (or `path` itself if it is a file)."""
        from lasa_jax.infra import storage

        path = os.fspath(path)
        file = path if storage.isfile(path) else os.path.join(path, "config.json")
        if not storage.isfile(file):
            raise FileNotFoundError(f"{file}: no config.json (expected a local Hugging Face model directory)")
        with storage.open_file(file) as f:
            try:
                hf = json.load(f)
            except json.JSONDecodeError as e:
                raise InputError(f"{file}: not valid JSON ({e})") from None
        return cls.from_hf_dict(hf, source=file, **runtime)

    def to_hf_dict(self) -> dict:
        """The HF config fields of this architecture (transformers 5 spelling: `rope_parameters`)."""
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "llama3":
            rope.update(factor=self.rope_factor, low_freq_factor=self.rope_low_freq_factor,
                        high_freq_factor=self.rope_high_freq_factor,
                        original_max_position_embeddings=self.rope_original_max_position)
        eos = list(self.eos_token_ids)
        out = dict(
            model_type=self.model_type, vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps, max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings, rope_parameters=rope, hidden_act="silu",
            bos_token_id=self.bos_token_id, eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
            pad_token_id=self.pad_token_id,
        )
        if self.model_type != "qwen2":
            out["attention_bias"] = self.qkv_bias
        return out


def _read_rope(hf: Mapping[str, Any], source: str) -> dict:
    """RoPE fields from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (older files)."""
    params = hf.get("rope_parameters")
    if params is not None and not isinstance(params, Mapping):
        raise InputError(f"{source}: rope_parameters must be an object, got {type(params).__name__}")
    scaling = hf.get("rope_scaling")
    if params is None:
        params = dict(scaling or {})
        if "rope_theta" in hf:
            params["rope_theta"] = hf["rope_theta"]
    elif "rope_theta" not in params and "rope_theta" in hf:
        params = {**params, "rope_theta": hf["rope_theta"]}
    if isinstance(params, Mapping) and any(isinstance(v, Mapping) for v in params.values()):
        raise InputError(f"{source}: per-layer-type rope_parameters are not supported")
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise InputError(f"{source}: rope type {rope_type!r} is not supported; expected one of "
                         f"{SUPPORTED_ROPE_TYPES}")
    out = dict(rope_type=rope_type, rope_theta=float(params.get("rope_theta", 10000.0)))
    if rope_type == "llama3":
        try:
            out.update(rope_factor=float(params["factor"]), rope_low_freq_factor=float(params["low_freq_factor"]),
                       rope_high_freq_factor=float(params["high_freq_factor"]),
                       rope_original_max_position=int(params["original_max_position_embeddings"]))
        except KeyError as e:
            raise InputError(f"{source}: llama3 rope scaling needs field {e.args[0]!r}") from None
    return out
