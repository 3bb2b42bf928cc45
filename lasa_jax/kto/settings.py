"""The KTO stage's settings: `read_settings(config)` is the one reader and validator of a kto config section.

configs/kto.py documents every field. `read_settings` checks the values once, before any work, and returns frozen
dataclasses (`KTOSettings`, one dataclass per section); the code below the stage takes these or plain values and
never sees the config. Values are kept as the config holds them ("" defaults included; `KTOSettings` resolves the
dtypes), so whatever a run hashes from them (run identity, benign-answer cache key) is what it was before.
Errors name fields as `config_field("train.batch_size")` spells them (the pipeline nests the section under `kto.`).
The paths the pipeline fills in when it wires the stages together (model_path, data.path, labels.ssi_dir) are
required only once the run needs them, so that the pipeline's memory check can read a section without them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from lasa_jax.infra.base_config import comma_list, template_kwargs
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.kto.buckets import length_buckets
from lasa_jax.kto.weights import BALANCE_MODES
from lasa_jax.models.config import DTYPES, REMAT_POLICIES
from lasa_jax.models.loading import ModelSettings, read_model_settings
from lasa_jax.sharding import batch_shards

DATA_FORMATS = ("paired_json", "unpaired_jsonl", "polyrefuse_completions")
LABEL_MODES = ("paper", "ssi")
# "auto": precomputed where it is possible (`lasa_jax.memory_plan.resolve_reference_mode`), else online
REFERENCE_MODES = ("auto", "online", "precomputed")


@dataclasses.dataclass(frozen=True)
class PolyrefuseSettings:
    """`data.polyrefuse` (format polyrefuse_completions): models is the spec `lasa_jax.kto.data.completion_models`
    reads ("auto", "all", "" or comma-separated folders); languages () = all."""

    models: str
    languages: tuple[str, ...]
    modes: tuple[str, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class BenignSettings:
    """`data.benign`: the base model's answers to benign prompts making `share` of the rows (`lasa_jax.kto.benign`);
    languages () = those of the loaded rows; cache_dir "" = the default cache folder."""

    share: float
    languages: tuple[str, ...]
    max_prompts: int
    max_new_tokens: int
    batch_size: int
    cache_dir: str


@dataclasses.dataclass(frozen=True)
class KTODataSettings:
    """`data`: paths (data.path split at commas; may be empty until the run needs it) read as `format`; root: the
    shared data folder ("" = none: no held-out guard references, no benign prompts); max_prompt_length 0 = no cap."""

    paths: tuple[str, ...]
    format: str
    root: str
    allow_missing_held_out: bool
    max_length: int
    truncate_completions: bool
    max_prompt_length: int
    polyrefuse: PolyrefuseSettings
    benign: BenignSettings


@dataclasses.dataclass(frozen=True)
class LabelSettings:
    """`labels`: mode "paper" (a seeded draw per row with the probability of its source, `unsafe_prob_by_source`
    parsed from "source=prob,...", else `default_prob`) or "ssi" (the SSI artifact at `ssi_dir`)."""

    mode: str
    unsafe_prob_by_source: Mapping[str, float]
    default_prob: float
    seed: int
    ssi_dir: str


@dataclasses.dataclass(frozen=True)
class ReferenceSettings:
    """`reference`: mode as requested ("auto" is resolved once the run knows its number of steps), path "" = the
    initial policy, dtype "" = the policy's (`KTOSettings.reference_dtype` resolves it)."""

    mode: str
    path: str
    dtype: str


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """`train`: the batch plan, optimizer, loss and logging fields; length_buckets parsed by
    `lasa_jax.kto.buckets.length_buckets` (None = every batch at data.max_length); peak_flops_per_device None = looked
    up from the device kind."""

    num_epochs: int
    num_steps: int
    batch_size: int
    grad_accum_steps: int
    drop_last: bool
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    adam_b1: float
    adam_b2: float
    adam_eps: float
    max_grad_norm: float
    beta: float
    desirable_weight: float
    undesirable_weight: float
    balance_weights: str
    length_buckets: tuple[int, ...] | None
    logits_chunk_size: int
    log_every_steps: int
    peak_flops_per_device: float | None


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """`checkpoint`: every_steps <= 0 saves only at the end and on SIGTERM."""

    every_steps: int
    max_to_keep: int
    async_save: bool


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """`export`: path "" = <workdir>/hf_export, dtype "" = the policy's (`KTOSettings.export_dtype` resolves it)."""

    enabled: bool
    path: str
    dtype: str


