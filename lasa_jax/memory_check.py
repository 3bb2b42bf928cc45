"""The pipeline's memory check: `kto_plan` / `generation_plan` (lasa_jax.memory_plan) arguments read from the
stage configs, the variants tried when a plan does not fit (smaller micro-batches, precomputed reference, bf16
optimizer state, smaller decoding batch, a tensor axis, another preset) and `check_pipeline`, which refuses with one
`InputError` naming the preset, the numbers and a setting or preset that fits.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from lasa_jax.generate import stage as generate_stage
from lasa_jax.generate.settings import GenerateSettings
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.kto import stage as kto_stage
from lasa_jax.kto.settings import KTOSettings
from lasa_jax.memory_plan import (
    MemoryPlan,
    generation_plan,
    kto_plan,
    mesh_batch_shards,
    preset_named,
    resolve_reference_mode,
)
from lasa_jax.models.config import ModelConfig
from lasa_jax.presets import GIB, TPU_PRESETS


def kto_settings(kto: KTOSettings) -> dict[str, Any]:
    """`kto_plan` keyword arguments from the KTO stage's settings (`lasa_jax.kto.stage.settings`). reference.mode
    "auto" is resolved with train.num_steps when set; otherwise the run's step count needs the data and "auto" stays
    (planned as precomputed: online only beyond `MAX_PRECOMPUTED_KL_ROWS`). max_length: the longest length bucket."""
    t = kto.train
    mode = kto.reference.mode
    if mode == "auto" and t.num_steps > 0:
        mode = resolve_reference_mode(mode, total_steps=t.num_steps, batch_size=t.batch_size)
    return dict(batch_size=t.batch_size, grad_accum_steps=t.grad_accum_steps, max_length=kto.data.max_length,
                param_dtype=kto.model.dtype, compute_dtype=kto.model.compute_dtype, reference_mode=mode,
                reference_dtype=kto.reference.dtype, remat_policy=kto.remat_policy,
                logits_chunk_size=t.logits_chunk_size)


# rendered prompt length assumed for generation when `max_prompt_length` is 0 (no cut): MultiJail / XSTest prompts
# with a chat template stay well under it; prompts beyond it get a larger bucket (and cache) than planned
DEFAULT_PLANNED_PROMPT_LENGTH = 512


def generation_settings(s: GenerateSettings) -> dict[str, Any]:
    """`generation_plan` keyword arguments from the generate stage's settings (`lasa_jax.generate.settings`)."""
    return dict(batch_size=s.decoding.batch_size,
                prompt_length=s.max_prompt_length or DEFAULT_PLANNED_PROMPT_LENGTH,
                max_new_tokens=s.decoding.max_new_tokens, dtype=s.model.dtype, compute_dtype=s.model.compute_dtype)


