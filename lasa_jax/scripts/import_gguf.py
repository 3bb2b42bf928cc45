"""Convert a GGUF file (llama / qwen2 / qwen3) into a Hugging Face checkpoint directory (lasa_jax.models.gguf).

    python -m lasa_jax.scripts.import_gguf --gguf=FILE --output_dir=DIR [--dtype=float32] [--overwrite]

DIR gets config.json, model.safetensors, generation_config.json, the tokenizer with its chat template and
gguf_import.json; it appears only when complete. Bad input (not a GGUF, truncated, another architecture, a tensor
type gguf cannot dequantise) prints one `error: ...` line and exits with status 2.
"""

from absl import app, flags, logging

from lasa_jax.cli import run

_GGUF = flags.DEFINE_string("gguf", None, "GGUF file to convert.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Hugging Face directory to write.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the written weights.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output_dir.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.models.gguf import convert_gguf

    out = convert_gguf(_GGUF.value, _OUTPUT_DIR.value, dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
    logging.info("wrote %s", out)
    print(out)


if __name__ == "__main__":
    flags.mark_flags_as_required(["gguf", "output_dir"])
    run(main)