@dataclasses.dataclass(frozen=True)
class KTOSettings:
    """Everything the KTO stage reads from its config section. model: the base model (`model_path`: tokenizer, the
    trunk SSI labels are scored on) with the policy's dtypes and attention backend; init_from "" = the policy starts
    from model_path; template_kwargs: the parsed chat-template variables."""

    model: ModelSettings
    init_from: str
    remat_policy: str
    scan_layers: bool
    prefix: str
    template_kwargs: Mapping[str, Any]
    seed: int
    tensorboard: bool
    progress_bar: bool
    data: KTODataSettings
    labels: LabelSettings
    reference: ReferenceSettings
    train: TrainSettings
    checkpoint: CheckpointSettings
    export: ExportSettings

    @property
    def compute_dtype(self) -> str:
        """The dtype of matmuls and activations (compute_dtype, "" = dtype)."""
        return self.model.compute_dtype or self.model.dtype

    @property
    def reference_dtype(self) -> str:
        """The reference's parameter dtype (reference.dtype, "" = dtype)."""
        return self.reference.dtype or self.model.dtype

    @property
    def export_dtype(self) -> str:
        """The exported policy's dtype (export.dtype, "" = dtype)."""
        return self.export.dtype or self.model.dtype


def read_settings(config: ml_collections.ConfigDict) -> KTOSettings:
    """The validated settings of a kto section (mesh-independent checks; `check_mesh` does the rest)."""
    remat_policy = str(config.remat_policy)
    if remat_policy not in REMAT_POLICIES:
        raise InputError(f"{config_field('remat_policy')} must be one of {REMAT_POLICIES}, got {remat_policy!r}")
    return KTOSettings(
        model=read_model_settings(config), init_from=str(config.init_from or ""), remat_policy=remat_policy,
        scan_layers=bool(config.scan_layers), prefix=str(config.prefix), template_kwargs=template_kwargs(config),
        seed=int(config.seed), tensorboard=bool(config.tensorboard), progress_bar=bool(config.progress_bar),
        data=_data_settings(config.data), labels=_label_settings(config.labels),
        reference=_reference_settings(config.reference), train=_train_settings(config.train, config.data.max_length),
        checkpoint=CheckpointSettings(every_steps=int(config.checkpoint.every_steps),
                                      max_to_keep=int(config.checkpoint.max_to_keep),
                                      async_save=bool(config.checkpoint.async_save)),
        export=_export_settings(config.export))


