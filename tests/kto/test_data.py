"""lasa_jax.kto.data: SSI latent labels scored on the base model, and the whole data preparation
(family-selected completions, held-out guard, benign mix, counts) on the real shared data."""
import pathlib

import pytest

from lasa_jax.kto.data import completion_models, label_rows, prepare_examples
from lasa_jax.kto.settings import read_settings
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.loading import load_tokenizer
from tests.kto.kto_runs import base_kto_config, kto_settings

pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_ssi_labels_come_from_the_base_model_scorer(llama_dir, llama_ssi, tmp_path):
    ssi_dir, rows, expected = llama_ssi
    assert 0 < sum(expected.values()) < len(expected)
    base = from_pretrained(llama_dir)
    labels = kto_settings(llama_dir, **{"labels.mode": "ssi", "labels.ssi_dir": str(ssi_dir)}).labels
    labelled = label_rows(rows, labels, lambda: base)
    assert [r.is_unsafe for r in labelled] == [int(expected[r.prompt]) for r in rows]
    with pytest.raises(ValueError, match="fingerprint"):  # the SSI refuses any model but its base model
        label_rows(rows, labels, lambda: from_pretrained(_perturbed_copy(llama_dir, tmp_path)))


def _perturbed_copy(model_dir, tmp_path) -> pathlib.Path:
    """A copy of the base model with one weight changed (another fingerprint)."""
    model = from_pretrained(model_dir)
    params = model.params()
    params["final_norm"] = params["final_norm"] * 1.5
    model.set_params(params)
    save_pretrained(model, tmp_path / "perturbed")
    return tmp_path / "perturbed"


def test_prepare_examples_on_the_shared_data(tiny_hf_dirs, shared_data, tmp_path):
    """Default family selection (llama -> the Llama completions only), the held-out guard, benign rows at their
    share, every row kept (truncated where needed) and balanced class weights."""
    model_dir = tiny_hf_dirs["llama"]
    settings = read_settings(base_kto_config(model_dir, **{
        "data.format": "polyrefuse_completions", "data.path": str(shared_data / "polyrefuse_completions"),
        "data.root": str(shared_data), "data.polyrefuse.languages": "ko", "data.max_length": 160,
        "data.benign.share": 0.01, "data.benign.max_new_tokens": 4, "data.benign.cache_dir": str(tmp_path),
        "progress_bar": False}))
    base = from_pretrained(model_dir)
    examples, summary = prepare_examples(settings, load_tokenizer(str(model_dir)), lambda: base)
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
