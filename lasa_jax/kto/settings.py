"""The KTO stage's settings: `read_settings(config)` validates the kto config section (configs/kto.py) once.

`KTOSettings.config` is the validated section (the data-preparation helpers of `lasa_jax.kto.data` read
their sub-sections `data` / `labels` from it); the fields beside it are the values the run derives from it.
Errors name fields as `lasa_jax.stage.config_field` spells them (the pipeline nests the section under `kto.`).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.kto.buckets import length_buckets
from lasa_jax.sharding import batch_shards

# "auto": precomputed where it is possible (`lasa_jax.memory_plan.resolve_reference_mode`), else online
REFERENCE_MODES = ("auto", "online", "precomputed")


@dataclasses.dataclass(frozen=True)
class KTOSettings:
    """config: the validated kto section; reference_mode: as requested ("auto" resolved once the run knows its
    number of steps); buckets: sequence-length buckets (`lasa_jax.kto.buckets`; None = every batch at
    max_length); compute_dtype / reference_dtype: with "" resolved to `dtype`."""

    config: ml_collections.ConfigDict
    reference_mode: str
    buckets: tuple[int, ...] | None
    compute_dtype: str
    attention_backend: str
    reference_dtype: str


def read_settings(config: ml_collections.ConfigDict) -> KTOSettings:
    """Validate the kto section (mesh-independent checks; `check_mesh` does the rest) and derive its settings."""
    t = config.train
    mode = config.reference.mode
    if mode not in REFERENCE_MODES:
        raise InputError(f"{config_field('reference.mode')} must be one of {REFERENCE_MODES}, got {mode!r}")
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
    if not config.model_path:
        raise InputError(f"{config_field('model_path')} is required (the base model: a local Hugging Face "
                         "directory)")
    buckets = length_buckets(int(config.data.max_length), str(t.get("length_buckets", "auto")))
    return KTOSettings(config=config, reference_mode=mode, buckets=buckets,
                       compute_dtype=config.compute_dtype or config.dtype,
                       attention_backend=str(config.get("attention_backend", "einsum")),
                       reference_dtype=config.reference.dtype or config.dtype)


def check_mesh(settings: KTOSettings, mesh) -> None:
    """InputError unless the micro-batch splits evenly over the mesh's batch shards."""
    t = settings.config.train
    shards = batch_shards(mesh)
    if (t.batch_size // t.grad_accum_steps) % shards:
        raise InputError(f"the micro-batch ({config_field('train.batch_size')} / grad_accum_steps = "
                         f"{t.batch_size // t.grad_accum_steps}) must be a multiple of the mesh's batch shards "
                         f"(data x fsdp) = {shards} devices")
