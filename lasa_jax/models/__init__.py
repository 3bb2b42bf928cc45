"""Models: one Flax NNX decoder for Llama-3.x, Qwen2.5 and Qwen3, its Hugging Face / GGUF I/O, and what every stage
runs on it (capture of residual states, log-probabilities, chat rendering, loading).

The README's API, importable from here:

    from lasa_jax.models import from_pretrained, save_pretrained
    model = from_pretrained(path, dtype="float32", mesh=None)
    out = model(input_ids, attention_mask=mask, output_hidden_states=True)
"""
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained

__all__ = ["from_pretrained", "save_pretrained"]
