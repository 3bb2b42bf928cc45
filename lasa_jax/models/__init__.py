"""Models: the Flax NNX decoder and its Hugging Face import/export.

    from lasa_jax.models import from_pretrained, save_pretrained
    model = from_pretrained(path, dtype="float32", mesh=None)
    out = model(input_ids, attention_mask=mask, output_hidden_states=True)
"""
from lasa_jax.models.decoder import Decoder, DecoderOutput, forward, forward_jit, init_cache, init_decoder
from lasa_jax.models.hf import from_pretrained, model_fingerprint, save_pretrained

__all__ = ["Decoder", "DecoderOutput", "forward", "forward_jit", "init_cache", "init_decoder", "from_pretrained",
           "save_pretrained", "model_fingerprint"]
