"""Benchmark: evaluation-style generation on the real SmolLM2-135M-Instruct, lasa-jax vs transformers, same run.

Prompts: `--num_prompts` MultiJail prompts (shared data `multijail/MultiJail.csv`, round-robin over its ten
languages; lasa_jax/demo_data/prompts.jsonl when the shared data is absent), rendered with the chat template
(`lasa_jax.models.chat.render_prompt`). Greedy, `--max_new_tokens` (EOS ends a row on every side), `--batch_size` rows
on every side, float32. Timed, one after another:
  hf:         transformers `generate` on static batches (prompts sorted by length, left-padded),
  static:     lasa-jax `generate_batched(scheduler="static")` (length buckets, a batch runs until its longest row),
  continuous: lasa-jax `generate_batched(scheduler="continuous")` (slot pool refilled as rows finish).
lasa-jax times include compilation (reported separately as *_compile_s from jax.monitoring events).
token_match: fraction of prompts whose new tokens (cut after the first EOS) equal transformers'.
Last line printed: one JSON object with "ratio_vs_hf" (hf_s / continuous_s), "ratio_vs_static", "token_match".

    .venv/bin/python bench/eval_generation.py --num_prompts 16 --max_new_tokens 32   # small
    .venv/bin/python bench/eval_generation.py                                         # 320 x 256 (long)
"""
import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL = "asset:smollm2-135m-instruct"


def load_prompts(num: int) -> list[str]:
    from lasa_jax.data.eval_sets import load_multijail

    root = pathlib.Path(os.environ.get("LASA_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared"
                                       / "data"))
    csv = root / "multijail" / "MultiJail.csv"
    if csv.is_file():
        rows = load_multijail(csv)
        by_lang: dict[str, list[str]] = {}
        for p in rows:
            by_lang.setdefault(p.language, []).append(p.prompt)
    else:
        from lasa_jax.infra.storage import iter_jsonl

        by_lang = {}
        for row in iter_jsonl(pathlib.Path(__file__).resolve().parents[1] / "lasa_jax" / "demo_data" /
                              "prompts.jsonl"):
            by_lang.setdefault(row["language"], []).append(row["prompt"])
    columns = list(by_lang.values())
    out = [col[i] for i in range(max(map(len, columns))) for col in columns if i < len(col)]
    return out[:num]


def hf_generate(hf_model, rows, batch_size, new_tokens, eos, pad):
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        T = max(len(rows[i]) for i in idx)
        ids = np.full((len(idx), T), pad, np.int64)
        mask = np.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, T - len(rows[i]):], mask[r, T - len(rows[i]):] = rows[i], 1
        with torch.no_grad():
            gen = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                    max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=pad).numpy()[:, T:]
        for r, i in enumerate(idx):
            out[i] = gen[r]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_prompts", type=int, default=320)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--skip_static", action="store_true", help="do not time lasa-jax's static loop")
    args = parser.parse_args()

    import jax
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lasa_jax.decoding.generate import generate_batched, trim_after_eos
    from lasa_jax.models.assets import resolve_asset_path
    from lasa_jax.models.chat import render_prompt
    from lasa_jax.models.hf import from_pretrained

    directory = resolve_asset_path(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = [render_prompt(tokenizer, p).input_ids.tolist() for p in load_prompts(args.num_prompts)]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    hf_model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model = from_pretrained(directory, dtype="float32")
    lengths = [len(r) for r in rows]
    print(f"eval_generation bench: SmolLM2-135M-Instruct float32, {len(rows)} prompts ({min(lengths)}..{max(lengths)} "
          f"tokens), greedy, {args.max_new_tokens} new tokens, batch {args.batch_size}; jax {jax.__version__} on "
          f"{jax.devices()[0].platform}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs", flush=True)
    compile_events: list[float] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: compile_events.append(secs) if name.startswith("/jax/core/compile/") else None)

    def timed(fn):
        compile_events.clear()
        start = time.perf_counter()
        result = fn()
        return time.perf_counter() - start, float(sum(compile_events)), result

    def lasa(scheduler):
        return lambda: generate_batched(model, rows, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                        eos_token_id=eos, pad_token_id=pad, scheduler=scheduler)

    hf_s, _, hf_out = timed(lambda: hf_generate(hf_model, rows, args.batch_size, args.max_new_tokens, eos, pad))
    hf_tokens = [trim_after_eos(t, eos)[0] for t in hf_out]
    print(f"transformers: {hf_s:.1f} s", flush=True)
    cont_s, cont_compile, cont_out = timed(lasa("continuous"))
    print(f"lasa-jax continuous: {cont_s:.1f} s ({cont_compile:.1f} s compiling)", flush=True)
    result = {"bench": "eval_generation", "num_prompts": len(rows), "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "load_average_1min": os.getloadavg()[0]}
    if not args.skip_static:
        static_s, static_compile, static_out = timed(lasa("static"))
        print(f"lasa-jax static: {static_s:.1f} s ({static_compile:.1f} s compiling)", flush=True)
        result.update(static_s=static_s, static_compile_s=static_compile,
                      static_token_match=float(np.mean([np.array_equal(a, b) for (a, _), b in
                                                        zip(static_out, hf_tokens)])))

    def match(out):
        return float(np.mean([np.array_equal(a, b) for (a, _), b in zip(out, hf_tokens)]))

    new_tokens = int(sum(len(t) for t in hf_tokens))
    result.update(hf_s=hf_s, continuous_s=cont_s, continuous_compile_s=cont_compile, new_tokens_hf=new_tokens,
                  ratio_vs_hf=hf_s / cont_s, token_match=match(cont_out))
    result["ratio_vs_static"] = result["static_s"] / cont_s if "static_s" in result else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
