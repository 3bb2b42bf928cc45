"""KTO data preparation: TRL's class-weight check and `balance_weights`, cached benign rows, and the trainer's
data-prep (family-selected completions, held-out guard, benign mix, counts) on the real shared data."""
import importlib.util
import logging
import pathlib

import pytest

from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.infra.errors import InputError
from lasa_jax.kto.benign import benign_prompts, cache_key, generate_benign_rows, mix_benign_rows, num_benign_rows
from lasa_jax.kto.data import completion_models, prepare_examples
from lasa_jax.kto.weights import AUTO_WEIGHT_RATIO, balance_class_weights, trl_weight_check
from lasa_jax.models.hf import from_pretrained, model_fingerprint
from lasa_jax.models.loading import load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
WEIGHT_CASES = [(7, 3, 1.0, 1.0), (3, 7, 1.0, 1.0), (7, 3, 1.0, 2.0), (6, 4, 1.0, 1.2), (5, 5, 1.0, 3.0)]


@pytest.mark.slow
def test_weight_check_matches_trl_kto_trainer(tiny_hf_dirs, tmp_path, caplog):
    """TRL 1.16's KTOTrainer, built on a tiny model and datasets of n_d desirable / n_u undesirable rows, warns
    exactly when `trl_weight_check` does, with the same recommended ranges."""
    import datasets
    import transformers
    from trl import KTOConfig, KTOTrainer

    model_dir = str(tiny_hf_dirs["llama"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    for n_d, n_u, w_d, w_u in WEIGHT_CASES:
        rows = [{"prompt": "hi", "completion": "ok", "label": True}] * n_d
        rows += [{"prompt": "hi", "completion": "no", "label": False}] * n_u
        args = KTOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, report_to=[],
                         desirable_weight=w_d, undesirable_weight=w_u, use_cpu=True)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            KTOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                       processing_class=tokenizer)
        trl_warnings = [r.getMessage() for r in caplog.records if "desirable_weight in" in r.getMessage()]
        ours = trl_weight_check(n_d, n_u, w_d, w_u)
        assert len(trl_warnings) == (ours is not None), (n_d, n_u, w_d, w_u)
        if ours is not None:
            assert ours in trl_warnings[0]


def test_balance_weights_brings_the_ratio_into_trls_range(caplog):
    with caplog.at_level(logging.WARNING, logger="lasa_jax.data.preference"):
        kept = balance_class_weights(2421, 271, 1.0, 1.0, mode="")
    assert kept["trl_warning"] and "undesirable_weight in [6.72, 8.93]" in kept["trl_warning"]
    assert kept["undesirable_weight"] == 1.0 and "balance_weights=undesirable" in caplog.text
    for mode in ("undesirable", "desirable"):
        w = balance_class_weights(2421, 271, 1.0, 1.0, mode=mode)
        assert w["trl_warning"] is None and w["ratio"] == pytest.approx(AUTO_WEIGHT_RATIO)
        assert 2421 * w["desirable_weight"] / (271 * w["undesirable_weight"]) == pytest.approx(7 / 6)
        assert (w["desirable_weight"] == 1.0) == (mode == "undesirable")
    inside = balance_class_weights(600, 500, 1.0, 1.0, mode="undesirable")  # ratio 1.2: left as given
    assert (inside["desirable_weight"], inside["undesirable_weight"], inside["trl_warning"]) == (1.0, 1.0, None)
    with pytest.raises(InputError, match="balance_weights"):
        balance_class_weights(1, 1, 1.0, 1.0, mode="auto")


def test_benign_mix_share():
    assert num_benign_rows(800, 0.2) == 200 and num_benign_rows(800, 0.0) == 0
    with pytest.raises(InputError, match="benign.share"):
        num_benign_rows(10, 1.0)
    safety = [PreferenceRow(f"q{i}", "No.", True, "safety") for i in range(8)]
    benign = [PreferenceRow(f"b{i}", "Yes.", True, "benign") for i in range(5)]
    mixed, counts = mix_benign_rows(safety, benign, 0.25)
    assert mixed == safety + benign[:3] and counts == {"wanted": 3, "used": 3, "share_used": 3 / 11}
    _, short = mix_benign_rows(safety, benign[:1], 0.5)
    assert short["wanted"] == 8 and short["used"] == 1


