"""KV-cache generation: greedy parity with Hugging Face `generate`, sampling rules, EOS padding, sharding, buckets."""
import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from lasa_jax.decoding.generate import _generate_core, generate, generate_batched, trim_after_eos
from lasa_jax.decoding.sampling import select_tokens
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


@pytest.fixture(scope="module")
def llama(tiny_hf_dirs):
    return from_pretrained(tiny_hf_dirs["llama"])


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


@pytest.mark.parametrize("top_k,top_p", [(0, 0.6), (5, 1.0), (8, 0.7)])
def test_top_k_top_p_support_and_frequencies_match_hf_warpers(top_k, top_p):
    """The tokens our sampler can draw are exactly those HF's warpers keep; draw frequencies match the
    renormalised probabilities."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 24)).astype(np.float32) * 2
    temperature = 0.7
    scores = torch.tensor(logits) / temperature
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    reference = torch.softmax(scores, -1).numpy()[0]
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draw = jax.vmap(lambda k: select_tokens(jax.numpy.asarray(logits), k, jax.numpy.float32(temperature),
                                            jax.numpy.float32(top_p), jax.numpy.int32(top_k), greedy=False)[0])
    counts = np.bincount(np.asarray(draw(keys)), minlength=24) / len(keys)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(reference > 0))
    np.testing.assert_allclose(counts, reference, atol=0.03)


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


# ----------------------------------------------------------------------------------------------- continuous batching
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
    from lasa_jax.decoding.generate import resolve_special_ids

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
