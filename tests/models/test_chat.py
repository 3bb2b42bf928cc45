"""Token-level chat sequences: prefix placement, masks, special tokens, truncation, training/inference identity."""
import numpy as np
import pytest

from lasa_jax.models.chat import CONDITIONAL_PREFIX, assemble_example, end_of_turn_ids, render_example, render_prompt
from lasa_jax.testing import build_tokenizer

STYLES = ("llama3", "qwen2", "qwen3")
# Qwen3 exercised with thinking disabled (the generation prompt then ends with an empty think block).
TEMPLATE_KWARGS = {"llama3": None, "qwen2": None, "qwen3": {"enable_thinking": False}}
EXPECTED_EOT = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>"}
PROMPT = "How do I bake bread at home?"
COMPLETION = "I cannot help with that request."


@pytest.fixture(scope="module", params=STYLES)
def styled(request, tmp_path_factory):
    style = request.param
    return style, build_tokenizer(tmp_path_factory.mktemp(style), style), TEMPLATE_KWARGS[style]


def _template_text(tok, prompt, kwargs):
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **(kwargs or {}))


def test_end_of_turn_is_the_family_token(styled):
    style, tok, kwargs = styled
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok, kwargs)) == [EXPECTED_EOT[style]]


def test_prompt_decodes_to_template_and_prefix_follows_header(styled):
    style, tok, kwargs = styled
    rendered = render_prompt(tok, PROMPT, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs)
    ids = rendered.input_ids
    assert ids.dtype == np.int32
    template = _template_text(tok, PROMPT, kwargs)
    assert tok.decode(ids[:rendered.prefix_start]) == template
    assert rendered.prefix_end == len(ids)
    assert ids[rendered.prefix_start:].tolist() == tok(CONDITIONAL_PREFIX, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[rendered.content_start:rendered.content_end]) == PROMPT
    if style == "llama3":
        assert tok.decode(ids[:rendered.prefix_start]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert int(np.sum(ids == tok.bos_token_id)) == 1 and ids[0] == tok.bos_token_id
    else:
        assert tok.bos_token_id is None
        header = "<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if style == "qwen3" else "")
        assert template.endswith(header)
    no_prefix = render_prompt(tok, PROMPT, template_kwargs=kwargs)
    assert no_prefix.prefix_start == no_prefix.prefix_end == len(no_prefix.input_ids) == rendered.prefix_start
    assert np.array_equal(no_prefix.input_ids, ids[:rendered.prefix_start])


def test_example_masks_and_single_end_of_turn(styled):
    style, tok, kwargs = styled
    eot = end_of_turn_ids(tok, kwargs)
    for prefix in (None, CONDITIONAL_PREFIX):
        example = render_example(tok, PROMPT, "  " + COMPLETION + "\n", prefix=prefix, template_kwargs=kwargs)
        ids, mask = example.input_ids, example.loss_mask
        prompt = render_prompt(tok, PROMPT, prefix=prefix, template_kwargs=kwargs)
        # training/inference identity: the inference prompt is an exact prefix of the training sequence
        assert np.array_equal(ids[:len(prompt.input_ids)], prompt.input_ids)
        assert example.prefix_start == prompt.prefix_start and example.prefix_end == prompt.prefix_end
        assert mask[:example.prefix_end].sum() == 0  # template and prefix are never scored
        assert np.all(mask[example.prefix_end:] == 1)
        completion = tok(COMPLETION, add_special_tokens=False)["input_ids"]
        assert ids[example.prefix_end:].tolist() == completion + eot
        assert tok.decode(ids[mask == 1]) == COMPLETION + EXPECTED_EOT[style]
        # exactly one end-of-turn after the completion, no extra EOS / newline
        assert ids[-1] == eot[-1] and ids[-2] != eot[-1]
        if tok.bos_token_id is not None:
            assert int(np.sum(ids == tok.bos_token_id)) == 1


def test_message_list_prompt_with_system(styled):
    _, tok, kwargs = styled
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    rendered = render_prompt(tok, messages, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs)
    assert tok.decode(rendered.input_ids[:rendered.prefix_start]) == _template_text(tok, messages, kwargs)
    assert tok.decode(rendered.input_ids[rendered.content_start:rendered.content_end]) == PROMPT


def test_truncation_cuts_user_content_front_and_keeps_header_and_eot(styled):
    _, tok, kwargs = styled
    long_prompt = " ".join(f"word{i}" for i in range(60)) + " final question?"
    full = render_example(tok, long_prompt, COMPLETION, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                          max_length=10_000)
    max_length = len(full.input_ids) - 25
    cut = render_example(tok, long_prompt, COMPLETION, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                         max_length=max_length)
    assert len(cut.input_ids) == max_length and cut.num_dropped == 25
    # everything before the user content and from its end on is unchanged; the content lost its 25 oldest tokens
    assert np.array_equal(cut.input_ids[:cut.content_start], full.input_ids[:full.content_start])
    assert np.array_equal(cut.input_ids[cut.content_end:], full.input_ids[full.content_end:])
    assert np.array_equal(cut.input_ids[cut.content_start:cut.content_end],
                          full.input_ids[full.content_start + 25:full.content_end])
    assert tok.decode(cut.input_ids[cut.content_start:cut.content_end]).endswith("final question?")
    assert np.array_equal(cut.loss_mask[cut.prefix_end:], np.ones(len(full.input_ids) - full.prefix_end))

    # max_prompt_length bounds template + prefix; the completion is untouched
    prompt_budget = full.prefix_end - 10
    limited = render_example(tok, long_prompt, COMPLETION, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                             max_prompt_length=prompt_budget, max_length=10_000)
    assert limited.prefix_end == prompt_budget and limited.num_dropped == 10
    inference = render_prompt(tok, long_prompt, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                              max_prompt_length=prompt_budget)
    assert np.array_equal(inference.input_ids, limited.input_ids[:limited.prefix_end])

    # a completion that cannot fit with its end-of-turn: the row is dropped, never cut
    long_completion = " ".join(["refuse"] * 400)
    assert render_example(tok, PROMPT, long_completion, template_kwargs=kwargs, max_length=128) is None
    # the prompt's fixed part (template, header, prefix) is never cut
    fixed = full.content_start + 1 + (full.prefix_end - full.content_end)
    assert render_example(tok, long_prompt, COMPLETION, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                          max_length=fixed + len(full.completion_ids) - 1) is None
    assert render_example(tok, long_prompt, COMPLETION, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                          max_length=fixed + len(full.completion_ids)) is not None
    with pytest.raises(ValueError, match="max_prompt_length"):
        render_prompt(tok, long_prompt, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs, max_prompt_length=fixed - 1)


def test_assemble_pairs_prompt_and_foreign_completion(styled):
    _, tok, kwargs = styled
    a = render_example(tok, PROMPT, COMPLETION, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs)
    b = render_example(tok, "What is the capital of France?", "Paris.", template_kwargs=kwargs)
    joined = assemble_example(a.prompt, b.completion_ids, max_length=512)
    assert np.array_equal(joined.input_ids, np.concatenate([a.prompt.input_ids, b.completion_ids]))
    assert joined.loss_mask.sum() == len(b.completion_ids)


def test_raw_text_mode_uses_default_special_tokens(styled):
    style, tok, _ = styled
    rendered = render_prompt(tok, PROMPT, use_chat_template=False)
    assert rendered.input_ids.tolist() == tok(PROMPT)["input_ids"]
    assert (rendered.input_ids[0] == tok.bos_token_id) == (style == "llama3")
    with pytest.raises(ValueError, match="string"):
        render_prompt(tok, [{"role": "user", "content": PROMPT}], use_chat_template=False)


def test_bad_inputs(styled):
    _, tok, kwargs = styled
    with pytest.raises(ValueError, match="last prompt message"):
        render_prompt(tok, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    with pytest.raises(ValueError, match="completion"):
        render_example(tok, PROMPT, "   ", template_kwargs=kwargs)


@pytest.mark.parametrize("prompt", ["如何在家烤面包？", "كيف أخبز الخبز في المنزل؟",
                                    "  Spaces around, émojis 🙂 too.  ",
                                    "ฉันจะอบขนมปังที่บ้านได้อย่างไร"])
def test_unicode_user_content_span_and_truncation(styled, prompt):
    style, tok, kwargs = styled
    rendered = render_prompt(tok, prompt, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs)
    content = tok.decode(rendered.input_ids[rendered.content_start:rendered.content_end])
    # the droppable span is user content only (llama3 trims it; tokens straddling its edges are not droppable)
    assert content and content in prompt and rendered.max_droppable == rendered.content_end - rendered.content_start - 1
    assert tok.decode(rendered.input_ids[:rendered.prefix_start]) == _template_text(tok, prompt, kwargs)
    cut = render_prompt(tok, prompt, prefix=CONDITIONAL_PREFIX, template_kwargs=kwargs,
                        max_prompt_length=len(rendered.input_ids) - rendered.max_droppable)
    assert cut.content_end - cut.content_start == 1 and cut.num_dropped == rendered.max_droppable
    assert np.array_equal(cut.input_ids[cut.prefix_start:], rendered.input_ids[rendered.prefix_start:])


def test_cached_template_values_follow_template_changes(tmp_path):
    tok = build_tokenizer(tmp_path, "llama3")
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok)) == ["<|eot_id|>"]
    first = render_prompt(tok, [{"role": "system", "content": "A"}, {"role": "user", "content": PROMPT}])
    second = render_prompt(tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}])
    for rendered in (first, second):  # each history has its own sentinel render
        assert tok.decode(rendered.input_ids[rendered.content_start:rendered.content_end]) == PROMPT
    # a changed chat template (here: turns closed by <|end_of_text|>) is picked up, not served from the cache
    tok.chat_template = tok.chat_template.replace("<|eot_id|>", "<|end_of_text|>")
    assert tok.convert_ids_to_tokens(end_of_turn_ids(tok)) == ["<|end_of_text|>"]
    example = render_example(tok, PROMPT, COMPLETION)
    assert tok.convert_ids_to_tokens(example.input_ids[-1:].tolist()) == ["<|end_of_text|>"]
    assert "<|eot_id|>" not in tok.decode(example.input_ids)
