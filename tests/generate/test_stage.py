"""The generate stage: baseline and gated runs write records and meta (with a real SSI artifact), settings errors
surface before any work, and the evaluation prompts it loads."""
import json
import os
import pathlib

import numpy as np
import pytest

from lasa_jax.data.eval_sets import load_eval_prompts
from lasa_jax.decoding.answers import Decoding, generate_responses, read_generations
from lasa_jax.generate.stage import run as run_generate_stage


def test_load_eval_prompts(shared_data, tmp_path):
    prompts = load_eval_prompts(["multijail", "xstest_safe", "or_bench_hard_test", "oktest"], data_root=shared_data,
                                languages=["en", "sw"], max_per_language=2)
    by_source = {}
    for p in prompts:
        by_source.setdefault(p.source, []).append(p)
    assert {s: len(v) for s, v in by_source.items()} == {"multijail": 4, "xstest": 2, "or_bench_hard_test": 2,
                                                          "oktest": 2}
    ids = [p.id.rsplit(":", 1)[0] for p in by_source["multijail"]]
    assert ids[::2] == ids[1::2] and ids[0] != ids[2]  # row-major: the same two queries in both languages
    assert [p.language for p in by_source["multijail"]] == ["en", "sw", "en", "sw"]
    assert {p.expected for p in by_source["xstest"]} == {"benign"}
    limited = load_eval_prompts(["multijail", "xstest_safe"], data_root=shared_data, languages=["en", "sw"],
                                max_per_language=2, limit_sets=["multijail"])
    assert sum(p.source == "multijail" for p in limited) == 4 and sum(p.source == "xstest" for p in limited) == 250
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text(json.dumps({"id": "m:1", "language": "German", "prompt": "Hallo?", "expected": "benign"}) + "\n",
                     encoding="utf-8")
    mine = load_eval_prompts([f"jsonl:{jsonl}"])
    assert mine[0].language == "de" and mine[0].source == "mine"
    with pytest.raises(ValueError, match="duplicate prompt id 'm:1'"):
        load_eval_prompts([f"jsonl:{jsonl}", f"jsonl:{jsonl}"])
    with pytest.raises(ValueError, match="unknown eval set 'multijial'"):
        load_eval_prompts(["multijial"], data_root=shared_data)


def test_generate_stage_baseline_writes_records_and_meta(tiny_hf_dirs, shared_data, tmp_path, eval_prompts,
                                                          generate_config):
    from lasa_jax.cli import start_run

    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"id": p.id, "language": p.language, "prompt": p.prompt,
                                         "expected": p.expected}) + "\n" for p in eval_prompts), encoding="utf-8")
    config = generate_config
    config.model_path = str(tiny_hf_dirs["llama"])
    config.dtype = "float32"
    config.mode = "baseline"
    config.eval_sets = f"jsonl:{jsonl},xstest_safe"
    config.data_root = str(shared_data)
    config.max_per_language = 2
    config.decoding.max_new_tokens = 8
    config.progress = False
    workdir = str(tmp_path / "run")
    mesh = start_run(config, workdir, config_name="generate_config.json")
    output = run_generate_stage(config, workdir, mesh).outputs["generations"]
    records = read_generations(output)
    assert [r["id"] for r in records][:4] == [p.id for p in eval_prompts] and len(records) == 6
    assert all(not r["prefix_used"] and r["ssi_score"] is None for r in records)
    meta = json.loads(pathlib.Path(output + ".meta.json").read_text(encoding="utf-8"))
    assert meta["mode"] == "baseline" and meta["summary"]["prompts"] == 6 and meta["fingerprint"]
    assert meta["decoding"]["max_new_tokens"] == 8 and meta["template_kwargs"] == {}
    assert not os.path.exists(output + ".partial")
    config.mode = "lasa"
    with pytest.raises(ValueError, match="needs config field ssi_dir and config field base_model_path"):
        run_generate_stage(config, workdir, mesh).outputs["generations"]


@pytest.mark.parametrize("mode", ["lasa", "prefix_only"])
def test_generate_stage_gated_with_a_real_ssi_artifact(tiny_hf_dirs, llama, tmp_path, mode, eval_prompts,
                                                      generate_config):
    """The stage scores with an SSI artifact on the base model and injects the prefix exactly where the logit is above
    the artifact's threshold_logit; prefix_only generates with that base model (model_path may be left empty)."""
    import dataclasses

    from lasa_jax.cli import start_run
    from lasa_jax.ssi.artifact import SSI, SSIConfig, SSIScorer, save_ssi
    from lasa_jax.ssi.features import tokenization_fingerprint
    from lasa_jax.ssi.mlp import new_classifier

    model, tokenizer = llama
    classifier = new_classifier(model.config.hidden_size, (), 0.0, seed=0)
    ssi_config = SSIConfig(residual_index=2, threshold=0.5, d_model=model.config.hidden_size, hidden_dims=(),
                           pooling="last", chat_template=False, base_model_fingerprint=model.fingerprint,
                           train_languages=("en",), max_length=64, base_model_dtype="float32",
                           tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=False, max_length=64))
    scorer = SSIScorer(model, SSI(ssi_config, classifier))
    probs, _ = scorer.score([p.prompt for p in eval_prompts])
    logits, _ = scorer.score_logits([p.prompt for p in eval_prompts])
    threshold_logit = float(np.median(logits))  # two prompts above, two below
    threshold = float(1.0 / (1.0 + np.exp(-threshold_logit)))
    save_ssi(tmp_path / "ssi", SSI(dataclasses.replace(ssi_config, threshold=threshold,
                                                       threshold_logit=threshold_logit), classifier))
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("".join(json.dumps({"id": p.id, "language": p.language, "prompt": p.prompt,
                                         "expected": p.expected}) + "\n" for p in eval_prompts), encoding="utf-8")
    config = generate_config
    config.update(dict(model_path=str(tiny_hf_dirs["llama"]) if mode == "lasa" else "",
                       base_model_path=str(tiny_hf_dirs["llama"]), ssi_dir=str(tmp_path / "ssi"), dtype="float32",
                       mode=mode, eval_sets=f"jsonl:{jsonl}", progress=False))
    config.decoding.max_new_tokens = 8
    workdir = str(tmp_path / "run")
    output = run_generate_stage(config, workdir, start_run(config, workdir)).outputs["generations"]
    records = read_generations(output)
    np.testing.assert_allclose([r["ssi_score"] for r in records], probs, atol=1e-5)
    assert [r["prefix_used"] for r in records] == list(logits > threshold_logit)
    assert sum(r["prefix_used"] for r in records) == 2
    meta = json.loads(pathlib.Path(output + ".meta.json").read_text(encoding="utf-8"))
    assert meta["ssi_residual_index"] == 2 and meta["ssi_threshold"] == pytest.approx(threshold)
    assert meta["ssi_threshold_logit"] == pytest.approx(threshold_logit)
    assert meta["summary"]["prefix_used"] == 2
    assert meta["mode"] == mode and meta["model_path"] == str(tiny_hf_dirs["llama"]) == meta["base_model_path"]
    assert {r["mode"] for r in records} == {mode}
    expected = generate_responses(model, tokenizer, eval_prompts, mode=mode, ssi_scores=probs,
                                  prefix_flags=logits > threshold_logit, decoding=Decoding(max_new_tokens=8))
    assert [r["response"] for r in records] == [r["response"] for r in expected]
    if mode == "prefix_only":  # the generating model must be the base model the SSI reads
        config.model_path = str(tiny_hf_dirs["qwen3"])
        with pytest.raises(ValueError, match="prefix_only generates with the base model"):
            run_generate_stage(config, workdir)
