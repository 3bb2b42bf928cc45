"""Shared run start-up: config parsing helpers, multi-host start-up decisions, resolved config in the workdir."""
import json

import ml_collections
import pytest

from lasa_jax.cli import start_run
from lasa_jax.infra.base_config import base_config, comma_list, template_kwargs
from lasa_jax.infra.distributed import maybe_initialize_distributed, on_cloud_tpu_vm


def test_template_kwargs_and_comma_lists():
    config = ml_collections.ConfigDict(dict(template_kwargs='{"enable_thinking": false}'))
    assert template_kwargs(config) == {"enable_thinking": False}
    config.template_kwargs = ""
    assert template_kwargs(config) == {}
    for bad in ("[1, 2]", "{enable_thinking: false}"):
        config.template_kwargs = bad
        with pytest.raises(ValueError, match="config field template_kwargs must be a JSON object"):
            template_kwargs(config)
    assert comma_list(" a, b,,c ") == ["a", "b", "c"] and comma_list("") == []


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


def test_start_run_writes_the_resolved_config_and_builds_the_mesh(tmp_path):
    config = base_config()
    config.model_path = "/models/x"
    config.mesh.fsdp = 4
    config.mesh.data = 2
    mesh = start_run(config, str(tmp_path / "run"))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["model_path"] == "/models/x" and written["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="--workdir is required"):
        start_run(config, "")
