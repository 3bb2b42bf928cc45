"""One process of the two-process test (tests/multihost/test_multihost.py); also imported by its reference run.

    python tests/multihost/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT MODEL_DIR OUT_DIR

Each process simulates 4 CPU devices; together they form one (data 2, fsdp 2, tensor 2) mesh. The process runs a
sharded forward pass with all hidden states, one KTO step, a checkpoint save and restore of the train state (in
OUT_DIR/checkpoints, written by both processes together) and an HF export, and saves the gathered results to
OUT_DIR/result<PROCESS_ID>.npz.
"""
import os
import sys

import numpy as np

BATCH, SEQ = 8, 16


def kto_batch(vocab_size: int) -> dict[str, np.ndarray]:
    """A deterministic global KTO batch (policy and KL rows, right-padded, completions in the second half)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, SEQ + 1, BATCH)
    batch: dict[str, np.ndarray] = {}
    for prefix in ("", "kl_"):
        ids = rng.integers(5, vocab_size, (BATCH, SEQ)).astype(np.int32)
        mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int32)
        loss = ((np.arange(SEQ)[None] >= 6) & (mask == 1)).astype(np.int32)
        batch.update({f"{prefix}input_ids": ids * mask, f"{prefix}attention_mask": mask, f"{prefix}loss_mask": loss})
    batch["is_desirable"] = np.arange(BATCH) % 2 == 0
    batch["valid"] = np.ones(BATCH, bool)
    return batch


def compute(model_dir: str, mesh, export_dir: str, checkpoint_dir: str) -> dict[str, np.ndarray]:
    """Forward (logits, all hidden states), one KTO step, checkpoint round trip, export; every result gathered to
    host numpy. `checkpoint_dir` must be the same directory for every process."""
    import jax

    from lasa_jax.kto import step as kto_step
    from lasa_jax.models.decoder import param_shardings
    from lasa_jax.models.hf import from_pretrained
    from lasa_jax.models.hf_export import save_pretrained
    from lasa_jax.sharding import put_batch, to_host

    model = from_pretrained(model_dir, mesh=mesh)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, model.config.vocab_size, (BATCH, SEQ)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 11:] = 0  # right padding
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    result = {"logits": to_host(out.logits), "hidden_states": to_host(out.hidden_states)}

    optimizer_config = kto_step.OptimizerConfig(learning_rate=1e-3, total_steps=10, warmup_steps=0)
    optimizer = kto_step.make_optimizer(optimizer_config)
    shardings = kto_step.state_shardings(optimizer, model.params(), param_shardings(model, mesh), mesh)
    ref_params = model.params()
    state = kto_step.init_train_state(jax.tree.map(lambda x: x.copy(), ref_params), optimizer, 0, shardings)
    step_fn = kto_step.make_train_step(policy_config=model.config, ref_config=model.config,
                                       optimizer_config=optimizer_config, step_config=kto_step.KTOStepConfig(),
                                       mesh=mesh, shardings=shardings)
    batch = kto_batch(model.config.vocab_size)
    global_batch = dict(zip(batch, put_batch(mesh, *batch.values())))
    state, metrics = step_fn(state, global_batch, ref_params)
    result["kto_loss"] = np.asarray(to_host(metrics["loss"]))
    result["kto_grad_norm"] = np.asarray(to_host(metrics["grad_norm"]))
    for name in ("gate_kernel", "q_kernel"):
        result[f"updated_{name}"] = to_host(state["params"]["layers"][name])
    result.update(checkpoint_round_trip(state, optimizer, shardings, checkpoint_dir))
    written = save_pretrained(model, export_dir, overwrite=True)
    result["export_written"] = np.asarray(written is not None)
    return result


def checkpoint_round_trip(state, optimizer, shardings, checkpoint_dir: str) -> dict[str, np.ndarray]:
    """Save the train state (asynchronously, as the trainer does), restore it onto the abstract state with the same
    shardings, and compare: restored_state_equal (every leaf bit-equal, compared on the devices),
    restored_shardings_equal (every leaf on the sharding it was saved from), restored_meta_step."""
    import jax
    import jax.numpy as jnp

    from lasa_jax.kto import step as kto_step
    from lasa_jax.kto.checkpoint import Checkpointer
    from lasa_jax.sharding import to_host

    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state["params"])
    target = kto_step.abstract_state(optimizer, abstract_params, shardings)
    with Checkpointer(checkpoint_dir, async_save=True) as checkpointer:
        checkpointer.save(1, state, {"step": 1})
        checkpointer.wait_until_finished()
        restored, meta = checkpointer.restore(1, target)
    equal = jax.jit(lambda a, b: jnp.stack([jnp.array_equal(x, y) for x, y in
                                            zip(jax.tree.leaves(a), jax.tree.leaves(b))]).all())(state, restored)
    same_shardings = all(r.sharding == s for r, s in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)))
    return {"restored_state_equal": to_host(equal), "restored_shardings_equal": np.asarray(same_shardings),
            "restored_meta_step": np.asarray(meta["step"])}


def main():
    process_id, num_processes, port, model_dir, out_dir = sys.argv[1:6]
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=int(num_processes),
                               process_id=int(process_id))
    assert jax.process_count() == int(num_processes) and jax.local_device_count() == 4, jax.devices()
    from lasa_jax.sharding import make_mesh

    result = compute(model_dir, make_mesh(data=2, fsdp=2, tensor=2), os.path.join(out_dir, "export"),
                     os.path.join(out_dir, "checkpoints"))
    np.savez(os.path.join(out_dir, f"result{process_id}.npz"), **result)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
