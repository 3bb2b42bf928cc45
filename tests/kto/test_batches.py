"""lasa_jax.kto.batches: epoch order and KL pairing (derangements avoiding a row's group and prompt), batch arrays
and KL rows, and resumable iteration."""
import json

import numpy as np
import pytest

from lasa_jax.data.preference.formats import load_unpaired_jsonl
from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.kto.batches import (
    DataPosition,
    batches_per_epoch,
    build_kto_batch,
    derangement,
    epoch_permutation,
    iterate_kto_batches,
    kl_partners,
)
from lasa_jax.kto.examples import tokenize_rows
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.models.chat import CONDITIONAL_PREFIX, render_prompt
from tests.kto.kto_runs import SEQ_LEN


def test_derangement_has_no_fixed_points_and_is_uniform():
    for n in (2, 3, 5, 16, 64):
        for seed in range(200):
            d = derangement(n, np.random.default_rng(seed))
            assert sorted(d.tolist()) == list(range(n)) and not np.any(d == np.arange(n))
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(4000):
        key = tuple(derangement(4, rng))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 9  # D(4) = 9 derangements, each about 1/9 of the draws
    assert max(counts.values()) < 1.25 * 4000 / 9 and min(counts.values()) > 0.75 * 4000 / 9
    with pytest.raises(ValueError):
        derangement(1, rng)


def test_kl_partners_avoid_own_group_and_own_prompt():
    rng = np.random.default_rng(1)
    groups = [f"g{i // 2}" for i in range(16)]  # pairs share a prompt
    for _ in range(100):
        partner = kl_partners(groups, rng)
        assert all(groups[p] != groups[i] for i, p in enumerate(partner))
    # distinct group ids (e.g. one per record) but repeated prompts: the prompt keys are avoided as well
    distinct_groups, prompts = [f"record{i}" for i in range(8)], [f"p{i % 2}" for i in range(8)]
    for _ in range(100):
        partner = kl_partners(distinct_groups, rng, prompt_keys=prompts)
        assert all(prompts[p] != prompts[i] for i, p in enumerate(partner))
    partner = kl_partners(["same"] * 4, rng, max_tries=5)  # impossible: best effort, still a derangement
    assert not np.any(partner == np.arange(4))


def test_epoch_permutations_reproducible_and_distinct():
    a0, a1 = epoch_permutation(100, 0, seed=3), epoch_permutation(100, 1, seed=3)
    assert np.array_equal(a0, epoch_permutation(100, 0, seed=3)) and not np.array_equal(a0, a1)
    assert sorted(a1.tolist()) == list(range(100)) and not np.array_equal(a0, epoch_permutation(100, 0, seed=4))


def test_batch_arrays_and_kl_rows(examples, pair_rows, tokenizer):
    seq_len, pad = SEQ_LEN, tokenizer.pad_token_id
    batch = build_kto_batch(examples, [0, 1, 2, 3, 4, 7], batch_size=8, seq_len=seq_len, pad_id=pad,
                            rng=np.random.default_rng(0))
    for name, array in batch.device_arrays().items():
        assert array.shape[0] == 8 and (array.ndim == 1 or array.shape == (8, seq_len)), name
    assert batch.valid.tolist() == [True] * 6 + [False] * 2
    assert batch.row_index.tolist() == [0, 1, 2, 3, 4, 7, -1, -1]
    assert batch.is_desirable[:6].tolist() == [pair_rows[i].desirable for i in (0, 1, 2, 3, 4, 7)]
    assert batch.loss_mask[6:].sum() == 0 and batch.kl_loss_mask[6:].sum() == 0
    assert np.all(batch.attention_mask[6:, 0] == 1)  # padding rows are not fully masked
    for b in range(6):
        example = examples[batch.row_index[b]]
        length = len(example.rendered.input_ids)
        assert np.array_equal(batch.input_ids[b, :length], example.rendered.input_ids)
        assert np.all(batch.input_ids[b, length:] == pad) and batch.attention_mask[b].sum() == length
        assert np.array_equal(batch.loss_mask[b, :length], example.rendered.loss_mask)
        # KL row: this row's prompt (with its prefix choice) + the partner's completion, from another prompt
        partner = examples[batch.row_index[batch.kl_partner[b]]]
        assert partner.group_id != example.group_id
        prompt_ids = example.rendered.prompt.input_ids
        completion_ids = partner.rendered.completion_ids
        kl_length = len(prompt_ids) + len(completion_ids)
        assert np.array_equal(batch.kl_input_ids[b, :kl_length], np.concatenate([prompt_ids, completion_ids]))
        assert batch.kl_loss_mask[b].sum() == len(completion_ids)
        assert batch.kl_loss_mask[b, :len(prompt_ids)].sum() == 0
    assert batch.num_kl_truncated == 0 and batch.num_kl_same_group == 0
    # rows labelled unsafe carry the prefix, right after the assistant header
    prefix_ids = tokenizer(CONDITIONAL_PREFIX, add_special_tokens=False)["input_ids"]
    for example in examples:
        row = pair_rows[example.row_index]
        rendered = example.rendered
        assert (rendered.prefix_end - rendered.prefix_start > 0) == bool(row.is_unsafe)
        if row.is_unsafe:
            assert rendered.input_ids[rendered.prefix_start:rendered.prefix_end].tolist() == prefix_ids
            assert np.array_equal(rendered.input_ids[:rendered.prefix_end],
                                  render_prompt(tokenizer, row.prompt, prefix=CONDITIONAL_PREFIX).input_ids)


