"""Multi-host start-up decisions: distributed modes and Cloud TPU VM detection."""
import pytest

from lasa_jax.infra.distributed import maybe_initialize_distributed, on_cloud_tpu_vm


def test_distributed_modes(monkeypatch):
    with pytest.raises(ValueError, match="config field distributed must be one of"):
        maybe_initialize_distributed("sometimes")
    assert maybe_initialize_distributed("off") is False
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS",
                 "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # one host: no multi-process job
    assert not on_cloud_tpu_vm()  # this CPU machine has no TPU chips
    assert maybe_initialize_distributed("auto") is False
