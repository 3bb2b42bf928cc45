"""Benchmark: the jit-compiled KTO training step with an online vs a precomputed reference.

Model: a random Llama-architecture decoder (hidden 512, 6 layers, 8 query / 4 key-value heads, MLP 1536, vocabulary
16,384: ~36M parameters) on a mesh of all local devices (FSDP). Batch: 4 rows x 256 positions, right-padded, prompts
of 40-120 tokens followed by completions filling 60-100% of the rest; KL rows pair each prompt with the next row's
completion. Timings are medians over repeated steps after a warm-up (compilation) step, state donated as in
training; "precompute" is the cost, per batch, of the reference pass that the precomputed mode runs once before
training. FLOPs: `kto_step.step_flops` (policy-only = 3 forwards of the policy rows; total = every pass run).
Run: .venv/bin/python bench/kto_step.py [--compute_dtype bfloat16 --remat none|full|minimal]. The last line
printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from lasa_jax.kto import step as kto_step
from lasa_jax.models import logprobs
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import init_decoder, param_shardings
from lasa_jax.sharding import make_mesh, put_batch

BENCH_CONFIG = dict(model_type="llama", vocab_size=16384, hidden_size=512, intermediate_size=1536, num_layers=6,
                    num_heads=8, num_kv_heads=4, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
                    pad_token_id=0)


def synthetic_batch(batch: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """KTOBatch.device_arrays()-shaped host arrays with realistic prompt/completion/padding structure."""
    rng = np.random.default_rng(seed)
    prompt_lengths = rng.integers(40, 121, batch)
    completion_lengths = [int(rng.uniform(0.6, 1.0) * (seq_len - p)) for p in prompt_lengths]
    prompts = [rng.integers(1, vocab, p) for p in prompt_lengths]
    completions = [rng.integers(1, vocab, c) for c in completion_lengths]

    def rows(pairs):
        ids = np.zeros((batch, seq_len), np.int32)
        attention = np.zeros((batch, seq_len), np.int32)
        loss = np.zeros((batch, seq_len), np.int32)
        for b, (prompt, completion) in enumerate(pairs):
            completion = completion[:seq_len - len(prompt)]
            n = len(prompt) + len(completion)
            ids[b, :n] = np.concatenate([prompt, completion])
            attention[b, :n] = 1
            loss[b, len(prompt):n] = 1
        return ids, attention, loss

    ids, attention, loss = rows(zip(prompts, completions))
    kl_ids, kl_attention, kl_loss = rows((prompts[b], completions[(b + 1) % batch]) for b in range(batch))
    return {"input_ids": ids, "attention_mask": attention, "loss_mask": loss, "kl_input_ids": kl_ids,
            "kl_attention_mask": kl_attention, "kl_loss_mask": kl_loss,
            "is_desirable": np.arange(batch) % 2 == 0, "valid": np.ones(batch, bool)}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (after one warm-up step)")
    parser.add_argument("--compute_dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", default="none", choices=("none", "full", "minimal"))
    parser.add_argument("--logits_chunk_size", type=int, default=128)
    args = parser.parse_args()

    mesh = make_mesh()
    config = ModelConfig(**BENCH_CONFIG, param_dtype="float32", compute_dtype=args.compute_dtype,
                         remat_policy=args.remat)
    model = init_decoder(config, seed=0, mesh=mesh)
    reference = model.params()
    optimizer_config = kto_step.OptimizerConfig(learning_rate=1e-6, total_steps=1000, warmup_steps=100)
    optimizer = kto_step.make_optimizer(optimizer_config)
    shardings = kto_step.state_shardings(optimizer, model.params(), param_shardings(model, mesh), mesh)
    step_config = kto_step.KTOStepConfig(logits_chunk_size=args.logits_chunk_size)
    host = synthetic_batch(args.batch, args.seq_len, config.vocab_size)
    policy_lengths, kl_lengths = host["attention_mask"].sum(1), host["kl_attention_mask"].sum(1)
    tokens = int(policy_lengths.sum())
    device = f"{jax.devices()[0].device_kind} x{mesh.devices.size}"
    print(f"device: {device}; model: {config.num_params() / 1e6:.1f}M parameters "
          f"({config.num_params(include_embeddings=False) / 1e6:.1f}M non-embedding), compute {args.compute_dtype}, "
          f"remat {args.remat}; batch {args.batch} x {args.seq_len} positions, {tokens} real policy tokens")

    # precompute pass: the reference on the policy rows and the KL rows of one batch
    def reference_pass():
        for keys in (kto_step.POLICY_ROW_KEYS, kto_step.KL_ROW_KEYS):
            arrays = put_batch(mesh, *(host[k] for k in keys))
            out = logprobs.batch_logps(reference, config, *arrays, mesh=mesh, chunk_size=args.logits_chunk_size)
        jax.block_until_ready(out)

    reference_pass()
    precompute_s = median_seconds(reference_pass, args.steps)
    ref_logps = np.asarray(logprobs.batch_logps(reference, config, *put_batch(
        mesh, *(host[k] for k in kto_step.POLICY_ROW_KEYS)), mesh=mesh, chunk_size=args.logits_chunk_size))
    kl_ref_logps = np.asarray(logprobs.batch_logps(reference, config, *put_batch(
        mesh, *(host[k] for k in kto_step.KL_ROW_KEYS)), mesh=mesh, chunk_size=args.logits_chunk_size))

    results = {}
    for mode in ("online", "precomputed"):
        online = mode == "online"
        arrays = dict(host) if online else {**host, "ref_logps": ref_logps, "kl_ref_logps": kl_ref_logps}
        batch = dict(zip(arrays, put_batch(mesh, *arrays.values())))
        step_fn = kto_step.make_train_step(policy_config=config, ref_config=config if online else None,
                                           optimizer_config=optimizer_config, step_config=step_config, mesh=mesh,
                                           shardings=shardings)
        state = kto_step.init_train_state(model.params(), optimizer, 0, shardings)
        ref_params = reference if online else None
        start = time.perf_counter()
        state, metrics = step_fn(state, batch, ref_params)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        holder = {"state": state}

        def one_step():
            holder["state"], m = step_fn(holder["state"], batch, ref_params)
            jax.block_until_ready(m)

        step_s = median_seconds(one_step, args.steps)
        useful, total = kto_step.step_flops(config, policy_lengths, kl_lengths, online)
        results[mode] = {"step_s": step_s, "first_step_s": compile_s, "tokens_per_s": tokens / step_s,
                         "flops_per_s_policy": useful / step_s, "flops_per_s_total": total / step_s}
        print(f"[{mode}] step {step_s * 1e3:.1f} ms (first step incl. compile {compile_s:.1f} s), "
              f"{tokens / step_s:,.0f} tokens/s, policy {useful / step_s / 1e9:.2f} GFLOP/s, "
              f"total {total / step_s / 1e9:.2f} GFLOP/s")
    speedup = results["online"]["step_s"] / results["precomputed"]["step_s"]
    print(f"precompute pass: {precompute_s * 1e3:.1f} ms per batch (once per batch before training); "
          f"precomputed steps are {speedup:.2f}x faster than online steps")
    print(json.dumps({"bench": "kto_step", "device": device, "params": config.num_params(),
                      "batch": args.batch, "seq_len": args.seq_len, "tokens_per_batch": tokens,
                      "compute_dtype": args.compute_dtype, "remat": args.remat, "online": results["online"],
                      "precomputed": results["precomputed"], "precompute_s_per_batch": precompute_s,
                      "speedup_precomputed_vs_online": speedup}))


if __name__ == "__main__":
    main()
