"""The paper's models and the TPU presets the configs are built from.

`PAPER_MODELS[name]` holds the hub id, the architecture (for planning and shape checks without weights; the
checkpoint's own config.json is what `from_pretrained` uses) and the bottleneck residual index reported by the
authors in their README (in the residual-index convention of `lasa_jax.models.decoder`). One entry is not a paper
model: `smollm2_135m`, the embedded real model (SmolLM2-135M-Instruct) for CPU runs; it has no published bottleneck
(index -1: the run's own Locate picks it) and `asset` names its cached import (`lasa_jax.models.assets`), which configs
use as model_path "asset:<asset>" instead of the hub id.

`default_preset` is the preset the model's whole pipeline fits (`lasa_jax.memory_plan`), the one to pass as
`configs/pipeline.py:<name>,<preset>`.

`TPU_PRESETS[name]`: devices, HBM per device, mesh, and per-stage batch sizes for one TPU VM or a pod slice.
Every mesh is FSDP over all chips (`fsdp=-1`): a KTO step holds a float32 policy, its gradient, the float32
gradient accumulator, the AdamW moments and (online) a bf16 reference, about 22 bytes per parameter, which no single
chip can hold for these models. `lasa_jax.memory_plan` adds the rest (gathered weights, logits, activations) and the
pipeline refuses a preset that cannot hold a stage. By that plan, with a preset's own defaults
(max length 512): 7B-14B models train on v5p-8 (14B with the precomputed reference, its default) and pod slices;
32B models need v5p-64 (their default_preset); no paper model's KTO fits v4-8 or v5e-8. Generation
(`lasa_jax.decoding.continuous`) replicates the decode weights on a tensor=1 mesh (beside their stacked copy while they
are split per layer): 7-8B models generate on v5p-8 and v5p-64, none on v5e-8 (16 GiB chips) without a tensor axis;
32B models need `mesh.tensor=2` on v5p-64 (their `default_mesh_tensor`; with tensor=1 the pipeline refuses in
seconds and names it).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from lasa_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class PaperModel:
    """One row of the model table: hub id, the authors' bottleneck residual index (-1: none published), the HF
    config.json fields of its architecture, the Qwen3 thinking switch (None: not Qwen3), the cached asset name
    ("" = the hub checkpoint), the preset its full pipeline is sized for (`configs/pipeline.py:<name>,<preset>`) and
    the tensor-axis size it uses on TPU presets (2 for 32B models: their decode weights do not fit replicated)."""

    hub_id: str
    bottleneck_residual_index: int
    hf_config: dict
    qwen3_thinking: bool | None = None
    asset: str = ""
    default_preset: str = "cpu"
    default_mesh_tensor: int = 1   # the tensor axis its pipeline uses on TPU presets (the rest of the chips: fsdp)

    def model_config(self, **runtime) -> ModelConfig:
        return ModelConfig.from_hf_dict(self.hf_config, source=self.hub_id, **runtime)


def _qwen2(*, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, rms_norm_eps):
    return dict(model_type="qwen2", vocab_size=152064, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                rms_norm_eps=rms_norm_eps, max_position_embeddings=32768, rope_theta=1000000.0, rope_scaling=None,
                tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645)


def _qwen3(*, hidden_size, intermediate_size, num_layers, num_heads):
    return dict(model_type="qwen3", vocab_size=151936, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=8, head_dim=128,
                rms_norm_eps=1e-6, max_position_embeddings=40960, rope_theta=1000000.0, rope_scaling=None,
                tie_word_embeddings=False, attention_bias=False, bos_token_id=151643, eos_token_id=151645)


PAPER_MODELS: dict[str, PaperModel] = {
    "llama31_8b": PaperModel(
        hub_id="meta-llama/Llama-3.1-8B-Instruct", bottleneck_residual_index=14, default_preset="v5p-8",
        hf_config=dict(
            model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072,
            rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            tie_word_embeddings=False, attention_bias=False, bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009])),
    "qwen25_7b": PaperModel(
        hub_id="Qwen/Qwen2.5-7B-Instruct", bottleneck_residual_index=19, default_preset="v5p-8",
        hf_config=_qwen2(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                         rms_norm_eps=1e-6)),
    "qwen25_14b": PaperModel(
        hub_id="Qwen/Qwen2.5-14B-Instruct", bottleneck_residual_index=29, default_preset="v5p-8",
        hf_config=_qwen2(hidden_size=5120, intermediate_size=13824, num_layers=48, num_heads=40, num_kv_heads=8,
                         rms_norm_eps=1e-5)),
    "qwen25_32b": PaperModel(
        hub_id="Qwen/Qwen2.5-32B-Instruct", bottleneck_residual_index=29, default_preset="v5p-64",
        default_mesh_tensor=2,
        hf_config=_qwen2(hidden_size=5120, intermediate_size=27648, num_layers=64, num_heads=40, num_kv_heads=8,
                         rms_norm_eps=1e-5)),
    "qwen3_8b": PaperModel(
        hub_id="Qwen/Qwen3-8B", bottleneck_residual_index=21, qwen3_thinking=False, default_preset="v5p-8",
        hf_config=_qwen3(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32)),
    "qwen3_14b": PaperModel(
        hub_id="Qwen/Qwen3-14B", bottleneck_residual_index=25, qwen3_thinking=False, default_preset="v5p-8",
        hf_config=_qwen3(hidden_size=5120, intermediate_size=17408, num_layers=40, num_heads=40)),
    "qwen3_32b": PaperModel(
        hub_id="Qwen/Qwen3-32B", bottleneck_residual_index=42, qwen3_thinking=False, default_preset="v5p-64",
        default_mesh_tensor=2,
        hf_config=_qwen3(hidden_size=5120, intermediate_size=25600, num_layers=64, num_heads=64)),
    "smollm2_135m": PaperModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", bottleneck_residual_index=-1, asset="smollm2-135m-instruct",
        hf_config=dict(
            model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
            max_position_embeddings=8192, rope_theta=100000.0, rope_scaling=None, tie_word_embeddings=True,
            attention_bias=False, bos_token_id=1, eos_token_id=2)),
}


@dataclasses.dataclass(frozen=True)
class TPUPreset:
    """One TPU VM or pod slice: its chips and the per-stage defaults the pipeline config takes from it.

    Batch sizes are global. The KTO fields are defaults that `lasa_jax.memory_plan` finds to fit the paper models
    this preset is meant for (`kto_reference_mode` "precomputed" frees the reference before training)."""

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
    kto_reference_mode: str = "online"  # online | precomputed (configs/kto.py reference.mode)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


GIB = 2**30
# dense bf16 peak FLOP/s per chip, by `jax.Device.device_kind` (public TPU specifications)
PEAK_FLOPS_BY_DEVICE_KIND = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
                             "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12}
_FSDP = dict(data=1, fsdp=-1, tensor=1)
TPU_PRESETS: dict[str, TPUPreset] = {
    # single TPU VMs (one host). kto_batch_size 16 = the paper's rows per update. No paper model's KTO state fits
    # v4-8 (4 x 32 GiB) or v5e-8 (8 x 16 GiB), even with a precomputed reference (the pipeline refuses it before
    # the first stage and names a preset that fits); their KTO defaults (precomputed reference, 4 micro-batches of
    # 4 rows) are the least memory a run with 16 rows per update can take, for smaller custom models
    "v4-8": TPUPreset(accelerator_type="v4-8", num_devices=4, num_hosts=1, hbm_bytes_per_device=32 * GIB,
                      mesh=_FSDP, capture_batch_size=32, kto_batch_size=16, kto_micro_batches=4,
                      generate_batch_size=32, peak_flops_per_device=275e12, kto_reference_mode="precomputed"),
    "v5e-8": TPUPreset(accelerator_type="v5litepod-8", num_devices=8, num_hosts=1, hbm_bytes_per_device=16 * GIB,
                       mesh=_FSDP, capture_batch_size=32, kto_batch_size=16, kto_micro_batches=2,
                       generate_batch_size=32, peak_flops_per_device=197e12, kto_reference_mode="precomputed"),
    "v5p-8": TPUPreset(accelerator_type="v5p-8", num_devices=4, num_hosts=1, hbm_bytes_per_device=95 * GIB,
                       mesh=_FSDP, capture_batch_size=32, kto_batch_size=16, kto_micro_batches=1,
                       generate_batch_size=32, peak_flops_per_device=459e12,
                       kto_reference_mode="precomputed"),  # 14B models online: ~85.1 GiB of 85.5 usable
    # pod slices (several hosts; jax.distributed.initialize() is called by the scripts). The KTO batch grows to 64
    # rows so every chip holds 2 rows; the learning rate is not rescaled (set kto.train.batch_size=16 to keep the
    # paper's batch, or scale kto.train.learning_rate yourself)
    "v5p-64": TPUPreset(accelerator_type="v5p-64", num_devices=32, num_hosts=8, hbm_bytes_per_device=95 * GIB,
                        mesh=_FSDP, capture_batch_size=128, kto_batch_size=64, kto_micro_batches=1,
                        generate_batch_size=128, peak_flops_per_device=459e12),
    "v4-64": TPUPreset(accelerator_type="v4-64", num_devices=32, num_hosts=8, hbm_bytes_per_device=32 * GIB,
                       mesh=_FSDP, capture_batch_size=128, kto_batch_size=64, kto_micro_batches=1,
                       generate_batch_size=128, peak_flops_per_device=275e12),
}
# the 1-device CPU preset of the demo and tests (16 GiB host memory assumed for planning)
CPU_PRESET = TPUPreset(accelerator_type="cpu", num_devices=1, num_hosts=1, hbm_bytes_per_device=16 * GIB,
                       mesh=dict(data=1, fsdp=-1, tensor=1), capture_batch_size=8, kto_batch_size=4,
                       kto_micro_batches=1, generate_batch_size=8)


def device_peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one chip of this `device_kind`, or None when unknown (CPU, GPU, new chips)."""
    return PEAK_FLOPS_BY_DEVICE_KIND.get(device_kind)


