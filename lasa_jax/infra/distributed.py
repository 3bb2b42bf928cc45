"""Multi-process start-up and the writer rule: `jax.distributed.initialize()` when the environment names several
processes (or on a Cloud TPU VM), and `is_writer()` (process 0 writes reports, configs and exported files).

Multi-process rule: every process runs the same program and takes part in collectives (sharded forward passes,
checkpoint save/restore); only process 0 (`is_writer()`) writes.
"""
from __future__ import annotations

import logging
import os

from lasa_jax.infra.errors import InputError, config_field

log = logging.getLogger("lasa_jax")


DISTRIBUTED_MODES = ("auto", "on", "off")



# environment variables that mean "this is one process of a multi-process job"
_MULTIPROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                     "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")



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
