"""Forward-pass benchmark: lasa_jax (jit, all hidden states) vs transformers PyTorch, same model, same run.

~100M-parameter Llama config, fp32, batch 4 x 256 tokens, all L+1 hidden states returned by both sides.
Also measures a large fp32 matmul in XLA to express lasa_jax's achieved FLOP/s as a fraction of the machine's
matmul rate. Last line printed: one JSON object.

    .venv/bin/python bench/forward.py [--batch 4] [--seq 256] [--repeats 5]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gemm", type=int, default=2048, help="size n of the n x n x n fp32 matmul reference")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lasa_jax.models.decoder import forward_jit
    from lasa_jax.models.flops import forward_flops
    from lasa_jax.models.hf import from_pretrained

    hf_config = LlamaConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                            num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=1024,
                            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 256})
    torch.manual_seed(0)
    torch_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    n_params = sum(p.numel() for p in torch_model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save_pretrained(tmp)
        model = from_pretrained(tmp, dtype="float32")
    config = model.config
    rng = np.random.default_rng(0)
    ids = rng.integers(0, config.vocab_size, (args.batch, args.seq)).astype(np.int32)
    mask = np.ones_like(ids)
    tokens = args.batch * args.seq
    print(f"model: {n_params / 1e6:.1f}M params, {config.num_layers} layers, d={config.hidden_size}; "
          f"batch {args.batch} x {args.seq} tokens, fp32, all hidden states; devices: {jax.devices()}")

    params, jids, jmask = model.params(), jnp.asarray(ids), jnp.asarray(mask)

    def run_jax():
        out = forward_jit(params, config, jids, jmask, output_hidden_states=True)
        jax.block_until_ready((out.logits, out.hidden_states))

    start = time.perf_counter()
    run_jax()
    compile_s = time.perf_counter() - start
    jax_best, jax_median = best_time(run_jax, args.repeats)

    tids, tmask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def run_torch():
        with torch.inference_mode():
            out = torch_model(input_ids=tids, attention_mask=tmask, output_hidden_states=True)
        return out

    run_torch()  # warm-up
    torch_best, torch_median = best_time(run_torch, args.repeats)

    n = args.gemm
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(matmul(a, b))
    gemm_best, _ = best_time(lambda: jax.block_until_ready(matmul(a, b)), args.repeats)
    gemm_rate = 2 * n ** 3 / gemm_best

    # lasa_jax computes full (not causally halved) attention scores; count what it executes
    flops = forward_flops(config, args.batch, args.seq, causal=False)
    lasa_rate = flops / jax_best
    result = {
        "bench": "forward", "params_m": round(n_params / 1e6, 1), "batch": args.batch, "seq": args.seq,
        "lasa_tokens_per_s": round(tokens / jax_best, 1), "torch_tokens_per_s": round(tokens / torch_best, 1),
        "ratio": round(torch_best / jax_best, 3), "lasa_s": round(jax_best, 4), "torch_s": round(torch_best, 4),
        "lasa_median_s": round(jax_median, 4), "torch_median_s": round(torch_median, 4),
        "compile_s": round(compile_s, 2), "lasa_gflops": round(lasa_rate / 1e9, 1),
        "gemm_gflops": round(gemm_rate / 1e9, 1), "gemm_fraction": round(lasa_rate / gemm_rate, 3),
        "torch_threads": torch.get_num_threads(), "device": str(jax.devices()[0].device_kind),
    }
    print(f"lasa_jax: {result['lasa_tokens_per_s']} tokens/s ({jax_best * 1e3:.1f} ms, compile {compile_s:.1f} s), "
          f"{result['lasa_gflops']} GFLOP/s")
    print(f"torch:    {result['torch_tokens_per_s']} tokens/s ({torch_best * 1e3:.1f} ms)")
    print(f"ratio lasa/torch: {result['ratio']}x; fp32 {n}^3 matmul: {result['gemm_gflops']} GFLOP/s; "
          f"lasa_jax at {100 * result['gemm_fraction']:.0f}% of it")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
