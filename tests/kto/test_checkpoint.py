"""lasa_jax.kto.checkpoint: sharded save/restore with orbax, retention, interrupted writes, run-identity checks."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lasa_jax.kto.checkpoint import Checkpointer, abstract_target, check_run_identity
from lasa_jax.sharding import make_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(mesh):
    """A TrainState-like pytree: sharded params, an optax state (named tuples), a step and a PRNG key."""
    w = jax.device_put(jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16), NamedSharding(mesh, P("fsdp", "tensor")))
    b = jax.device_put(jnp.linspace(-1, 1, 16, dtype=jnp.float32), NamedSharding(mesh, P()))
    params = {"w": w, "b": b}
    optimizer = optax.adamw(1e-3)
    grads = jax.tree.map(lambda x: x * 0.5, params)
    _, opt_state = optimizer.update(grads, optimizer.init(params), params)
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(7), "rng": jax.random.PRNGKey(3)}


def test_roundtrip_restores_values_onto_requested_shardings(tmp_path):
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    state = _state(mesh)
    meta = {"step": 7, "data_position": {"epoch": 1, "index": 24}, "identity": {"seed": 42, "dims": (8, 16)}}
    with Checkpointer(tmp_path / "ckpt", async_save=True) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state, meta)
        ckpt.wait_until_finished()
        assert ckpt.latest_step() == 7
        # restore onto a different mesh layout: every leaf must come back on the sharding the target asks for
        other = make_mesh(data=1, fsdp=8, tensor=1)
        target = abstract_target(state)
        target["params"]["w"] = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(other, P("fsdp")))
        restored, restored_meta = ckpt.restore(7, target)
    assert restored_meta == {"step": 7, "data_position": {"epoch": 1, "index": 24},
                             "identity": {"seed": 42, "dims": [8, 16]}}
    assert restored["params"]["w"].sharding == NamedSharding(other, P("fsdp"))
    assert restored["params"]["b"].sharding == state["params"]["b"].sharding
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_keeps_last_k_and_never_overwrites_a_step(tmp_path):
    mesh = make_mesh(data=1, fsdp=8, tensor=1)
    state = _state(mesh)
    with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
        for step in (1, 2, 3, 4):
            assert ckpt.save(step, state, {"step": step})
        assert ckpt.all_steps() == [3, 4]
        assert not ckpt.save(4, state, {"step": "again"})
        assert ckpt.restore_meta(4) == {"step": 4}
        with pytest.raises(FileNotFoundError, match="step 1"):
            ckpt.restore_meta(1)
    assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_restore_onto_a_mismatched_target_is_a_clear_error(tmp_path):
    mesh = make_mesh(data=1, fsdp=8, tensor=1)
    state = _state(mesh)
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(1, state, {})
        wrong = abstract_target(state)
        wrong["params"]["w"] = jax.ShapeDtypeStruct((8, 32), jnp.float32, sharding=state["params"]["w"].sharding)
        wrong["params"]["extra"] = wrong["params"].pop("b")
        with pytest.raises(ValueError, match="does not match") as error:
            ckpt.restore(1, wrong)
        for problem in ("params/w: checkpoint (8, 16) float32, expected (8, 32) float32",
                        "missing (1):\n    params/extra", "unexpected (1):\n    params/b"):
            assert problem in str(error.value)
        with pytest.raises(ValueError, match="JSON"):
            ckpt.save(2, state, {"not json": object()})


def test_a_save_killed_mid_write_is_never_picked_up(tmp_path):
    """A process dies (os._exit, like kill -9) while its asynchronous save of step 2 is being written."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        import jax.numpy as jnp
        from lasa_jax.kto.checkpoint import Checkpointer
        ckpt = Checkpointer({str(tmp_path)!r}, async_save=True)
        w = jnp.ones((4096, 4096), jnp.float32)
        ckpt.save(1, {{"w": w}}, {{"step": 1}})
        ckpt.wait_until_finished()
        ckpt.save(2, {{"w": w * 2}}, {{"step": 2}})
        os._exit(0)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120, capture_output=True)
    leftovers = [name for name in os.listdir(tmp_path) if name.startswith("2")]
    assert leftovers and all(".orbax-checkpoint-tmp" in name for name in leftovers)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        target = {"w": jax.ShapeDtypeStruct((4096, 4096), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(
            jax.devices()[0]))}
        state, meta = ckpt.restore(1, target)
    assert meta == {"step": 1} and float(state["w"].min()) == float(state["w"].max()) == 1.0
    assert sorted(os.listdir(tmp_path)) == ["1"]  # the partial write was removed when the directory was reopened


def test_check_run_identity_lists_every_difference():
    saved = {"model": {"fingerprint": "abc", "layers": 3}, "seed": 42, "batch": {"size": 16}, "dims": [8, 16]}
    check_run_identity(saved, {"model": {"fingerprint": "abc", "layers": 3}, "seed": 42, "batch": {"size": 16},
                               "dims": (8, 16)}, "ckpt")
    with pytest.raises(ValueError) as error:
        check_run_identity(saved, {"model": {"fingerprint": "xyz", "layers": 3}, "seed": 42, "batch": {},
                                   "new": 1, "dims": [8, 16]}, "checkpoint /w/5")
    message = str(error.value)
    assert "checkpoint /w/5 was written by a different run" in message
    for expected in ("model.fingerprint: checkpoint has 'abc', this run has 'xyz'",
                     "batch.size: checkpoint has 16, this run has '<absent>'",
                     "new: checkpoint has '<absent>', this run has 1"):
        assert expected in message
    assert "seed" not in message and "layers" not in message
