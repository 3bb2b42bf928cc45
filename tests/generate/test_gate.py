"""The generate stage's gate: SSI-decided prefix per mode (lasa, prefix_only, baseline), the scorer's inputs, and
the responses against a direct reference generation of the same token sequences."""
import numpy as np
import pytest

from lasa_jax.decoding.answers import RECORD_FIELDS, Decoding, render_inputs
from lasa_jax.decoding.generate import generate, trim_after_eos
from lasa_jax.decoding.stop_tokens import stop_token_ids
from lasa_jax.generate.gate import prefix_decisions, run_inference
from lasa_jax.models.chat import CONDITIONAL_PREFIX

DECODING = Decoding(max_new_tokens=8, batch_size=4)
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


class ThresholdScorer:
    """A tiny stand-in SSI: the harmful probability is a fixed function of the prompt text, flag = prob > threshold
    (a threshold below 0 flags everything, one at or above 1 nothing)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.calls = []

    def score(self, prompts):
        self.calls.append(list(prompts))
        probs = np.array([(sum(map(ord, p)) % 97) / 97 for p in prompts], np.float32)
        return probs, probs > self.threshold


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_responses(model, tokenizer, token_lists, stop_ids):
    """Greedy responses of the given token lists, generated directly as one left-padded batch."""
    T = max(len(t) for t in token_lists)
    ids = np.zeros((len(token_lists), T), np.int32)
    mask = np.zeros_like(ids)
    for r, t in enumerate(token_lists):
        ids[r, T - len(t):] = t
        mask[r, T - len(t):] = 1
    out = generate(model, ids, mask, max_new_tokens=DECODING.max_new_tokens, eos_token_id=stop_ids)
    return [tokenizer.decode(trim_after_eos(row, stop_ids)[0].tolist(), skip_special_tokens=True) for row in out]


@pytest.mark.parametrize("threshold", [-1.0, 2.0, 0.5])
def test_lasa_inference_prefix_on_off(llama, threshold, eval_prompts):
    model, tokenizer = llama
    scorer = ThresholdScorer(threshold)
    records = run_inference(model, tokenizer, eval_prompts, mode="lasa", scorer=scorer, decoding=DECODING)
    assert scorer.calls == [[p.prompt for p in eval_prompts]]  # the SSI sees the raw prompt strings
    probs, flags = ThresholdScorer(threshold).score([p.prompt for p in eval_prompts])
    if threshold < 0:
        assert flags.all()
    elif threshold >= 1:
        assert not flags.any()
    else:
        assert flags.any() and not flags.all()  # a mixed batch
    stop_ids = stop_token_ids(model.config, tokenizer)
    prefix = encode(tokenizer, CONDITIONAL_PREFIX)
    fed = [encode(tokenizer, tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], tokenize=False,
                                                           add_generation_prompt=True)) + (prefix if f else [])
           for p, f in zip(eval_prompts, flags)]
    expected = reference_responses(model, tokenizer, fed, stop_ids)
    for record, p, prob, flag, response in zip(records, eval_prompts, probs, flags, expected):
        assert list(record) == list(RECORD_FIELDS)
        assert (record["id"], record["language"], record["prompt"], record["source"], record["expected"],
                record["category"]) == (p.id, p.language, p.prompt, p.source, p.expected, p.category)
        assert record["prefix_used"] == bool(flag) and record["mode"] == "lasa"
        assert record["ssi_score"] == pytest.approx(float(prob))
        assert record["response"] == response  # continuation only: the prefix is not part of the response
        assert record["finish_reason"] in ("eos", "length") and 1 <= record["num_new_tokens"] <= 8


def test_baseline_matches_lasa_without_prefix(llama, eval_prompts):
    model, tokenizer = llama
    baseline = run_inference(model, tokenizer, eval_prompts, mode="baseline", decoding=DECODING)
    lasa_off = run_inference(model, tokenizer, eval_prompts, mode="lasa", scorer=ThresholdScorer(2.0),
                             decoding=DECODING)
    assert [r["response"] for r in baseline] == [r["response"] for r in lasa_off]
    assert all(r["ssi_score"] is None and not r["prefix_used"] and r["mode"] == "baseline" for r in baseline)
    scored = run_inference(model, tokenizer, eval_prompts, mode="baseline", scorer=ThresholdScorer(-1.0),
                           decoding=DECODING)
    assert all(not r["prefix_used"] and r["ssi_score"] is not None for r in scored)
    with pytest.raises(ValueError, match="needs an SSI scorer"):
        prefix_decisions("lasa", eval_prompts)
    with pytest.raises(ValueError, match="mode must be one of"):
        prefix_decisions("prefix", eval_prompts)


def test_prefix_only_puts_the_prefix_after_the_header_of_flagged_prompts_only(llama, eval_prompts):
    """prefix_only: the SSI decides, the prefix follows the assistant header of flagged prompts only, and the model
    given (the base model) generates; the records say mode prefix_only."""
    model, tokenizer = llama
    records = run_inference(model, tokenizer, eval_prompts, mode="prefix_only", scorer=ThresholdScorer(0.5),
                            decoding=DECODING)
    probs, flags = ThresholdScorer(0.5).score([p.prompt for p in eval_prompts])
    assert flags.any() and not flags.all()
    assert [r["prefix_used"] for r in records] == list(flags) and {r["mode"] for r in records} == {"prefix_only"}
    assert [r["ssi_score"] for r in records] == pytest.approx(list(probs))
    prefix, header = encode(tokenizer, CONDITIONAL_PREFIX), encode(tokenizer, ASSISTANT_HEADER)
    fed = []
    for flag, rendered in zip(flags, render_inputs(tokenizer, eval_prompts, flags)):
        ids = rendered.input_ids.tolist()
        body = ids[:len(ids) - len(prefix)] if flag else ids
        assert body[-len(header):] == header and (ids[len(body):] == prefix) == bool(flag)
        fed.append(ids)
    expected = reference_responses(model, tokenizer, fed, stop_token_ids(model.config, tokenizer))
    assert [r["response"] for r in records] == expected
    lasa = run_inference(model, tokenizer, eval_prompts, mode="lasa", scorer=ThresholdScorer(0.5), decoding=DECODING)
    assert [r["response"] for r in lasa] == expected  # same decisions and model -> the same responses
    with pytest.raises(ValueError, match="mode 'prefix_only' needs an SSI scorer"):
        prefix_decisions("prefix_only", eval_prompts)
