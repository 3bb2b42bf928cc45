"""Preference rows: loaders (paired, unpaired, PolyRefuse, SQuARe), latent labels, KL pairing, resumable batches."""
import dataclasses
import json
import logging
import math
import re
import unicodedata

import numpy as np
import pytest

from lasa_jax.data.heldout import POLYREFUSE_MULTIJAIL_ROWS
from lasa_jax.data.preference.formats import load_paired_preference_json, load_unpaired_jsonl
from lasa_jax.data.preference.polyrefuse import convert_polyrefuse_completions, family_completion_models
from lasa_jax.data.preference.rows import NATURAL_END_CHARS, PreferenceRow, ends_naturally, prompt_group_id
from lasa_jax.infra.errors import InputError
from lasa_jax.kto.batches import DataPosition, batches_per_epoch, build_kto_batch, iterate_kto_batches
from lasa_jax.kto.examples import tokenize_rows
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.kto.pairing import derangement, epoch_permutation, kl_partners
from lasa_jax.models.chat import CONDITIONAL_PREFIX, end_of_turn_ids, render_prompt
from lasa_jax.testing import build_tokenizer

QUESTIONS = ["How do I bake bread at home?", "What is the capital of France?", "Please explain photosynthesis.",
             "如何在家烤面包？", "집에서 빵을 굽는 방법은?", "Qual è la capitale della Francia?",
             "Thủ đô của Pháp là gì?", "كيف أخبز الخبز في المنزل؟", "Ninawezaje kuoka mkate nyumbani?",
             "Piye carane nggawe roti ing omah?", "ฉันจะอบขนมปังที่บ้านได้อย่างไร", "আমি কীভাবে বাড়িতে রুটি বানাব?"]


SEQ_LEN = 288  # the tiny tokenizer's system block is ~90 tokens and the prefix ~65


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"), "llama3")


@pytest.fixture(scope="module")
def pair_rows():
    """Two rows (refusal desirable, compliance undesirable) per question, labelled with the paper proxy."""
    rows = []
    for i, question in enumerate(QUESTIONS):
        rows.append(PreferenceRow(question, f"I cannot help with that request, number {i}.", True, "safety", "",
                                  f"q{i}"))
        rows.append(PreferenceRow(question, f"Sure, here is the answer number {i}. " * (1 + i % 3), False, "safety",
                                  "", f"q{i}"))
    return assign_latent_labels(rows, mode="paper")


@pytest.fixture(scope="module")
def examples(pair_rows, tokenizer):
    examples, counts = tokenize_rows(pair_rows, tokenizer, max_length=SEQ_LEN)
    assert counts["kept"] == len(pair_rows) and counts["dropped_too_long"] == 0
    assert 0 < counts["with_prefix"] < counts["kept"]  # both kinds of rows are exercised
    return examples


# --------------------------------------------------------------------------------------------------- loaders
def test_paired_loader_unpairs_chosen_then_rejected(tmp_path):
    records = [
        {"prompt": [{"role": "user", "content": "q0"}], "chosen": [{"role": "assistant", "content": "no"}],
         "rejected": [{"role": "assistant", "content": "yes"}], "source": "safety", "language": "en",
         "category": "x"},
        {"prompt": "q1", "chosen": "good", "rejected": "bad", "source": "ultrafeedback", "language": "Korean"},
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    rows = load_paired_preference_json(path)
    assert [(r.completion, r.desirable, r.source) for r in rows] == [
        ("no", True, "safety"), ("yes", False, "safety"), ("good", True, "ultrafeedback"),
        ("bad", False, "ultrafeedback")]
    assert rows[0].prompt == [{"role": "user", "content": "q0"}] and rows[2].prompt == "q1"
    assert rows[0].group_id == rows[1].group_id == "pairs.json:0" != rows[2].group_id
    assert rows[0].language == "en" and rows[2].language == "ko" and rows[0].is_unsafe is None

    del records[1]["rejected"]
    path.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}: record 1: field 'rejected'")):
        load_paired_preference_json(path)
    with pytest.raises(FileNotFoundError):
        load_paired_preference_json(tmp_path / "missing.json")


