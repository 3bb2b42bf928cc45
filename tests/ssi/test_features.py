"""SSI features: the residual stream at index k equals Hugging Face's hidden_states[k] at the last token; the
feature cache is keyed by everything that changes the features and is used on a hit."""
import numpy as np
import torch
from transformers import AutoModelForCausalLM

from lasa_jax.models.capture import tokenize_prompts
from lasa_jax.ssi.features import prompt_features


def test_features_are_hf_hidden_states_at_the_residual_index(llama, prompts):
    model, tokenizer, directory = llama
    hf = AutoModelForCausalLM.from_pretrained(directory).eval()
    ids = tokenize_prompts(tokenizer, prompts[:3], max_length=64)
    for k in (1, model.config.num_layers):  # k == L is after the final norm, as HF
        features = prompt_features(model, tokenizer, prompts[:3], residual_index=k, max_length=64, progress=False)
        for i, t in enumerate(ids):
            with torch.no_grad():
                hidden = hf(input_ids=torch.tensor(t[None].astype(np.int64)), output_hidden_states=True).hidden_states
            np.testing.assert_allclose(features[i], hidden[k][0, -1].numpy(), atol=1e-4)


def test_feature_cache_is_keyed_and_used(llama, tmp_path, prompts):
    model, tokenizer, _ = llama
    first = prompt_features(model, tokenizer, prompts, residual_index=2, max_length=64, cache_dir=tmp_path,
                            progress=False)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    np.savez(files[0], features=np.zeros_like(first))  # a hit must return the cached array
    assert not prompt_features(model, tokenizer, prompts, residual_index=2, max_length=64, cache_dir=tmp_path,
                               progress=False).any()
    for changed in ({"residual_index": 1}, {"max_length": 5}):  # other features -> other keys
        kwargs = {"residual_index": 2, "max_length": 64, **changed}
        assert prompt_features(model, tokenizer, prompts, cache_dir=tmp_path, progress=False, **kwargs).any()
    reordered = prompt_features(model, tokenizer, prompts[::-1], residual_index=2, max_length=64,
                                cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(reordered[::-1], first, atol=1e-5)
    assert len(list(tmp_path.glob("*.npz"))) == 4
