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

from lasa_jax import io_utils
from lasa_jax.errors import InputError
from lasa_jax.io_utils import atomic_write_json
from lasa_jax.stage import config_field
from lasa_jax.xla_cache import enable_compilation_cache

log = logging.getLogger("lasa_jax")

DISTRIBUTED_MODES = ("auto", "on", "off")
# environment variables that mean "this is one process of a multi-process job"
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                     "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def base_config() -> ml_collections.ConfigDict:
    """Fields shared by all stage configs (each `configs/<stage>.py` starts from this)."""
    c = ml_collections.ConfigDict()
    c.model_path = ""            # local HF directory (or hub id) of the base model
    c.dtype = "bfloat16"         # parameter dtype: float32 | bfloat16
    c.compute_dtype = ""         # "" = same as dtype
    c.seed = 42
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # -1 = remaining devices
    c.distributed = "auto"       # auto | on | off: jax.distributed.initialize() for multi-process runs
    c.attention_backend = "einsum"  # einsum | xla | cudnn | splash | auto (lasa_jax/models/attention_kernels.py)
    return c


def template_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`--config.template_kwargs`: a JSON object of chat-template variables (e.g. '{"enable_thinking": false}' for
    Qwen3), or "" for none. One field, parsed here, for every stage that renders chat templates, so training and
    inference render identically."""
    value = config.get("template_kwargs", "")
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"{config_field('template_kwargs')} must be a JSON object, got {value!r} ({e})") from None
    if not isinstance(parsed, dict):
        raise InputError(f"{config_field('template_kwargs')} must be a JSON object, got {value!r}")
    return parsed


def comma_list(value: str) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"] (config fields holding lists as comma-separated strings)."""
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def is_writer() -> bool:
    import jax

    return jax.process_index() == 0


def maybe_initialize_distributed(mode: str = "auto") -> bool:
    """Call `jax.distributed.initialize()` for multi-process runs. Must run before any other jax call.

    mode "on": always; "off": never; "auto": on a Cloud TPU VM (where `initialize()` discovers the pod's hosts
    itself, and is harmless on a single host), or when the environment names a multi-process job (coordinator
    address, SLURM/MPI). Returns whether it initialised.
    """
    if mode not in DISTRIBUTED_MODES:
        raise InputError(f"{config_field('distributed')} must be one of {DISTRIBUTED_MODES}, got {mode!r}")
    if mode == "off":
        return False
    if mode == "auto":
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        multi = any(os.environ.get(k) for k in _MULTIPROCESS_ENV if k != "TPU_WORKER_HOSTNAMES") or "," in hosts
        if not (multi or on_cloud_tpu_vm()):
            return False
    import jax

    jax.distributed.initialize()
    log.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
    return True


def on_cloud_tpu_vm() -> bool:
    """A Cloud TPU VM: TPU chips exposed to this host (/dev/accel* on v2-v4, /dev/vfio on v5e/v5p/v6e) and the
    TPU runtime (libtpu) installed. Checked without initialising any jax backend."""
    import glob
    import importlib.util

    chips = glob.glob("/dev/accel*") or [p for p in glob.glob("/dev/vfio/*") if not p.endswith("/vfio")]
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


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
    enable_compilation_cache(config.get("compilation_cache", ""))  # before any jit; lasa_jax.xla_cache
    if not workdir:
        raise InputError("--workdir is required")
    _resolve_asset_paths(config)
    if is_writer():
        io_utils.makedirs(workdir)  # local directory or URL (gs://...): io_utils
        atomic_write_json(os.path.join(workdir, config_name), json.loads(config.to_json_best_effort()))
    return mesh_from_config(config.mesh)


def _resolve_asset_paths(config: ml_collections.ConfigDict) -> None:
    """Replace "asset:<name>" in the model-path fields of a stage config by the cached directory."""
    from lasa_jax.assets import asset_name, resolve_asset_path

    for field in ("model_path", "base_model_path", "tokenizer_path", "init_from"):
        value = config.get(field)
        if isinstance(value, str) and asset_name(value) is not None:
            with config.unlocked():
                config[field] = resolve_asset_path(value)


def load_model(config: ml_collections.ConfigDict, mesh=None, path: str | None = None, **kwargs):
    """`from_pretrained` with the config's dtype fields and, when the config has one, its `attention_backend`
    (lasa_jax.models.attention_kernels; not a base field, so it does not enter stage hashes unless set);
    `path` overrides `config.model_path`."""
    from lasa_jax.models import from_pretrained

    path = path or config.model_path
    if not path:
        raise InputError(f"{config_field('model_path')} is required (a local Hugging Face model directory or a hub id)")
    kwargs.setdefault("attention_backend", config.get("attention_backend", "einsum"))
    return from_pretrained(path, dtype=config.dtype, mesh=mesh, compute_dtype=config.get("compute_dtype") or None,
                           **kwargs)


def load_tokenizer(path: str, require_chat_template: bool = False):
    """The model directory's tokenizer (never `trust_remote_code`), checked against the directory's config.json: every
    token id must index an embedding row; `require_chat_template` refuses a tokenizer without a chat template.
    A URL is downloaded to a temporary directory first (transformers reads local files)."""
    from transformers import AutoTokenizer

    if io_utils.is_url(path):
        with io_utils.local_copy(path) as local:
            return load_tokenizer(local, require_chat_template)

    from lasa_jax.io_utils import read_json
    from lasa_jax.models.integrity import check_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    config_file = os.path.join(path, "config.json")
    vocab_size = read_json(config_file, "config.json").get("vocab_size") if os.path.isfile(config_file) else None
    check_tokenizer(tokenizer, path, vocab_size if isinstance(vocab_size, int) else None, require_chat_template)
    return tokenizer
