"""The paper's models and the TPU presets the configs are built from.

`PAPER_MODELS[name]` holds the hub id, the architecture (for planning and shape checks without weights; the
checkpoint's own config.json is what `from_pretrained` uses) and the bottleneck residual index reported by the
authors (METHOD.md §3 table, residual-index convention of `lasa_jax.models.decoder`). One entry is not a paper
model: `smollm2_135m`, the embedded real model (SmolLM2-135M-Instruct) for CPU runs; it has no published bottleneck
(index -1: the run's own Locate picks it) and `asset` names its cached import (`lasa_jax.assets`), which configs use
as model_path "asset:<asset>" instead of the hub id.

`TPU_PRESETS[name]`: devices, HBM per device, mesh, and per-stage batch sizes for one TPU VM or a pod slice.
Every mesh is FSDP over all chips (`fsdp=-1`): a KTO step holds a float32 policy, its gradient, the AdamW moments and
a bf16 reference, about 18 bytes per parameter, which no single chip can hold for these models. `kto_fits` tells
whether a model's KTO state fits a preset (an 8B model needs v5p-8 or a pod slice; v4-8 / v5e-8 run the other
stages).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from lasa_jax.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class PaperModel:
    hub_id: str
    bottleneck_residual_index: int
    hf_config: dict
    qwen3_thinking: bool | None = None  # None: not a Qwen3 model
    asset: str = ""  # a `lasa_jax.assets.MODELS` name: the model is the cached import, not the hub checkpoint

    def model_config(self, **runtime) -> ModelConfig:
        return ModelConfig.from_hf_dict(self.hf_config, source=self.hub_id, **runtime)


def _qwen2(hidden, inter, layers, heads, kv, eps):
    return dict(model_type="qwen2", vocab_size=152064, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, rms_norm_eps=eps,
                max_position_embeddings=32768, rope_theta=1000000.0, rope_scaling=None, tie_word_embeddings=False,
                bos_token_id=151643, eos_token_id=151645)


def _qwen3(hidden, inter, layers, heads):
    return dict(model_type="qwen3", vocab_size=151936, hidden_size=hidden, intermediate_size=inter,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=8, head_dim=128,
                rms_norm_eps=1e-6, max_position_embeddings=40960, rope_theta=1000000.0, rope_scaling=None,
                tie_word_embeddings=False, attention_bias=False, bos_token_id=151643, eos_token_id=151645)


PAPER_MODELS: dict[str, PaperModel] = {
    "llama31_8b": PaperModel("meta-llama/Llama-3.1-8B-Instruct", 14, dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=False, attention_bias=False, bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009])),
    "qwen25_7b": PaperModel("Qwen/Qwen2.5-7B-Instruct", 19, _qwen2(3584, 18944, 28, 28, 4, 1e-6)),
    "qwen25_14b": PaperModel("Qwen/Qwen2.5-14B-Instruct", 29, _qwen2(5120, 13824, 48, 40, 8, 1e-5)),
    "qwen25_32b": PaperModel("Qwen/Qwen2.5-32B-Instruct", 29, _qwen2(5120, 27648, 64, 40, 8, 1e-5)),
    "qwen3_8b": PaperModel("Qwen/Qwen3-8B", 21, _qwen3(4096, 12288, 36, 32), qwen3_thinking=False),
    "qwen3_14b": PaperModel("Qwen/Qwen3-14B", 25, _qwen3(5120, 17408, 40, 40), qwen3_thinking=False),
    "qwen3_32b": PaperModel("Qwen/Qwen3-32B", 42, _qwen3(5120, 25600, 64, 64), qwen3_thinking=False),
    "smollm2_135m": PaperModel("HuggingFaceTB/SmolLM2-135M-Instruct", -1, dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5, max_position_embeddings=8192,
        rope_theta=100000.0, rope_scaling=None, tie_word_embeddings=True, attention_bias=False, bos_token_id=1,
        eos_token_id=2), asset="smollm2-135m-instruct"),
}


@dataclasses.dataclass(frozen=True)
class TPUPreset:
    accelerator_type: str
    num_devices: int
    num_hosts: int
    hbm_bytes_per_device: int
    mesh: dict[str, int]
    capture_batch_size: int   # Locate / SSI feature capture (global)
    kto_batch_size: int       # KTO rows per step (global; the paper: 16)
    kto_micro_batches: int    # gradient accumulation steps per KTO step
    generate_batch_size: int  # generation (global)
    peak_flops_per_device: float | None = None  # dense bf16 peak FLOP/s per chip (for MFU); None = unknown

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GIB = 2**30
# dense bf16 peak FLOP/s per chip, by `jax.Device.device_kind` (public TPU specifications)
PEAK_FLOPS_BY_DEVICE_KIND = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
                             "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12}
_FSDP = dict(data=1, fsdp=-1, tensor=1)
TPU_PRESETS: dict[str, TPUPreset] = {
    # single TPU VMs (one host). kto_batch_size 16 = the paper's rows per update
    "v4-8": TPUPreset("v4-8", 4, 1, 32 * GIB, _FSDP, 32, 16, 2, 32, 275e12),
    "v5e-8": TPUPreset("v5litepod-8", 8, 1, 16 * GIB, _FSDP, 32, 16, 2, 32, 197e12),
    "v5p-8": TPUPreset("v5p-8", 4, 1, 95 * GIB, _FSDP, 32, 16, 1, 32, 459e12),
    # pod slices (several hosts; jax.distributed.initialize() is called by the scripts). The KTO batch grows to 64
    # rows so every chip holds 2 rows; the learning rate is not rescaled (set --config.kto.train.batch_size=16 to
    # keep the paper's batch, or scale --config.kto.train.learning_rate yourself)
    "v5p-64": TPUPreset("v5p-64", 32, 8, 95 * GIB, _FSDP, 128, 64, 1, 128, 459e12),
    "v4-64": TPUPreset("v4-64", 32, 8, 32 * GIB, _FSDP, 128, 64, 1, 128, 275e12),
}


def device_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one chip of this `device_kind`, or None when unknown (CPU, GPU, new chips)."""
    return PEAK_FLOPS_BY_DEVICE_KIND.get(device_kind)