def check_mesh(settings: KTOSettings, mesh) -> None:
    """InputError unless the micro-batch splits evenly over the mesh's batch shards."""
    t = settings.train
    shards = batch_shards(mesh)
    if (t.batch_size // t.grad_accum_steps) % shards:
        raise InputError(f"the micro-batch ({config_field('train.batch_size')} / grad_accum_steps = "
                         f"{t.batch_size // t.grad_accum_steps}) must be a multiple of the mesh's batch shards "
                         f"(data x fsdp) = {shards} devices")


def parse_unsafe_probs(spec: str) -> dict[str, float]:
    """"safety=0.5,ultrafeedback=0" -> {"safety": 0.5, "ultrafeedback": 0.0} (`labels.unsafe_prob_by_source`)."""
    probs = {}
    for item in comma_list(spec):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            probs[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"{config_field('labels.unsafe_prob_by_source')}: expected 'source=prob,...', "
                             f"got {spec!r}") from None
    return probs


def _check_dtype(field: str, value: str) -> str:
    """`value` when it is "" (the policy's dtype) or one of DTYPES."""
    if value and value not in DTYPES:
        raise InputError(f"{config_field(field)} must be one of {DTYPES} or \"\" (= dtype), got {value!r}")
    return value


def _data_settings(data: ml_collections.ConfigDict) -> KTODataSettings:
    if data.format not in DATA_FORMATS:
        raise InputError(f"{config_field('data.format')} must be one of {DATA_FORMATS}, got {data.format!r}")
    pr, benign = data.polyrefuse, data.benign
    share = float(benign.share)
    if not 0.0 <= share < 1.0:
        raise InputError(f"{config_field('data.benign.share')}: expected a fraction in [0, 1), got {share}")
    return KTODataSettings(
        paths=tuple(p.strip() for p in str(data.path).split(",") if p.strip()), format=str(data.format),
        root=str(data.get("root", "") or ""), allow_missing_held_out=bool(data.get("allow_missing_held_out", False)),
        max_length=int(data.max_length), truncate_completions=bool(data.get("truncate_completions", True)),
        max_prompt_length=int(data.max_prompt_length or 0),
        polyrefuse=PolyrefuseSettings(models=str(pr.models), languages=tuple(comma_list(pr.languages)),
                                      modes=tuple(comma_list(pr.modes)), source=str(pr.source)),
        benign=BenignSettings(share=share, languages=tuple(comma_list(benign.languages)),
                              max_prompts=int(benign.max_prompts), max_new_tokens=int(benign.max_new_tokens),
                              batch_size=int(benign.batch_size), cache_dir=str(benign.cache_dir or "")))


def _label_settings(labels: ml_collections.ConfigDict) -> LabelSettings:
    if labels.mode not in LABEL_MODES:
        raise InputError(f"{config_field('labels.mode')} must be one of {LABEL_MODES}, got {labels.mode!r}")
    return LabelSettings(mode=str(labels.mode), unsafe_prob_by_source=parse_unsafe_probs(labels.unsafe_prob_by_source),
                         default_prob=float(labels.default_prob), seed=int(labels.seed),
                         ssi_dir=str(labels.ssi_dir or ""))


def _reference_settings(reference: ml_collections.ConfigDict) -> ReferenceSettings:
    mode = reference.mode
    if mode not in REFERENCE_MODES:
        raise InputError(f"{config_field('reference.mode')} must be one of {REFERENCE_MODES}, got {mode!r}")
    return ReferenceSettings(mode=str(mode), path=str(reference.path or ""),
                             dtype=_check_dtype("reference.dtype", str(reference.dtype or "")))


def _train_settings(t: ml_collections.ConfigDict, max_length: int) -> TrainSettings:
    if t.batch_size < 2:
        raise InputError(f"{config_field('train.batch_size')} must be >= 2 (KL rows need a partner), got "
                         f"{t.batch_size}")
    if t.grad_accum_steps < 1 or t.batch_size % t.grad_accum_steps:
        raise InputError(f"{config_field('train.batch_size')} ({t.batch_size}) must be a multiple of "
                         f"{config_field('train.grad_accum_steps')} ({t.grad_accum_steps})")
    if t.num_steps < 0 or (t.num_steps == 0 and t.num_epochs < 1):
        raise InputError(f"need {config_field('train.num_steps')} > 0 or {config_field('train.num_epochs')} >= 1, "
                         f"got num_steps={t.num_steps}, num_epochs={t.num_epochs}")
    if t.log_every_steps < 1:
        raise InputError(f"{config_field('train.log_every_steps')} must be >= 1, got {t.log_every_steps}")
    balance = str(t.get("balance_weights", ""))
    if balance not in BALANCE_MODES:
        raise InputError(f"{config_field('train.balance_weights')}: expected one of {BALANCE_MODES}, got {balance!r}")
    peak = t.peak_flops_per_device
    return TrainSettings(
        num_epochs=int(t.num_epochs), num_steps=int(t.num_steps), batch_size=int(t.batch_size),
        grad_accum_steps=int(t.grad_accum_steps), drop_last=bool(t.drop_last), learning_rate=float(t.learning_rate),
        warmup_steps=int(t.warmup_steps), weight_decay=float(t.weight_decay), adam_b1=float(t.adam_b1),
        adam_b2=float(t.adam_b2), adam_eps=float(t.adam_eps), max_grad_norm=float(t.max_grad_norm),
        beta=float(t.beta), desirable_weight=float(t.desirable_weight), undesirable_weight=float(t.undesirable_weight),
        balance_weights=balance, length_buckets=length_buckets(int(max_length), str(t.get("length_buckets", "auto"))),
        logits_chunk_size=int(t.logits_chunk_size), log_every_steps=int(t.log_every_steps),
        peak_flops_per_device=None if peak is None else float(peak))


def _export_settings(export: ml_collections.ConfigDict) -> ExportSettings:
    return ExportSettings(enabled=bool(export.enabled), path=str(export.path or ""),
                          dtype=_check_dtype("export.dtype", str(export.dtype or "")))
