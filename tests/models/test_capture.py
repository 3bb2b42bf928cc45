"""Pooled capture (lasa_jax/models/capture.py): padding-independence, HF parity, truncated trunk, bucketing, mesh,
the activation file, and the activation cache (lasa_jax/models/activation_cache.py) Locate and the SSI share."""
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lasa_jax.models import activation_cache
from lasa_jax.models.capture import (
    bucketed_batches,
    capture,
    capture_step,
    load_activations,
    save_activations,
    tokenize_prompts,
)
from lasa_jax.models.hf import from_pretrained
from lasa_jax.sharding import make_mesh

PROMPTS = ["How do I bake bread at home?", "如何在家烤面包？", "Ninawezaje kuoka mkate nyumbani?", "hi",
           "Làm thế nào để nướng bánh mì ở nhà? Thủ đô của Pháp là gì?", "집에서 빵을 굽는 방법은?",
           "Come faccio a cuocere il pane a casa?", "كيف أخبز الخبز في المنزل؟ ما هي عاصمة فرنسا؟ " * 3]


@pytest.fixture(scope="module")
def llama(tiny_hf_dirs):
    directory = tiny_hf_dirs["llama"]
    return from_pretrained(directory), AutoTokenizer.from_pretrained(directory), directory


def test_last_token_pooling_is_padding_independent_and_matches_hf(llama):
    model, tokenizer, directory = llama
    ids = tokenize_prompts(tokenizer, PROMPTS)
    assert all(t[0] == tokenizer.bos_token_id for t in ids)  # raw text keeps the tokenizer's BOS, as the paper
    right = capture(model, ids, batch_size=4, padding_side="right", progress=False)
    left = capture(model, ids, batch_size=4, padding_side="left", progress=False)
    assert right.shape == (model.config.num_layers + 1, len(PROMPTS), model.config.hidden_size)
    np.testing.assert_allclose(left, right, atol=2e-5)
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    for i, t in enumerate(ids):
        alone = capture(model, [t], batch_size=1, progress=False)[:, 0]
        np.testing.assert_allclose(right[:, i], alone, atol=2e-5)
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor(t[None].astype(np.int64)), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(right[:, i], np.stack([h[0, -1].numpy() for h in ref]), atol=1e-4)


def test_mean_pooling(llama):
    model, tokenizer, _ = llama
    ids = tokenize_prompts(tokenizer, PROMPTS[:3])
    pooled = capture(model, ids, pooling="mean", batch_size=2, padding_side="left", progress=False)
    for i, t in enumerate(ids):
        full = model(t[None], output_hidden_states=True).hidden_states
        np.testing.assert_allclose(pooled[:, i], np.asarray(full)[:, 0].mean(axis=1), atol=2e-5)


def test_single_residual_index_runs_truncated_trunk(llama):
    model, tokenizer, _ = llama
    ids = tokenize_prompts(tokenizer, PROMPTS)
    everything = capture(model, ids, batch_size=4, progress=False)
    for k in (0, 1, model.config.num_layers):
        np.testing.assert_allclose(capture(model, ids, residual_index=k, batch_size=4, progress=False),
                                   everything[k], atol=2e-5)
    with pytest.raises(ValueError, match="residual_index"):
        capture(model, ids, residual_index=model.config.num_layers + 1)


def test_bucketing_compiles_one_program_per_bucket(llama):
    model, _, _ = llama
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 70, 50)
    token_ids = [rng.integers(5, 400, n).astype(np.int32) for n in lengths]
    batches = list(bucketed_batches(token_ids, 8, pad_id=0))
    shapes = {b.input_ids.shape for b in batches}
    assert shapes == {(8, 16), (8, 32), (8, 64), (8, 128)} and len(batches) > len(shapes)
    covered = np.concatenate([b.rows[b.rows >= 0] for b in batches])
    assert sorted(covered) == list(range(50))
    capture_step.clear_cache()  # earlier tests (e.g. tests/locate) may have compiled these shapes for this model
    before = capture_step._cache_size()
    capture(model, token_ids, batch_size=8, progress=False)
    assert capture_step._cache_size() - before == len(shapes)


def test_capture_on_mesh_equals_single_device(tiny_hf_dirs):
    directory = tiny_hf_dirs["qwen2"]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenize_prompts(tokenizer, PROMPTS, use_chat_template=True)
    assert all(len(t) > 20 for t in ids)  # the chat template (with its system block) was applied
    single = capture(from_pretrained(directory), ids, batch_size=4, progress=False)
    sharded_model = from_pretrained(directory, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    sharded = capture(sharded_model, ids, batch_size=4, progress=False)
    np.testing.assert_allclose(sharded, single, atol=3e-5)
    with pytest.raises(ValueError, match="multiple of the mesh"):
        capture(sharded_model, ids, batch_size=6)


def test_activation_file_round_trip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    path = tmp_path / "acts.npz"
    save_activations(path, feats, language=["en", "zh", "sw", "jv"], group_id=["a:1", "a:1", "b:2", "b:2"],
                     label=[0, 0, 1, 1])
    loaded = load_activations(path)
    np.testing.assert_array_equal(loaded["features"], feats)
    assert list(loaded["language"]) == ["en", "zh", "sw", "jv"] and list(loaded["label"]) == [0, 0, 1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["acts.npz"]


def test_activation_cache_keys_columns_and_old_entries(llama, tmp_path):
    """One cache for Locate and the SSI: a hit needs key, shape and columns; writing never leaves a stale key; an
    entry without its JSON (the SSI's format-1 files) or with a format-1 key is a miss, never misread."""
    model, tokenizer, _ = llama
    ids = tokenize_prompts(tokenizer, PROMPTS[:3], max_length=32)
    settings = dict(pooling="last", chat_template=False, max_length=32, template_kwargs=None)
    description = activation_cache.key_description(model, ids, residual_index=None, **settings)
    key = activation_cache.entry_key(description)
    assert description["format"] == activation_cache.CACHE_FORMAT == 2 and description["residual_index"] is None
    other_keys = {activation_cache.entry_key(activation_cache.key_description(model, ids, residual_index=k,
                                                                              **settings)) for k in (0, 1)}
    assert len(other_keys | {key}) == 3  # the residual index is part of the key
    features = np.random.default_rng(0).normal(size=(4, 3, 64)).astype(np.float32)
    columns = {"language": np.array(["en", "zh", "sw"])}
    stem = tmp_path / "activations"
    activation_cache.write_entry(stem, key, description, features, columns, metadata={"corpus": {"n": 3}})
    npz_path, meta_path = activation_cache.entry_paths(stem)
    assert json.loads(meta_path.read_text())["corpus"] == {"n": 3} and npz_path.is_file()
    np.testing.assert_array_equal(activation_cache.read_entry(stem, key, features.shape, columns), features)
    assert activation_cache.read_entry(stem, "0" * 64, features.shape, columns) is None  # other inputs
    assert activation_cache.read_entry(stem, key, (4, 3, 32), columns) is None  # other shape
    assert activation_cache.read_entry(stem, key, features.shape, {"language": np.array(["en", "zh", "jv"])}) is None
    old = {**description, "format": 1}
    del old["residual_index"]
    meta_path.write_text(json.dumps({"key": activation_cache.entry_key(old), "description": old}))
    assert activation_cache.read_entry(stem, key, features.shape, columns) is None  # a format-1 Locate entry
    meta_path.unlink()
    assert activation_cache.read_entry(stem, key, features.shape, columns) is None  # .npz alone: the SSI's old files