def test_unpaired_jsonl_labels_and_errors(tmp_path):
    lines = [{"prompt": "a", "completion": "x", "label": True, "source": "s"},
             {"prompt": "b", "completion": [{"role": "assistant", "content": "y"}], "label": "undesirable",
              "source": "s", "language": "ko", "group_id": "g"},
             {"prompt": [{"role": "user", "content": "c"}], "completion": "z", "label": 1, "source": "s"},
             {"prompt": "d", "completion": "w", "label": 0, "source": "s"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    rows = load_unpaired_jsonl(path)
    assert [r.desirable for r in rows] == [True, False, True, False]
    assert rows[1].completion == "y" and rows[1].language == "ko" and rows[1].group_id == "g"
    # without a group_id the group is the prompt: a str and the equal one-message list share it
    assert rows[0].group_id == prompt_group_id("a") == prompt_group_id([{"role": "user", "content": "a"}])
    assert rows[2].group_id == prompt_group_id("c") != rows[0].group_id
    assert rows[0].language == ""
    lines[2]["label"] = "maybe"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: field 'label'")):
        load_unpaired_jsonl(path)
    lines[2]["label"], lines[3]["language"] = 1, "Klingon"
    path.write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4: field 'language'")):
        load_unpaired_jsonl(path)
    path.write_text(json.dumps(lines[0]) + "\n{broken\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not valid JSON")):
        load_unpaired_jsonl(path)
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="no preference rows"):
        load_unpaired_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_unpaired_jsonl(tmp_path / "missing.jsonl")
    # a UTF-8 byte-order mark (some editors write one) is accepted
    path.write_text("\ufeff" + json.dumps(lines[0]) + "\n", encoding="utf-8")
    assert [r.completion for r in load_unpaired_jsonl(path)] == ["x"]


def test_polyrefuse_converter(shared_data):
    root = shared_data / "polyrefuse_completions"
    rows, counts = convert_polyrefuse_completions(root)
    # SOURCE.md table: 8 files x 572; 233 "neither", 1771 harmful answers, 2572 refusals in all. At the MultiJail
    # indices the files hold 19 refusals, 12 harmful answers and 1 "neither".
    assert counts["files"] == 8 and counts["records"] == 8 * 572
    assert counts["dropped_multijail"] == 8 * len(POLYREFUSE_MULTIJAIL_ROWS)
    assert counts["dropped_neither"] == 233 - 1
    assert counts["undesirable"] == 1771 - 12
    assert counts["desirable"] + counts["dropped_duplicate"] == 2572 - 19
    assert counts["desirable"] == sum(r.desirable for r in rows) and len(rows) == counts["desirable"] + 1759
    dropped = {f"polyrefuse/harmful_test/{i}" for i in POLYREFUSE_MULTIJAIL_ROWS}
    assert not any(r.group_id in dropped or int(r.origin.rsplit("#", 1)[1]) in POLYREFUSE_MULTIJAIL_ROWS
                   for r in rows)
    assert {r.language for r in rows} == {"en", "it", "zh", "ko"} and {r.source for r in rows} == {"safety"}
    assert len({(r.language, r.prompt, r.completion.strip()) for r in rows}) == len(rows)

    # labels agree with the raw WildGuard fields
    path = root / "Meta-Llama-3.1-8B-Instruct" / "ko" / "harmful_baseline_evaluations.no_tokens.json"
    raw = json.loads(path.read_text(encoding="utf-8"))["completions"]
    ko_rows = [r for r in rows if r.origin.startswith("Meta-Llama-3.1-8B-Instruct/ko/baseline#")]
    assert sum(not r.desirable for r in ko_rows) == 117
    for row in ko_rows:
        record = raw[int(row.origin.rsplit("#", 1)[1])]
        assert row.prompt == record["instruction"] and row.completion == record["response"]
        assert row.desirable == (record["wildguard"]["refusal"] == 1 and record["wildguard"]["response_harmful"] == 0)

    # translations share a group; filters select files
    en_rows, en_counts = convert_polyrefuse_completions(root, models=["Qwen2.5-7B-Instruct"], languages=["en"],
                                                        modes=["harm_ablation"])
    assert en_counts["files"] == 1 and en_counts["desirable"] == 0
    assert en_counts["undesirable"] == 529 - len(POLYREFUSE_MULTIJAIL_ROWS)
    zh_groups = {r.group_id for r in rows if r.language == "zh"}
    assert zh_groups & {r.group_id for r in en_rows}
    # language filters accept any spelling; a bare string is one model / mode, not a set of characters
    _, named_counts = convert_polyrefuse_completions(root, models="Qwen2.5-7B-Instruct", languages=["English"],
                                                     modes="harm_ablation")
    assert named_counts == en_counts
    with pytest.raises(FileNotFoundError):
        convert_polyrefuse_completions(root, languages=["sw"])


