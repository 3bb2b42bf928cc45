"""Benchmark: lasa_jax `generate` vs Hugging Face `generate`, greedy, on CPU.

Model: a randomly initialised Llama (hidden 768, 12 layers, 12 heads, MLP 2048, vocab 32000, untied: ~134M
parameters), float32, built with transformers, saved with `save_pretrained` and imported into lasa_jax with
`from_pretrained`. Workload: batch 8, left-padded prompts of 24..52 random tokens, exactly 64 new tokens
(EOS disabled on both sides). Timings are medians of interleaved repeated runs after a warm-up of each side.
Reported separately: lasa_jax's first call and its tracing + compilation time (jax.monitoring compile events), and
the 1-minute load average (the numbers are only meaningful on an otherwise idle machine). Greedy tokens of both
sides are compared.
Run: .venv/bin/python bench/generate.py. The last line printed is one JSON object with "ratio".
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lasa_jax.decoding.generate import generate
from lasa_jax.models.hf import from_pretrained

BATCH, NEW_TOKENS, REPEATS = 8, 64, 3
MODEL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
             intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)


def left_padded_prompts(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(24, 53, BATCH)
    T = int(lengths.max())
    ids = np.zeros((BATCH, T), np.int64)
    mask = np.zeros((BATCH, T), np.int64)
    for r, n in enumerate(lengths):
        ids[r, T - n:] = rng.integers(3, MODEL["vocab_size"], n)
        mask[r, T - n:] = 1
    return ids, mask


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    torch.manual_seed(0)
    hf_model = LlamaForCausalLM(LlamaConfig(**MODEL)).eval()
    hf_model.generation_config.eos_token_id = None  # exactly NEW_TOKENS tokens on both sides
    num_params = sum(p.numel() for p in hf_model.parameters())
    ids, mask = left_padded_prompts()
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        model = from_pretrained(directory, dtype="float32")
    print(f"generate bench: Llama {num_params / 1e6:.0f}M params, batch {BATCH}, prompts {mask.sum(1).min()}.."
          f"{mask.sum(1).max()} tokens (left-padded), {NEW_TOKENS} new tokens, greedy, float32; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs")

    def run_lasa():
        return generate(model, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=[], pad_token_id=0)

    def run_hf():
        with torch.no_grad():
            out = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                                    max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                    pad_token_id=0)
        return out[:, ids.shape[1]:].numpy()

    compile_events: list[float] = []  # trace + lowering + XLA compile of every program jit builds in the first call
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kwargs: compile_events.append(secs) if name.startswith("/jax/core/compile/") else None)
    start = time.perf_counter()
    run_lasa()
    first_call_s = time.perf_counter() - start
    compile_s = float(sum(compile_events))
    run_hf()  # warm-up
    # interleaved repeats, so that background load affects both sides alike
    lasa_times, hf_times = [], []
    for _ in range(REPEATS):
        seconds, lasa_tokens = timed(run_lasa)
        lasa_times.append(seconds)
        seconds, hf_tokens = timed(run_hf)
        hf_times.append(seconds)
    lasa_s, hf_s = float(np.median(lasa_times)), float(np.median(hf_times))
    assert hf_tokens.shape == lasa_tokens.shape == (BATCH, NEW_TOKENS), (hf_tokens.shape, lasa_tokens.shape)
    match = float(np.mean(hf_tokens == lasa_tokens))
    first_mismatch = [int(np.argmax(r != 0)) if (r != 0).any() else NEW_TOKENS for r in (hf_tokens != lasa_tokens)]
    new_tokens = BATCH * NEW_TOKENS
    result = {"bench": "generate", "params": int(num_params), "batch": BATCH, "new_tokens": NEW_TOKENS,
              "load_average_1min": os.getloadavg()[0], "lasa_s": lasa_s, "hf_s": hf_s,
              "lasa_tokens_per_s": new_tokens / lasa_s, "hf_tokens_per_s": new_tokens / hf_s, "ratio": hf_s / lasa_s,
              "lasa_first_call_s": first_call_s, "lasa_compile_s": compile_s, "token_match": match,
              "first_mismatch_step_min": int(min(first_mismatch))}
    print(f"lasa_jax {new_tokens / lasa_s:.1f} tok/s ({lasa_s:.3f} s; first call {first_call_s:.2f} s, of which "
          f"{compile_s:.2f} s tracing + compilation), HF {new_tokens / hf_s:.1f} tok/s ({hf_s:.3f} s): "
          f"ratio {hf_s / lasa_s:.2f}x; greedy tokens identical: {match:.1%}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
