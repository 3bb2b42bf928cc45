"""KV-cache generation of one static batch (`generate`) and static `generate_batched`: greedy parity with Hugging
Face `generate`, padding, EOS padding, seeded sampling, sharding, one program per bucket, argument checks."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lasa_jax.decoding.generate import _generate_core, generate, generate_batched, trim_after_eos
from lasa_jax.models.hf import from_pretrained
from lasa_jax.sharding import make_mesh

FAMILIES = ("llama", "qwen2", "qwen3")
LENGTHS = (9, 4, 13, 6)  # different prompt lengths -> a left-padded batch
NEW = 12


def left_padded(lengths, vocab, pad_id, seed=0):
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.full((len(lengths), T), pad_id, np.int64)
    mask = np.zeros((len(lengths), T), np.int64)
    for r, n in enumerate(lengths):
        ids[r, T - n:] = rng.integers(0, vocab, n)
        mask[r, T - n:] = 1
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_hf_generate(tiny_hf_dirs, family):
    directory = tiny_hf_dirs[family]
    model = from_pretrained(directory)
    eos, pad = list(model.config.eos_token_ids), model.config.pad_token_id
    ids, mask = left_padded(LENGTHS, model.config.vocab_size, pad)
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
                          do_sample=False, eos_token_id=eos, pad_token_id=pad).numpy()[:, ids.shape[1]:]
    ours = generate(model, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad)
    assert ours.shape == (len(LENGTHS), NEW) and ours.dtype == np.int32
    for r in range(len(LENGTHS)):
        expected, _ = trim_after_eos(ref[r], eos)
        got, _ = trim_after_eos(ours[r], eos)
        np.testing.assert_array_equal(got, expected, err_msg=f"{family} row {r}")


def test_right_padding_is_repacked(llama):
    ids, mask = left_padded(LENGTHS, 517, 5)
    right_ids, right_mask = np.full_like(ids, 5), np.zeros_like(mask)
    for r, n in enumerate(LENGTHS):
        right_ids[r, :n] = ids[r, ids.shape[1] - n:]
        right_mask[r, :n] = 1
    left = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[])
    np.testing.assert_array_equal(generate(llama, right_ids, right_mask, max_new_tokens=NEW, eos_token_id=[]), left)


def test_eos_stops_row_and_pads(tiny_hf_dirs, llama):
    ids, mask = left_padded(LENGTHS, 517, 5)
    greedy = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[])
    eos = int(greedy[0, 1])  # force row 0 to stop at its second token
    assert eos not in greedy[0, :1]
    pad = 7
    out = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[eos, 516], pad_token_id=pad)
    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dirs["llama"]).eval()
    with torch.no_grad():  # HF pads finished rows the same way (and may stop once every row has finished)
        ref = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
                          do_sample=False, eos_token_id=[eos, 516], pad_token_id=pad).numpy()[:, ids.shape[1]:]
    np.testing.assert_array_equal(out[:, :ref.shape[1]], ref)
    assert (out[:, ref.shape[1]:] == pad).all()
    np.testing.assert_array_equal(out[0, :2], greedy[0, :2])  # EOS kept
    assert (out[0, 2:] == pad).all()
    for r in range(len(LENGTHS)):
        hits = np.flatnonzero(np.isin(greedy[r], [eos, 516]))
        stop = hits[0] + 1 if hits.size else NEW
        np.testing.assert_array_equal(out[r, :stop], greedy[r, :stop])
        assert (out[r, stop:] == pad).all()
        tokens, finished = trim_after_eos(out[r], [eos, 516])
        assert finished == bool(hits.size) and tokens.size == stop


def test_sampling_reproducible_and_seed_dependent(llama):
    ids, mask = left_padded(LENGTHS, 517, 5)
    kwargs = dict(max_new_tokens=NEW, temperature=1.0, top_p=0.95, top_k=50, eos_token_id=[])
    a = generate(llama, ids, mask, seed=1, **kwargs)
    np.testing.assert_array_equal(generate(llama, ids, mask, seed=1, **kwargs), a)
    b = generate(llama, ids, mask, seed=2, **kwargs)
    assert (a != b).any()
    greedy = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[])
    assert (a != greedy).any()


def test_top_k_one_equals_greedy(llama):
    ids, mask = left_padded(LENGTHS, 517, 5, seed=3)
    greedy = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[])
    sampled = generate(llama, ids, mask, max_new_tokens=NEW, temperature=0.8, top_k=1, seed=5, eos_token_id=[])
    np.testing.assert_array_equal(sampled, greedy)


def test_sharded_generation_matches_single_device(tiny_hf_dirs, llama):
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    sharded = from_pretrained(tiny_hf_dirs["llama"], mesh=mesh)
    ids, mask = left_padded(LENGTHS[:3], 517, 5)  # batch 3 -> padded to 4 rows
    expected = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[])
    np.testing.assert_array_equal(generate(sharded, ids, mask, max_new_tokens=NEW, eos_token_id=[]), expected)


def test_one_compilation_per_bucket_and_batched_order(llama):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 517, n) for n in (3, 11, 7, 16, 5, 9, 2, 12, 4)]  # all in the 16-token bucket
    before = _generate_core._cache_size()
    outputs = generate_batched(llama, prompts, batch_size=4, max_new_tokens=NEW, eos_token_id=[])
    assert _generate_core._cache_size() - before <= 1  # 3 batches of (4, 16): one program
    assert len(outputs) == len(prompts)
    ids, mask = left_padded([len(p) for p in prompts[:4]], 517, 5)
    for r, p in enumerate(prompts[:4]):
        ids[r, ids.shape[1] - len(p):] = p
    direct = generate(llama, ids, mask, max_new_tokens=NEW, eos_token_id=[])
    for r, (tokens, finished) in enumerate(outputs[:4]):
        np.testing.assert_array_equal(tokens, direct[r])
        assert not finished
    assert _generate_core._cache_size() - before <= 1


def test_invalid_arguments(llama):
    ids, mask = left_padded((3, 2), 517, 5)
    mask[1] = 0
    with pytest.raises(ValueError, match="row 1 of attention_mask has no real token"):
        generate(llama, ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):
        generate(llama, ids[:1], max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(llama, ids[:1], max_new_tokens=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        generate(llama, ids[:1], max_new_tokens=2, pad_token_id=10_000)