def _kto_variants(settings: dict[str, Any], shards: int) -> Iterable[dict[str, Any]]:
    """Settings to try on the same preset, least intrusive first: precomputed reference, full remat, more
    micro-batches (each still a multiple of the mesh's batch shards); then each of those with bfloat16 parameters
    and optimizer state (a numerics change: last resort)."""
    cumulative = [dict(settings)]
    if settings["reference_mode"] == "online":  # "auto" is planned as precomputed already
        cumulative.append({**cumulative[-1], "reference_mode": "precomputed"})
    if settings["remat_policy"] != "full":
        cumulative.append({**cumulative[-1], "remat_policy": "full"})
    accum = int(settings["grad_accum_steps"])
    while settings["batch_size"] % (accum * 2) == 0 and (settings["batch_size"] // (accum * 2)) % shards == 0:
        accum *= 2
        cumulative.append({**cumulative[-1], "grad_accum_steps": accum})
    yield from cumulative[1:]
    for variant in cumulative:
        yield {**variant, "param_dtype": "bfloat16"}


def _changes(old: dict[str, Any], new: dict[str, Any], prefix: str) -> str:
    flags = {"reference_mode": "reference.mode", "remat_policy": "remat_policy", "param_dtype": "dtype",
             "grad_accum_steps": "train.grad_accum_steps", "batch_size": "train.batch_size"}
    return " ".join(f"{prefix}{flags[k]}={new[k]}" for k in flags if k in new and new[k] != old.get(k))


def suggest_kto(config: ModelConfig, plan: MemoryPlan, kto_prefix: str = "kto.") -> str:
    """The first setting on the same preset (`_kto_variants`) and the smallest other preset (with its own
    defaults) whose KTO plan fits, as flags and GiB per device; or a sentence saying no preset does."""
    settings = {k: plan.settings[k] for k in plan.settings if k not in ("rows_per_device", "mesh")}
    sizes = plan.settings["mesh"]
    found = []
    for variant in _kto_variants(settings, mesh_batch_shards(sizes)):
        candidate = kto_plan(config, plan.preset, mesh=sizes, **variant)
        if candidate.fits:
            note = (" (bfloat16 master weights and AdamW moments: 1e-6 updates may stall)"
                    if variant["param_dtype"] != settings["param_dtype"] else "")
            found.append(f"on {plan.preset}: {_changes(settings, variant, kto_prefix)} "
                         f"({candidate.total / GIB:.1f} GiB per device{note})")
            break
    by_size = sorted(TPU_PRESETS.items(), key=lambda kv: (kv[1].num_devices * kv[1].hbm_bytes_per_device))
    for name, preset in by_size:
        if name == plan.preset:
            continue
        variant = {**settings, "batch_size": preset.kto_batch_size, "grad_accum_steps": preset.kto_micro_batches,
                   "reference_mode": preset.kto_reference_mode}
        candidate = kto_plan(config, name, **variant)
        if candidate.fits:
            found.append(f"preset {name} ({preset.num_devices} chips of {preset.hbm_bytes_per_device / GIB:.0f} "
                         f"GiB) with its defaults ({candidate.total / GIB:.1f} GiB per device)")
            break
    return " or ".join(found) or ("no preset of lasa_jax.presets holds it; use a larger pod slice (more chips "
                                  "shard the state further)")


def suggest_generation(config: ModelConfig, plan: MemoryPlan) -> str:
    """The first fitting change on the same preset: fewer decode slots (halving), then a tensor axis in the mesh
    (tensor-parallel decode weights and KV heads; it is the mesh of every stage) with the same or fewer slots; else
    the smallest preset whose generation plan fits with these settings."""
    settings = {k: plan.settings[k] for k in ("batch_size", "prompt_length", "max_new_tokens", "dtype",
                                              "compute_dtype", "replicate_max_bytes")}
    sizes, devices = plan.settings["mesh"], preset_named(plan.preset).num_devices
    for tensor in sorted({sizes["tensor"], 2, 4, 8}):
        if tensor < sizes["tensor"] or devices % (tensor * sizes["data"]):
            continue
        mesh = {**sizes, "fsdp": devices // (tensor * sizes["data"]), "tensor": tensor}
        batch = settings["batch_size"] * 2
        while batch > 1:
            batch //= 2
            if (tensor, batch) == (sizes["tensor"], settings["batch_size"]):
                continue
            candidate = generation_plan(config, plan.preset, mesh=mesh, **{**settings, "batch_size": batch})
            if candidate.fits:
                changes = [f"generate.decoding.batch_size={batch}"] if batch != settings["batch_size"] else []
                if tensor != sizes["tensor"]:
                    changes.append(f"mesh.tensor={tensor} (the mesh of every stage)")
                return f"on {plan.preset}: {' '.join(changes)} ({candidate.total / GIB:.1f} GiB per device)"
    for name in sorted(TPU_PRESETS, key=lambda n: TPU_PRESETS[n].num_devices * TPU_PRESETS[n].hbm_bytes_per_device):
        if name != plan.preset and generation_plan(config, name, **settings).fits:
            return f"preset {name}"
    return "no preset of lasa_jax.presets holds it"


def check_pipeline(config: Any, model_config: ModelConfig, stages: Iterable[str]) -> list[MemoryPlan]:
    """Plans of the KTO and generation stages in `stages` for a pipeline config (configs/pipeline.py); raises one
    InputError naming every plan that does not fit, its numbers and a setting or preset that fits."""
    stages = set(stages)
    plans, problems = [], []
    mesh = dict(config.mesh)
    if "kto" in stages:
        plan = kto_plan(model_config, config.preset, mesh=mesh, **kto_settings(kto_stage.settings(config.kto)))
        plans.append(plan)
        if not plan.fits:
            problems.append(f"{plan.describe()}; fits: {suggest_kto(model_config, plan)}")
    if stages & {"generate_baseline", "generate_lasa"}:
        generate = copy.deepcopy(config.generate)
        with generate.unlocked():
            generate.mode = "baseline"  # the decoding settings are those of every mode; no SSI paths needed here
        plan = generation_plan(model_config, config.preset, mesh=mesh,
                               **generation_settings(generate_stage.settings(generate)))
        plans.append(plan)
        if not plan.fits:
            problems.append(f"{plan.describe()}; fits: {suggest_generation(model_config, plan)}")
    if problems:
        raise InputError(f"{config_field('preset')}={config.preset}: {model_config.num_params() / 1e9:.1f}B-parameter "
                         f"model does not fit (lasa_jax.memory_plan): " + " | ".join(problems))
    return plans
