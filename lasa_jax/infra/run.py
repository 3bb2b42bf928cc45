"""What every entry point shares: base config fields, multi-host start-up, the mesh, the workdir, loading the model.

Scripts in `lasa_jax/scripts/` parse flags, then call `start_run(config, workdir)` and a library function.
Multi-process rule: every process runs the same program and takes part in collectives (sharded forward passes,
checkpoint save/restore); only process 0 (`is_writer()`) writes reports, configs and HF files.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import ml_collections

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer, maybe_initialize_distributed
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_write_json
from lasa_jax.infra.xla_cache import enable_compilation_cache

log = logging.getLogger("lasa_jax")


def mesh_from_config(mesh_config) -> Any:
    from lasa_jax.sharding import make_mesh

    return make_mesh(data=int(mesh_config.data), fsdp=int(mesh_config.fsdp), tensor=int(mesh_config.tensor))


def start_run(config: ml_collections.ConfigDict, workdir: str, config_name: str = "config.json"):
    """Initialise multi-host if needed, resolve "asset:<name>" model paths (the lasa-jax cache, fetched once),
    create `workdir`, write the resolved config there (process 0), build the mesh.

    Returns the mesh.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    maybe_initialize_distributed(config.get("distributed", "auto"))
    enable_compilation_cache(config.get("compilation_cache", ""))  # before any jit; lasa_jax.infra.xla_cache
    if not workdir:
        raise InputError("--workdir is required")
    _resolve_asset_paths(config)
    if is_writer():
        storage.makedirs(workdir)  # local directory or URL (gs://...): storage
        atomic_write_json(os.path.join(workdir, config_name), json.loads(config.to_json_best_effort()))
    return mesh_from_config(config.mesh)


def _resolve_asset_paths(config: ml_collections.ConfigDict) -> None:
    """Replace "asset:<name>" in the model-path fields of a stage config by the cached directory."""
    from lasa_jax.infra.assets import asset_name, resolve_asset_path

    for field in ("model_path", "base_model_path", "tokenizer_path", "init_from"):
        value = config.get(field)
        if isinstance(value, str) and asset_name(value) is not None:
            with config.unlocked():
                config[field] = resolve_asset_path(value)


