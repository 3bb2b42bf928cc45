"""Which run a KTO checkpoint belongs to: the model directories of a run and its identity record.

`ModelDirs` resolves the base model, the initial policy and the reference; `run_identity` is what a checkpoint must
share with a run that resumes it (fingerprints of the weights, architecture, data fingerprint, seed, batch,
sequence length, optimizer and loss hyperparameters, dtypes; lasa_jax.kto.trainer's docstring). The record's
keys and values are those of checkpoints written before the module split, so such checkpoints still resume.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.kto import step as kto_step
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.hf import model_fingerprint, resolve_model_path


@dataclasses.dataclass(frozen=True)
class ModelDirs:
    """Resolved local HF directories of a run: base (`model_path`: tokenizer, SSI trunk), policy_init (`init_from`
    or base) and reference (`reference.path` or policy_init)."""

    base: str
    policy_init: str
    reference: str
    reference_flag: str  # the setting the reference directory comes from, for error messages

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ModelDirs:
        base = resolve_field("model_path", config.model_path)
        policy_init = resolve_field("init_from", config.init_from) if config.init_from else base
        if config.reference.path:
            return cls(base, policy_init, resolve_field("reference.path", config.reference.path), "reference.path")
        return cls(base, policy_init, policy_init, "init_from" if config.init_from else "model_path")


def resolve_field(flag: str, value: str) -> str:
    """`resolve_model_path(value)` with errors naming the config field `flag`."""
    try:
        return resolve_model_path(value)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{config_field(flag)}: {e}") from None


def check_architecture(model_config: ModelConfig, policy_config: ModelConfig, flag: str, directory: str) -> None:
    """InputError unless the model loaded from config field `flag` has the architecture of model_path."""
    if model_config.to_hf_dict() != policy_config.to_hf_dict():
        raise InputError(f"{config_field(flag)}={directory}: architecture differs from {config_field('model_path')} "
                         "(policy, reference and base model must share one architecture and tokenizer)")


def run_identity(config: ml_collections.ConfigDict, model_dirs: ModelDirs, policy_config: ModelConfig,
                 data_summary: Mapping[str, Any], optimizer_config: kto_step.OptimizerConfig) -> dict[str, Any]:
    """What a checkpoint must share with a run that resumes it (module docstring). Weights are identified by
    fingerprint, not path: "policy_init" is "model_path" without `init_from`; "reference" is always the reference
    weights' fingerprint (whichever directory they come from)."""
    t = config.train
    return {
        "model": {"fingerprint": model_fingerprint(model_dirs.base), "architecture": policy_config.to_hf_dict()},
        "policy_init": model_fingerprint(model_dirs.policy_init) if config.init_from else "model_path",
        "reference": model_fingerprint(model_dirs.reference),
        "data": {"fingerprint": data_summary["data_fingerprint"], "examples": data_summary["examples"]},
        "seed": config.seed,
        "dtypes": {"params": policy_config.param_dtype, "compute": policy_config.compute_dtype,
                   "reference": config.reference.dtype or config.dtype},
        "batch": {"batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps,
                  "seq_len": config.data.max_length, "drop_last": t.drop_last,
                  "total_steps": optimizer_config.total_steps},
        "optimizer": dataclasses.asdict(optimizer_config),
        "loss": {"beta": t.beta, "desirable_weight": data_summary["weights"]["desirable_weight"],
                 "undesirable_weight": data_summary["weights"]["undesirable_weight"]},
    }