def test_kl_row_that_cannot_fit_cuts_the_partner_completion(tokenizer):
    # row 0 (with prefix): long fixed prompt part; row 1: short prompt, long answer (~200 tokens)
    rows = [PreferenceRow("Why? " * 30, "No.", True, "x", group_id="a", is_unsafe=1),
            PreferenceRow("Hi", "Fine. " * 40, False, "x", group_id="b", is_unsafe=0)]
    examples, counts = tokenize_rows(rows, tokenizer, max_length=300)
    assert counts["kept"] == 2
    batch = build_kto_batch(examples, [0, 1], batch_size=2, seq_len=300, pad_id=tokenizer.pad_token_id,
                            rng=np.random.default_rng(0))
    assert batch.num_kl_truncated == 1 and batch.kl_attention_mask[0].sum() == 300
    # the prompt part was cut to its minimum first (one user-content token left), then the completion tail
    prompt = examples[0].rendered.prompt
    kept_prompt = len(prompt.input_ids) - prompt.max_droppable
    assert batch.kl_loss_mask[0].sum() == 300 - kept_prompt
    assert np.array_equal(batch.kl_input_ids[0, kept_prompt:], examples[1].rendered.completion_ids[:300 - kept_prompt])
    # the policy rows keep their end-of-turn
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for b in range(2):
        assert batch.input_ids[b, batch.attention_mask[b].sum() - 1] == eot


def test_kl_rows_never_pair_a_prompt_with_its_own_other_answer(tmp_path, tokenizer):
    """2 prompts x 2 answers in one batch of 4: each KL row must take an answer to the other prompt, both when the
    file gives no group_id and when it gives a distinct one per line."""
    for with_group_ids in (False, True):
        lines = [{"prompt": prompt, "completion": f"answer {j} to {prompt}", "label": j == 0, "source": "s"}
                 for prompt in ("How do I bake bread?", "What is the capital of France?") for j in range(2)]
        if with_group_ids:
            for i, line in enumerate(lines):
                line["group_id"] = f"line{i}"
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
        rows = assign_latent_labels(load_unpaired_jsonl(path), seed=0)
        examples, _ = tokenize_rows(rows, tokenizer, max_length=SEQ_LEN)
        stream = iterate_kto_batches(examples, batch_size=4, seq_len=SEQ_LEN, pad_id=tokenizer.pad_token_id, seed=3,
                                     num_epochs=200)
        for batch, _ in stream:
            assert batch.num_kl_same_group == 0
            for i, p in enumerate(batch.kl_partner):
                assert rows[batch.row_index[i]].prompt != rows[batch.row_index[p]].prompt


def _fingerprint(batch):
    return (batch.row_index.tolist(), batch.kl_partner.tolist(), batch.input_ids.tobytes(),
            batch.kl_input_ids.tobytes())


def test_iteration_epochs_and_resume(examples, tokenizer):
    kwargs = dict(batch_size=5, seq_len=SEQ_LEN, pad_id=tokenizer.pad_token_id, seed=11, num_epochs=3)
    per_epoch = batches_per_epoch(len(examples), 5)
    stream = list(iterate_kto_batches(examples, **kwargs))
    assert len(stream) == 3 * per_epoch == 3 * (len(examples) // 5)
    epochs = [[row for batch, _ in stream[e * per_epoch:(e + 1) * per_epoch] for row in batch.row_index]
              for e in range(3)]
    assert all(len(set(rows)) == len(rows) == per_epoch * 5 for rows in epochs)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] == epoch_permutation(len(examples), 0, 11)[:per_epoch * 5].tolist()
    for batch, _ in stream:
        groups = [examples[i].group_id for i in batch.row_index]
        assert all(groups[p] != groups[i] for i, p in enumerate(batch.kl_partner))
    # resume from every stored position (through a checkpoint round trip) reproduces the rest
    for k in (1, per_epoch - 1, per_epoch, 2 * per_epoch + 1):
        position = DataPosition.from_dict(json.loads(json.dumps(stream[k - 1][1].to_dict())))
        resumed = list(iterate_kto_batches(examples, start=position, **kwargs))
        assert [_fingerprint(b) for b, _ in resumed] == [_fingerprint(b) for b, _ in stream[k:]]
        assert [p for _, p in resumed] == [p for _, p in stream[k:]]
    # drop_last=False pads the final partial batch
    last = list(iterate_kto_batches(examples, **{**kwargs, "num_epochs": 1}, drop_last=False))[-1][0]
    assert last.valid.sum() == len(examples) % 5 and last.valid.size == 5
    with pytest.raises(ValueError, match="data position"):
        DataPosition.from_dict({"epoch": 1})
    # a checkpoint position that does not fit these examples (other data) is an error, not a silent skip
    with pytest.raises(ValueError, match="other data"):
        next(iterate_kto_batches(examples, start=DataPosition(0, len(examples) + 1), **kwargs))
