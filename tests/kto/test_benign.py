"""lasa_jax.kto.benign: the benign share, and the base model's answers generated once and cached."""
import pathlib

import pytest

from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.infra.errors import InputError
from lasa_jax.kto.benign import benign_prompts, cache_key, generate_benign_rows, mix_benign_rows, num_benign_rows
from lasa_jax.models.hf import from_pretrained, model_fingerprint
from lasa_jax.models.loading import load_tokenizer


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