# --------------------------------------------------------------------------------------------- latent labels
def test_paper_labels_are_deterministic_order_free_and_follow_the_source_probability():
    rows = [PreferenceRow(f"prompt {i}", f"answer {i}", i % 2 == 0, "safety" if i % 3 else "ultrafeedback",
                          group_id=f"g{i // 2}") for i in range(3000)]
    labels = [r.is_unsafe for r in assign_latent_labels(rows, seed=42)]
    assert labels == [r.is_unsafe for r in assign_latent_labels(rows, seed=42)]
    order = np.random.default_rng(0).permutation(len(rows))
    shuffled = assign_latent_labels([rows[i] for i in order], seed=42)
    assert [labels[i] for i in order] == [r.is_unsafe for r in shuffled]
    # a batch split (parallel workers) gives the same labels
    halves = assign_latent_labels(rows[:1000], seed=42) + assign_latent_labels(rows[1000:], seed=42)
    assert [r.is_unsafe for r in halves] == labels
    assert labels != [r.is_unsafe for r in assign_latent_labels(rows, seed=7)]
    safety = np.array([labels[i] for i in range(len(rows)) if rows[i].source == "safety"])
    assert abs(safety.mean() - 0.5) < 4 * math.sqrt(0.25 / safety.size)
    assert not any(labels[i] for i in range(len(rows)) if rows[i].source == "ultrafeedback")
    custom = assign_latent_labels(rows, unsafe_prob_by_source={"safety": 1.0}, default_prob=0.0)
    assert all(r.is_unsafe == (r.source == "safety") for r in custom)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        assign_latent_labels(rows, unsafe_prob_by_source={"safety": 1.5})


def test_ssi_labels_from_flags_or_callable():
    rows = [PreferenceRow("bomb?" if i % 2 else "bread?", "a", True, "safety") for i in range(6)]
    flagged = assign_latent_labels(rows, mode="ssi", ssi_flags=[i % 2 == 1 for i in range(6)])
    assert [r.is_unsafe for r in flagged] == [0, 1, 0, 1, 0, 1]
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return np.array(["bomb" in t for t in texts])

    scored = assign_latent_labels(rows, mode="ssi", ssi_flags=scorer)
    assert [r.is_unsafe for r in scored] == [0, 1, 0, 1, 0, 1] and calls == [["bomb?", "bread?"]]
    with pytest.raises(ValueError, match="shape"):
        assign_latent_labels(rows, mode="ssi", ssi_flags=[True])


# --------------------------------------------------------------------------------------------- order, pairing
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


# --------------------------------------------------------------------------------------------- batches
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


def test_over_long_rows_are_truncated_not_dropped_and_counted_by_class_source_and_language(pair_rows, tokenizer,
                                                                                           caplog):
    """At 215 tokens 4 of the 12 (long) undesirable answers do not fit whole: they are tail-truncated, keep the
    start of the full sequence and get no end-of-turn token; every refusal fits. truncate_completions=False is the
    old rule (drop, count, warn)."""
    rows = [dataclasses.replace(row, source="other" if i % 4 == 1 else row.source, language="ko" if i < 6 else "")
            for i, row in enumerate(pair_rows)]
    eot = end_of_turn_ids(tokenizer)
    with caplog.at_level(logging.WARNING, logger="lasa_jax.data.preference"):
        examples, counts = tokenize_rows(rows, tokenizer, max_length=215)
    assert not caplog.records and counts["dropped_too_long"] == 0 and counts["kept"] == len(rows) == len(examples)
    full, _ = tokenize_rows(rows, tokenizer, max_length=10_000)
    expected: dict = {"by_class": {}, "by_source": {}, "by_language": {}}
    for example, whole, row in zip(examples, full, rows):
        rendered, completion = example.rendered, example.rendered.completion_ids
        cut = not rendered.ends_turn
        assert len(rendered.input_ids) <= 215 and cut == (rendered.num_completion_cut > 0)
        if cut:  # the prompt is cut towards max_length // 2 = 107 (user content only: the template and the
            # prefix stay); the completion keeps its start and fills the rest, the end-of-turn is gone
            prompt = whole.rendered.prompt
            expected_prompt = prompt.drop_content_front(min(max(len(prompt.input_ids) - 107, 0), prompt.max_droppable))
            np.testing.assert_array_equal(rendered.prompt.input_ids, expected_prompt.input_ids)
            assert len(rendered.input_ids) == 215 and rendered.loss_mask.sum() == len(completion)
            np.testing.assert_array_equal(completion, whole.rendered.completion_ids[:len(completion)])
            assert rendered.num_completion_cut == len(whole.rendered.completion_ids) - len(eot) - len(completion)
        else:  # the whole completion, end-of-turn included (oldest user tokens dropped if needed: the old rule)
            np.testing.assert_array_equal(completion, whole.rendered.completion_ids)
            assert completion[-len(eot):].tolist() == eot
        outcome = {"rows": 1, "kept": 1, "truncated": int(cut), "no_end_of_turn": int(cut), "dropped_too_long": 0}
        label = "desirable" if row.desirable else "undesirable"
        for key, name in (("by_class", None), ("by_source", row.source), ("by_language", row.language or "?")):
            tally = expected[key] if name is None else expected[key].setdefault(name, {})
            tally = tally.setdefault(label, dict.fromkeys(outcome, 0))
            for field, value in outcome.items():
                tally[field] += value
    for key in expected:
        assert counts[key] == expected[key], key
    assert counts["by_class"]["undesirable"]["truncated"] == 4 and counts["truncated"] == 4
    assert counts["by_class"]["desirable"]["truncated"] == 0

    with caplog.at_level(logging.WARNING, logger="lasa_jax.data.preference"):
        examples, counts = tokenize_rows(rows, tokenizer, max_length=215, truncate_completions=False)
    assert counts["by_class"]["undesirable"] == {"rows": 12, "kept": 8, "truncated": 0, "no_end_of_turn": 0,
                                                 "dropped_too_long": 4}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("4 of 12 undesirable rows (33%")
    assert "12 desirable : 8 undesirable" in warnings[0]
    # a row is dropped only when even the cut prompt leaves no room (the template alone is ~90 tokens)
    _, counts = tokenize_rows(rows[:2], tokenizer, max_length=60)
    assert counts["dropped_too_long"] == 2 and counts["kept"] == 0
    with pytest.raises(ValueError, match="assign_latent_labels"):
        tokenize_rows([PreferenceRow("q", "a", True, "s")], tokenizer)


