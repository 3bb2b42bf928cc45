"""The start of a run (`lasa_jax.cli.start_run`): the resolved config in the workdir and the mesh."""
import json

import pytest

from lasa_jax.cli import start_run
from lasa_jax.infra.base_config import base_config


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
