"""The identity of a KTO run: what its checkpoints and reference table must share with a run that resumes them.

`run_identity` records the fingerprints of the weights, the architecture, the data fingerprint (tokens, labels,
prefix), seed, batch, sequence length, optimizer and loss hyperparameters and dtypes; reference mode, remat,
chunking, length buckets, logging and checkpoint settings may change between runs. The record's keys and values are
those of checkpoints written before the stage moved into `lasa_jax.kto` (and before its settings became
dataclasses), so such checkpoints still resume: change neither without a migration.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lasa_jax.kto.run_models import ModelDirs
from lasa_jax.kto.settings import KTOSettings
from lasa_jax.kto.step import OptimizerConfig
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.hf import model_fingerprint

# the keys of the run identity the precomputed reference log-probs depend on
REFERENCE_TABLE_KEYS = ("model", "reference", "data", "seed", "dtypes", "batch")


def run_identity(settings: KTOSettings, model_dirs: ModelDirs, policy_config: ModelConfig,
                 data_summary: Mapping[str, Any], optimizer_config: OptimizerConfig) -> dict[str, Any]:
    """What a checkpoint must share with a run that resumes it (module docstring). Weights are identified by
    fingerprint, not path: "policy_init" is "model_path" without `init_from`; "reference" is always the reference
    weights' fingerprint (whichever directory they come from)."""
    t = settings.train
    return {
        "model": {"fingerprint": model_fingerprint(model_dirs.base), "architecture": policy_config.to_hf_dict()},
        "policy_init": model_fingerprint(model_dirs.policy_init) if settings.init_from else "model_path",
        "reference": model_fingerprint(model_dirs.reference),
        "data": {"fingerprint": data_summary["data_fingerprint"], "examples": data_summary["examples"]},
        "seed": settings.seed,
        "dtypes": {"params": policy_config.param_dtype, "compute": policy_config.compute_dtype,
                   "reference": settings.reference_dtype},
        "batch": {"batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps,
                  "seq_len": settings.data.max_length, "drop_last": t.drop_last,
                  "total_steps": optimizer_config.total_steps},
        "optimizer": dataclasses.asdict(optimizer_config),
        "loss": {"beta": t.beta, "desirable_weight": data_summary["weights"]["desirable_weight"],
                 "undesirable_weight": data_summary["weights"]["undesirable_weight"]},
    }


def reference_table_identity(identity: Mapping[str, Any], logits_chunk_size: int) -> dict[str, Any]:
    """The identity stored with a precomputed reference table (`lasa_jax.kto.reference_table`): the run identity's
    `REFERENCE_TABLE_KEYS` and the log-softmax chunk size; a table with another identity is recomputed."""
    table_identity = {key: identity[key] for key in REFERENCE_TABLE_KEYS}
    table_identity["logits_chunk_size"] = logits_chunk_size
    return table_identity
