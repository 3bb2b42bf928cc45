"""Two processes on localhost (CPU collectives through gloo, 4 simulated devices each) form one 8-device mesh:
a sharded forward with hidden states, one KTO step and an HF export equal the single-process run, and a checkpoint
both processes write together restores the train state exactly onto its shardings."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lasa_jax.sharding import make_mesh
from tests.multihost import multihost_worker

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_single_process(tiny_hf_dirs, tmp_path):
    model_dir = str(tiny_hf_dirs["llama"])
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), os.environ.get("PYTHONPATH", "")])}
    port = str(_free_port())
    out_dir = tmp_path / "multi"
    out_dir.mkdir()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), str(i), "2", port,
                               model_dir, str(out_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode(errors="replace") for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    multi = [dict(np.load(out_dir / f"result{i}.npz")) for i in range(2)]
    # only process 0 writes HF files
    assert bool(multi[0]["export_written"]) and not bool(multi[1]["export_written"])
    # the checkpoint both processes wrote: one complete step directory, restored bit-equal onto the same shardings
    for result in multi:
        assert bool(result["restored_state_equal"]) and bool(result["restored_shardings_equal"])
        assert int(result["restored_meta_step"]) == 1
    assert sorted(os.listdir(out_dir / "checkpoints")) == ["1"]

    single = multihost_worker.compute(model_dir, make_mesh(data=2, fsdp=2, tensor=2), str(tmp_path / "single"),
                                      str(tmp_path / "single_checkpoints"))
    assert bool(single["restored_state_equal"]) and bool(single["restored_shardings_equal"])
    for result in multi:  # every process sees the same global values
        for key in ("logits", "hidden_states", "kto_loss", "kto_grad_norm", "updated_gate_kernel",
                    "updated_q_kernel"):
            np.testing.assert_allclose(result[key], single[key], atol=2e-5, rtol=1e-5, err_msg=key)
    # the policy starts equal to the reference: r = 0 and z0 = 0, so every row's loss is 1 - sigmoid(0) = 0.5
    assert abs(float(single["kto_loss"]) - 0.5) < 1e-6 and float(single["kto_grad_norm"]) > 0
    exported = AutoModelForCausalLM.from_pretrained(out_dir / "export").state_dict()
    original = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert all(torch.equal(exported[k], original[k]) for k in original)