CPU_PRESET = TPUPreset("cpu", 1, 1, 16 * GIB, dict(data=1, fsdp=-1, tensor=1), 8, 4, 1, 8)

# bytes per parameter held during a KTO step: float32 policy (4), its float32 gradient (4), AdamW moments (8) and
# the bf16 reference (2)
KTO_BYTES_PER_PARAM = 18
# share of HBM the KTO state may take; the rest holds activations (with remat), logits chunks and XLA buffers
KTO_STATE_HBM_SHARE = 0.7


def kto_state_bytes_per_device(config: ModelConfig, preset: TPUPreset, precomputed_reference: bool = False) -> float:
    """Largest per-device bytes of policy + AdamW state (+ bf16 reference) under the preset's mesh.

    Computed from the decoder's real parameter shapes and their shardings under `LOGICAL_AXIS_RULES` on an
    abstract mesh of the preset's size (no devices needed), so a dimension the mesh does not divide counts as
    replicated. Activations are not included.
    """
    import numpy as np
    from flax import nnx
    from jax.sharding import AbstractMesh

    from lasa_jax.models.decoder import abstract_decoder
    from lasa_jax.sharding import MESH_AXES, logical_to_spec

    sizes = dict(preset.mesh)
    known = int(np.prod([v for v in sizes.values() if v != -1]))
    sizes = {k: (preset.num_devices // known if v == -1 else v) for k, v in sizes.items()}
    mesh = AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES)
    per_param = KTO_BYTES_PER_PARAM - (2 if precomputed_reference else 0)
    total = 0.0
    for _, var in nnx.to_flat_state(nnx.state(abstract_decoder(config), nnx.Param)):
        shape = var.get_value().shape
        spec = logical_to_spec(var.get_metadata()["axes"], shape, mesh)
        shards = int(np.prod([np.prod([sizes[a] for a in ((s,) if isinstance(s, str) else s)])
                              for s in spec if s is not None])) if len(spec) else 1
        total += float(np.prod(shape)) * per_param / shards
    return total


def kto_fits(config: ModelConfig, preset: TPUPreset, precomputed_reference: bool = False) -> tuple[bool, str]:
    """Whether the KTO state fits the preset's HBM (within KTO_STATE_HBM_SHARE), and a one-line explanation."""
    need = kto_state_bytes_per_device(config, preset, precomputed_reference)
    budget = KTO_STATE_HBM_SHARE * preset.hbm_bytes_per_device
    line = (f"KTO state {need / GIB:.1f} GiB per device of {preset.hbm_bytes_per_device / GIB:.0f} GiB HBM on "
            f"{preset.accelerator_type} ({config.num_params() / 1e9:.1f}B parameters, "
            f"{'precomputed' if precomputed_reference else 'online'} reference)")
    return need <= budget, line
