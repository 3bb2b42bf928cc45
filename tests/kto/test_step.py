"""lasa_jax.kto.step: chunked log-probs, the learning-rate schedule, weight decay, and the jit step (sharded,
accumulated) on the demo batches of the tiny Llama."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lasa_jax.kto import step as kto_step
from lasa_jax.models import logprobs
from lasa_jax.models.decoder import forward, param_shardings
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.logprobs import completion_logps
from lasa_jax.sharding import make_mesh, put_batch
from tests.kto.kto_runs import TOTAL_STEPS, one_device_mesh

pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_chunked_sequence_logps_match_full_logits_values_and_gradients(llama_dir, demo_batches):
    model = from_pretrained(llama_dir)
    batch = demo_batches[0]
    ids, mask, loss_mask = (jnp.asarray(a) for a in (batch.input_ids, batch.attention_mask, batch.loss_mask))
    chunk_sizes = (0, 7, 64, 255)

    @jax.jit
    def all_variants(params):
        def full(p):
            return completion_logps(forward(p, model.config, ids, mask).logits, ids, loss_mask)

        def chunked(p, chunk):
            return logprobs.sequence_logps(p, model.config, ids, mask, loss_mask, chunk_size=chunk)

        values = [full(params)] + [chunked(params, chunk) for chunk in chunk_sizes]
        grads = [jax.grad(lambda p: full(p).sum())(params), jax.grad(lambda p: chunked(p, 64).sum())(params)]
        return values, grads

    (expected, *variants), (grad_full, grad_chunked) = all_variants(model.params())
    assert np.all(np.asarray(expected) < 0)
    for chunk, value in zip(chunk_sizes, variants):
        np.testing.assert_allclose(np.asarray(value), np.asarray(expected), rtol=1e-5, err_msg=str(chunk))
    for g_full, g_chunk in zip(jax.tree.leaves(grad_full), jax.tree.leaves(grad_chunked)):
        np.testing.assert_allclose(np.asarray(g_chunk), np.asarray(g_full), rtol=1e-4, atol=1e-5)


def test_learning_rate_schedule_matches_transformers_cosine_with_warmup():
    from transformers import get_cosine_schedule_with_warmup

    for warmup, total in ((100, 300), (3, 10), (100, 40), (0, 5)):
        schedule = kto_step.learning_rate_schedule(kto_step.OptimizerConfig(learning_rate=1e-6, total_steps=total,
                                                                            warmup_steps=warmup))
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
        hf = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(warmup, total), num_training_steps=total)
        for step in range(total):
            assert float(schedule(step)) == pytest.approx(hf.get_last_lr()[0], rel=1e-5, abs=1e-13), (warmup, step)
            optimizer.step()
            hf.step()


def test_weight_decay_skips_norms_and_biases(tiny_hf_dirs):
    params = from_pretrained(tiny_hf_dirs["qwen2"]).params()  # qwen2: q/k/v biases, tied embeddings
    mask = kto_step.weight_decay_mask(params)
    assert mask["embed"] and mask["layers"]["q_kernel"] and mask["layers"]["down_kernel"]
    assert not (mask["final_norm"] or mask["layers"]["attn_norm"] or mask["layers"]["mlp_norm"]
                or mask["layers"]["q_bias"] or mask["layers"]["v_bias"])
    optimizer = kto_step.make_optimizer(kto_step.OptimizerConfig(learning_rate=0.1, total_steps=2, warmup_steps=0,
                                                                 weight_decay=0.5))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zero_grads, optimizer.init(params), params)
    for decayed, update, param in zip(jax.tree.leaves(mask), jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(update), -0.1 * 0.5 * np.asarray(param) if decayed else 0.0,
                                   rtol=1e-6, atol=1e-8)


def _run_steps(model_dir, mesh, batches, grad_accum_steps, num_steps):
    """`num_steps` jitted steps of the RUN optimizer from the base model on `mesh`: [(host metrics, host params)]."""
    model = from_pretrained(model_dir, mesh=mesh)
    optimizer_config = kto_step.OptimizerConfig(learning_rate=2e-3, total_steps=TOTAL_STEPS, warmup_steps=2)
    optimizer = kto_step.make_optimizer(optimizer_config)
    shardings = kto_step.state_shardings(optimizer, model.params(), param_shardings(model, mesh), mesh)
    state = kto_step.init_train_state(model.params(), optimizer, 42, shardings)
    step = kto_step.make_train_step(policy_config=model.config, ref_config=model.config,
                                    optimizer_config=optimizer_config,
                                    step_config=kto_step.KTOStepConfig(grad_accum_steps=grad_accum_steps,
                                                                       logits_chunk_size=64),
                                    mesh=mesh, shardings=shardings)
    reference = model.params()
    out = []
    for batch in batches[:num_steps]:
        arrays = batch.device_arrays()
        state, metrics = step(state, dict(zip(arrays, put_batch(mesh, *arrays.values()))), reference)
        assert state["params"]["layers"]["q_kernel"].sharding == shardings["params"]["layers"]["q_kernel"]
        out.append((jax.device_get(metrics), jax.device_get(state["params"])))
    return out


def _assert_steps_close(got, want, rtol=2e-5, atol=2e-5):
    """Metrics within float32 noise (log-probs ~ -800 differ by ulps of 6e-5 between programs), params close."""
    for (metrics_got, params_got), (metrics_want, params_want) in zip(got, want):
        for name in ("loss", "grad_norm", "kl", "rewards/desirable", "rewards/undesirable", "logps/desirable",
                     "logps/undesirable", "margin"):
            np.testing.assert_allclose(metrics_got[name], metrics_want[name], rtol=rtol, atol=atol, err_msg=name)
        for a, b in zip(jax.tree.leaves(params_got), jax.tree.leaves(params_want)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)


def test_sharded_step_matches_single_device(llama_dir, demo_batches):
    single = _run_steps(llama_dir, one_device_mesh(), demo_batches, 1, 2)
    sharded = _run_steps(llama_dir, make_mesh(data=2, fsdp=2, tensor=2), demo_batches, 1, 2)
    assert single[0][0]["loss"] == pytest.approx(0.5) and single[1][0]["margin"] != 0.0  # step 2: policy != reference
    _assert_steps_close(sharded, single)


def test_gradient_accumulation_matches_one_big_batch(llama_dir, demo_batches):
    """At step 1 the policy is the reference, so z0 = 0 for any micro-batching: A = 2 must give A = 1's update.
    (From step 2 on, z0 is a per-micro-batch mean, as in TRL, and A changes it.)"""
    whole = _run_steps(llama_dir, one_device_mesh(), demo_batches, 1, 1)
    accumulated = _run_steps(llama_dir, one_device_mesh(), demo_batches, 2, 1)
    assert accumulated[0][0]["kl"] == whole[0][0]["kl"] == 0.0
    _assert_steps_close(accumulated, whole)
