"""Continuous batching (`generate_batched`'s default scheduler): greedy parity with Hugging Face `generate` under
slot refills, equality with the static path, compiled programs, attention windows, batched prefill, sharded layouts."""
import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lasa_jax.decoding.generate import generate_batched, trim_after_eos
from lasa_jax.models.hf import from_pretrained
from lasa_jax.sharding import make_mesh

FAMILIES = ("llama", "qwen2", "qwen3")
NEW = 12
CONTINUOUS_LENGTHS = (9, 4, 70, 13, 6, 2, 11)  # 70 > one prefill chunk; 7 prompts through 2 or 3 slots


def hf_generate_each(directory, prompts, new, eos, pad):
    """HF greedy `generate` on each prompt alone (no padding), new tokens trimmed after the first EOS."""
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor(np.asarray(p, np.int64)[None])
            ref = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                              do_sample=False, eos_token_id=eos, pad_token_id=pad).numpy()[0, ids.shape[1]:]
            out.append(trim_after_eos(ref, eos)[0])
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_continuous_greedy_matches_hf_generate_with_slot_refills(tiny_hf_dirs, family):
    """Rows stop at different steps (EOS ids taken from the greedy outputs), so slots are refilled mid-run."""
    directory = tiny_hf_dirs[family]
    model = from_pretrained(directory)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, model.config.vocab_size, n) for n in CONTINUOUS_LENGTHS]
    static = generate_batched(model, prompts, batch_size=4, max_new_tokens=NEW, eos_token_id=[], scheduler="static")
    eos = sorted({int(static[0][0][3]), int(static[2][0][7])})  # rows 0 and 2 (at least) stop early
    pad = model.config.pad_token_id
    expected = hf_generate_each(directory, prompts, NEW, eos, pad)
    assert len({len(e) for e in expected}) > 1
    for batch_size in (2, 3):
        ours = generate_batched(model, prompts, batch_size=batch_size, max_new_tokens=NEW, eos_token_id=eos,
                                pad_token_id=pad)
        for r, (tokens, finished) in enumerate(ours):
            np.testing.assert_array_equal(tokens, expected[r], err_msg=f"{family} prompt {r} batch {batch_size}")
            assert finished == bool(np.isin(tokens[-1], eos))


def test_continuous_equals_static_and_compiles_once(llama):
    from lasa_jax.decoding.continuous import _decode_block, _groups, _prefill_rows

    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 517, n) for n in (3, 11, 7, 16, 5, 90, 2, 12, 4, 33)]
    static = generate_batched(llama, prompts, batch_size=4, max_new_tokens=NEW, eos_token_id=[], scheduler="static")
    before = (_prefill_rows._cache_size(), _decode_block._cache_size())
    ours = generate_batched(llama, prompts, batch_size=4, max_new_tokens=NEW, eos_token_id=[])
    # prompt lengths 2..90, positions < 128: one decode program (one window) for the whole run and one prefill
    # program per row count (4 and 1); fewer when an earlier test compiled the same shapes
    assert _prefill_rows._cache_size() - before[0] <= 2 and _decode_block._cache_size() - before[1] <= 1
    for (a, fa), (b, fb) in zip(static, ours):
        np.testing.assert_array_equal(b, a)
        assert fa == fb is False
    one = generate_batched(llama, prompts, batch_size=4, max_new_tokens=1, eos_token_id=[])
    assert [t.tolist() for t, _ in one] == [t[:1].tolist() for t, _ in static]
    assert _groups(16, 16) == [16] and _groups(7, 16) == [4, 1, 1, 1] and _groups(5, 3) == [3, 1, 1]


def test_continuous_windows_and_batched_prefill_match_hf(tiny_hf_dirs, llama):
    """Prompts of different lengths (up to three prefill chunks) prefilled together into the free slots, decoded
    with attention windows growing past 128 cache slots; a second call with the same prompt_length compiles
    nothing new."""
    from lasa_jax.decoding.continuous import WINDOW_ROUND, _decode_block, _prefill_rows, prompt_slots

    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 517, n) for n in (100, 5, 140, 30, 64, 121)]
    new = 40  # positions up to 179: windows 128 and 256
    expected = hf_generate_each(tiny_hf_dirs["llama"], prompts, new, [], llama.config.pad_token_id)
    P = prompt_slots(prompts)
    assert P == 256 and max(len(p) for p in prompts) + new > WINDOW_ROUND
    ours = generate_batched(llama, prompts, batch_size=4, max_new_tokens=new, eos_token_id=[], prompt_length=P)
    for r, (tokens, finished) in enumerate(ours):
        np.testing.assert_array_equal(tokens, expected[r], err_msg=f"prompt {r}")
        assert not finished
    # longest prompt 100: the window starts at 128 slots and grows to 256 mid-run
    subset = [0, 1, 3, 4]
    before = (_prefill_rows._cache_size(), _decode_block._cache_size())
    again = generate_batched(llama, [prompts[i] for i in subset], batch_size=4, max_new_tokens=new, eos_token_id=[],
                             prompt_length=P)
    assert (_prefill_rows._cache_size(), _decode_block._cache_size()) == before
    for i, (tokens, _) in zip(subset, again):
        np.testing.assert_array_equal(tokens, expected[i], err_msg=f"prompt {i}")
    with pytest.raises(ValueError, match="more than prompt_length"):
        generate_batched(llama, prompts, batch_size=4, max_new_tokens=new, eos_token_id=[], prompt_length=128)


def test_continuous_sharded_layouts_equal_single_device(tiny_hf_dirs, llama):
    """Decode weights replicated (they fit) or tensor-parallel (forced), on 8 devices, equal one device."""
    from lasa_jax.decoding.continuous import decode_params, generate_continuous
    from lasa_jax.decoding.stop_tokens import resolve_special_ids

    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    sharded = from_pretrained(tiny_hf_dirs["llama"], mesh=mesh)
    rng = np.random.default_rng(6)
    prompts = [rng.integers(0, 517, n) for n in (5, 12, 3, 20, 7)]
    expected = generate_batched(llama, prompts, batch_size=4, max_new_tokens=NEW, eos_token_id=[])
    eos, pad = resolve_special_ids(llama.config, [], None)
    replicated = decode_params(sharded)
    assert replicated["layers"][0]["q_kernel"].sharding.spec == jax.sharding.PartitionSpec()
    tensor_parallel = decode_params(sharded, replicate_max_bytes=0)
    q = tensor_parallel["layers"][0]["q_kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "tensor")  # (D, H, hd): heads split, D whole
    for params in (replicated, tensor_parallel):
        got = generate_continuous(sharded, prompts, batch_size=4, max_new_tokens=NEW, eos=eos, pad_id=pad,
                                  params=params)
        for (a, _), (b, _) in zip(expected, got):
            np.testing.assert_array_equal(b, a)
