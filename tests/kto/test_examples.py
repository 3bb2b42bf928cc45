"""lasa_jax.kto.examples: tokenisation of labelled rows (tail-truncation of over-long completions, counts by class,
source and language; no end-of-turn after a completion its generator cut)."""
import dataclasses
import logging

import numpy as np
import pytest

from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.kto.examples import tokenize_rows
from lasa_jax.models.chat import end_of_turn_ids
from tests.kto.kto_runs import SEQ_LEN


def test_over_long_rows_are_truncated_not_dropped_and_counted_by_class_source_and_language(pair_rows, tokenizer,
                                                                                           caplog):
    """At 215 tokens 4 of the 12 (long) undesirable answers do not fit whole: they are tail-truncated, keep the
    start of the full sequence and get no end-of-turn token; every refusal fits. truncate_completions=False is the
    old rule (drop, count, warn)."""
    rows = [dataclasses.replace(row, source="other" if i % 4 == 1 else row.source, language="ko" if i < 6 else "")
            for i, row in enumerate(pair_rows)]
    eot = end_of_turn_ids(tokenizer)
    with caplog.at_level(logging.WARNING, logger="lasa_jax.kto.examples"):
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

    with caplog.at_level(logging.WARNING, logger="lasa_jax.kto.examples"):
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


def test_a_completion_cut_by_its_generator_gets_no_end_of_turn(pair_rows, tokenizer):
    row = pair_rows[0]
    eot = end_of_turn_ids(tokenizer)
    (whole, capped), counts = tokenize_rows([row, dataclasses.replace(row, complete=False)], tokenizer,
                                            max_length=SEQ_LEN)
    np.testing.assert_array_equal(capped.rendered.input_ids, whole.rendered.input_ids[:-len(eot)])
    assert whole.rendered.ends_turn and not capped.rendered.ends_turn and counts["no_end_of_turn"] == 1
    assert counts["truncated"] == 0