def test_benign_rows_are_generated_once_and_cached(tiny_hf_dirs, shared_data, tmp_path):
    """Greedy answers of the model to PolyRefuse harmless-train prompts (round-robin over languages), written to the
    cache and read back on the second call (same key: model fingerprint, prompts, settings)."""
    model_dir = tiny_hf_dirs["llama"]
    prompts = benign_prompts(shared_data, ["en", "ko"], 4)
    assert [p.language for p in prompts] == ["en", "ko", "en", "ko"] and {p.expected for p in prompts} == {"benign"}
    assert prompts[0].category == prompts[1].category == "polyrefuse/harmless_train:0"  # translations: one group
    model, tokenizer = from_pretrained(model_dir), load_tokenizer(str(model_dir))
    kwargs = dict(model_fingerprint=model_fingerprint(model_dir), cache_dir=tmp_path, max_new_tokens=6,
                  batch_size=4)
    rows, counts = generate_benign_rows(model, tokenizer, prompts, **kwargs)
    assert not counts["cached"] and counts["generated"] == 4 and pathlib.Path(counts["cache_file"]).is_file()
    assert all(r.desirable and r.source == "benign" for r in rows) and len(rows) == 4 - counts["dropped_empty"]
    assert sum(not r.complete for r in rows) == counts["stopped_at_length"]
    again, counts_again = generate_benign_rows(model, tokenizer, prompts, **kwargs)
    assert counts_again["cached"] and counts_again["generated"] == 0 and again == rows
    settings = {"max_new_tokens": 6, "temperature": 0.0, "stop_ids": [1], "template_kwargs": {}}
    key = cache_key("f", prompts, settings)
    assert key != cache_key("f", prompts, {**settings, "max_new_tokens": 5}) != cache_key("g", prompts, settings)
    assert key != cache_key("f", prompts[:3], settings) and key == cache_key("f", list(prompts), dict(settings))


def _kto_config(model_dir, **overrides):
    spec = importlib.util.spec_from_file_location("kto_config", REPO / "configs" / "kto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model_path = str(model_dir)
    for name, value in overrides.items():
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def test_prepare_examples_on_the_shared_data(tiny_hf_dirs, shared_data, tmp_path):
    """Default family selection (llama -> the Llama completions only), the held-out guard, benign rows at their
    share, every row kept (truncated where needed) and balanced class weights."""
    model_dir = tiny_hf_dirs["llama"]
    config = _kto_config(model_dir, **{
        "data.format": "polyrefuse_completions", "data.path": str(shared_data / "polyrefuse_completions"),
        "data.root": str(shared_data), "data.polyrefuse.languages": "ko", "data.max_length": 160,
        "data.benign.share": 0.01, "data.benign.max_new_tokens": 4, "data.benign.cache_dir": str(tmp_path),
        "progress_bar": False})
    base = from_pretrained(model_dir)
    examples, summary = prepare_examples(config, load_tokenizer(str(model_dir)), lambda: base)
    load = summary["load"][str(shared_data / "polyrefuse_completions")]
    assert load["models"] == ["Meta-Llama-3.1-8B-Instruct"] and load["models_selected_by"].startswith("auto")
    assert load["desirable"] + load["undesirable"] == 568 - load["dropped_neither"] - load["dropped_duplicate"]
    assert summary["held_out"]["checked"] and summary["held_out"]["dropped"]["rows"]["rows"] == 0
    benign = summary["benign"]
    assert benign["wanted"] == round(0.01 * (load["desirable"] + load["undesirable"]) / 0.99) == benign["prompts"]
    assert benign["used"] == benign["rows"] == benign["prompts"] - benign["dropped_empty"] > 0
    tokenize = summary["tokenize"]
    assert tokenize["dropped_too_long"] == 0 and tokenize["kept"] == len(examples) == tokenize["rows"]
    assert tokenize["by_source"]["benign"]["desirable"]["rows"] == benign["used"]
    assert tokenize["by_class"]["undesirable"]["truncated"] > 0 and set(tokenize["by_language"]) == {"ko"}
    weights = summary["weights"]
    assert weights["trl_warning"] is None and 1.0 <= weights["ratio"] <= 4 / 3
    assert summary["desirable"] + summary["undesirable"] == len(examples)
    # an explicit model list overrides the family; "all" takes every model folder
    assert completion_models("Qwen2.5-7B-Instruct", "x", "llama")[0] == ["Qwen2.5-7B-Instruct"]
    assert completion_models("all", "x", "llama")[0] is None
    assert completion_models("auto", str(shared_data / "polyrefuse_completions"), "gemma2")[0] is None
