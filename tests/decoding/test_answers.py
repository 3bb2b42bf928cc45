"""The answer engine: prompt rendering with the prefix after the assistant header, the records, their JSONL files,
the resumable `.partial` file, and the split of a leading <think> block."""
import json

import numpy as np
import pytest

from lasa_jax.decoding.answers import (
    Decoding,
    generate_responses,
    read_generations,
    render_inputs,
    split_reasoning,
    write_generations,
)
from lasa_jax.models.chat import CONDITIONAL_PREFIX

DECODING = Decoding(max_new_tokens=8, batch_size=4)
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prefix_tokens_follow_the_assistant_header(llama_tokenizer, eval_prompts):
    tokenizer = llama_tokenizer
    flags = np.array([True, False, True, False])
    rendered = render_inputs(tokenizer, eval_prompts, flags)
    header = encode(tokenizer, ASSISTANT_HEADER)
    prefix = encode(tokenizer, CONDITIONAL_PREFIX)
    for p, flag, r in zip(eval_prompts, flags, rendered):
        text = tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                             add_generation_prompt=True)
        template = encode(tokenizer, text)
        ids = r.input_ids.tolist()
        assert ids[:len(template)] == template and template[-len(header):] == header
        assert ids[len(template):] == (prefix if flag else [])
        assert (r.prefix_start, r.prefix_end) == (len(template), len(ids))
        assert ids.count(tokenizer.bos_token_id) == 1


def test_jsonl_round_trip_and_resume(llama, llama_tokenizer, eval_prompts, tmp_path):
    model, tokenizer, prompts = llama, llama_tokenizer, eval_prompts
    path = tmp_path / "gen.jsonl"
    scores = np.array([0.2, 0.9, 0.4, 0.7], np.float32)  # SSI scores of a mixed batch, flagged above 0.5
    flags = scores > 0.5
    records = generate_responses(model, tokenizer, prompts, mode="lasa", ssi_scores=scores, prefix_flags=flags,
                                 decoding=DECODING)
    write_generations(path, records)
    assert read_generations(path) == records
    # resume: two finished records (one marked) and a truncated line in the partial file
    partial = tmp_path / "gen.jsonl.partial"
    marked = dict(records[1], response="FROM THE PARTIAL FILE")
    partial.write_text(json.dumps(records[0]) + "\n" + json.dumps(marked) + "\n" + '{"id": "t:2", "resp',
                       encoding="utf-8")
    resumed = generate_responses(model, tokenizer, prompts, mode="lasa", ssi_scores=scores, prefix_flags=flags,
                                 decoding=DECODING, partial_path=partial, chunk_size=1)
    assert resumed[1]["response"] == "FROM THE PARTIAL FILE"
    assert [r["response"] for i, r in enumerate(resumed) if i != 1] == [r["response"] for i, r in
                                                                       enumerate(records) if i != 1]
    lines = partial.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["t:0", "t:1", "t:2", "t:3"]
    with pytest.raises(ValueError, match="was generated with mode 'lasa'.*delete the file"):
        generate_responses(model, tokenizer, prompts, mode="baseline", ssi_scores=None,
                           prefix_flags=np.zeros(4, bool), decoding=DECODING, partial_path=partial)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({k: v for k, v in records[0].items() if k != "response"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: generation record lacks field\(s\) \['response'\]"):
        read_generations(bad)
    with pytest.raises(FileNotFoundError, match="generation file not found"):
        read_generations(tmp_path / "missing.jsonl")


def test_split_reasoning():
    assert split_reasoning("Sure, here it is.") == (None, "Sure, here it is.")
    assert split_reasoning("<think>\nThe user asks X.\n</think>\n\nI cannot help.") == ("The user asks X.",
                                                                                    "I cannot help.")
    assert split_reasoning("  <think>still thinking") == ("still thinking", "")
    assert split_reasoning("Answer mentioning <think> later") == (None, "Answer mentioning <think> later")