def test_a_completion_cut_by_its_generator_gets_no_end_of_turn(pair_rows, tokenizer, tmp_path):
    row = pair_rows[0]
    eot = end_of_turn_ids(tokenizer)
    (whole, capped), counts = tokenize_rows([row, dataclasses.replace(row, complete=False)], tokenizer,
                                            max_length=SEQ_LEN)
    np.testing.assert_array_equal(capped.rendered.input_ids, whole.rendered.input_ids[:-len(eot)])
    assert whole.rendered.ends_turn and not capped.rendered.ends_turn and counts["no_end_of_turn"] == 1
    assert counts["truncated"] == 0
    # the unpaired JSONL field
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True, "source": "s", "complete": False})
                    + "\n" + json.dumps({"prompt": "q", "completion": "b", "label": False, "source": "s"}) + "\n",
                    encoding="utf-8")
    assert [r.complete for r in load_unpaired_jsonl(path)] == [False, True]
    path.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True, "source": "s", "complete": 1}),
                    encoding="utf-8")
    with pytest.raises(InputError, match="field 'complete' must be true or false"):
        load_unpaired_jsonl(path)


def test_generator_cut_answers_of_the_polyrefuse_completions(shared_data):
    """The completions keep no token ids; an answer whose text stops without a natural end was cut at the
    generator's 512 new tokens. Baseline refusals almost always end; refusal-ablated compliances mostly do not."""
    rows, counts = convert_polyrefuse_completions(shared_data / "polyrefuse_completions")
    assert counts["generator_cut"] == sum(not r.complete for r in rows) > 0
    for row in rows:
        assert row.complete == (row.completion.rstrip()[-1] in NATURAL_END_CHARS
                                or unicodedata.category(row.completion.rstrip()[-1]) == "So")
    cut = {mode: np.mean([not r.complete for r in rows if f"/{mode}#" in r.origin])
           for mode in ("baseline", "harm_ablation")}
    assert cut["baseline"] < 0.1 < 0.5 < cut["harm_ablation"]
    assert ends_naturally("Done.") and ends_naturally("真的吗") and ends_naturally("ok 🙏") and ends_naturally("(x)")
    assert not ends_naturally("and then the") and not ends_naturally("   ")


def test_the_run_family_selects_its_completions(shared_data):
    root = shared_data / "polyrefuse_completions"
    assert family_completion_models(root, "llama") == ["Meta-Llama-3.1-8B-Instruct"]
    assert family_completion_models(root, "qwen2") == family_completion_models(root, "qwen3") == [
        "Qwen2.5-7B-Instruct"]
    assert family_completion_models(root, "gemma2") is None


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
