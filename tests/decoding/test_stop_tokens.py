"""Stop tokens: the model's, generation_config.json's, the tokenizer's and the template's end-of-turn ids all end
generation."""
import json

import numpy as np
import pytest
from transformers import GenerationConfig

from lasa_jax.decoding.answers import Decoding, generate_responses
from lasa_jax.decoding.stop_tokens import generation_config_eos_ids, stop_token_ids
from lasa_jax.infra.errors import InputError
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.loading import load_tokenizer


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def baseline_answer(model, tokenizer, prompt):
    """The greedy baseline record of one prompt (no prefix, 8 new tokens, the model's own stop tokens)."""
    return generate_responses(model, tokenizer, [prompt], mode="baseline", ssi_scores=None,
                              prefix_flags=np.zeros(1, bool), decoding=Decoding(max_new_tokens=8, batch_size=4))[0]


def _qwen2_with_generation_eos(source, target, eos_ids):
    import shutil

    shutil.copytree(source, target)
    config = json.loads((target / "generation_config.json").read_text())
    (target / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": eos_ids}))
    return from_pretrained(target), load_tokenizer(str(target))


def test_generation_config_eos_ids_also_stop(tiny_hf_dirs, eval_prompts, tmp_path):
    """Qwen lists <|im_end|> and <|endoftext|> in generation_config.json: both stop generation, as in
    transformers' GenerationConfig."""
    tokenizer = load_tokenizer(str(tiny_hf_dirs["qwen2"]))
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    model, tokenizer = _qwen2_with_generation_eos(tiny_hf_dirs["qwen2"], tmp_path / "qwen2", [im_end, endoftext])
    assert model.config.eos_token_ids == (im_end,)  # config.json lists <|im_end|> only
    assert GenerationConfig.from_pretrained(tmp_path / "qwen2").eos_token_id == [im_end, endoftext]
    assert generation_config_eos_ids(tmp_path / "qwen2") == [im_end, endoftext]
    assert endoftext not in stop_token_ids(model.config, tokenizer)
    assert stop_token_ids(model.config, tokenizer, model_dir=model.source_path) == sorted({im_end, endoftext})
    # generation stops on a generation_config id: make the first greedy token of a prompt one of them
    first = baseline_answer(model, tokenizer, eval_prompts[0])
    first_token = int(encode(tokenizer, first["response"])[0])
    assert first["num_new_tokens"] > 1 and first_token not in (im_end, endoftext)
    model, tokenizer = _qwen2_with_generation_eos(tiny_hf_dirs["qwen2"], tmp_path / "stop", [im_end, first_token])
    stopped = baseline_answer(model, tokenizer, eval_prompts[0])
    assert (stopped["finish_reason"], stopped["num_new_tokens"]) == ("eos", 1)
    (tmp_path / "stop" / "generation_config.json").write_text('{"eos_token_id": "x"}')
    with pytest.raises(InputError, match=r"generation_config.json: field 'eos_token_id' must be a token id"):
        generation_config_eos_ids(tmp_path / "stop")
    assert generation_config_eos_ids(tmp_path / "nothing_here") == []
