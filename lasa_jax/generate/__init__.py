"""Stage 4 (Generate): the evaluation prompts answered by baseline, prefix-only and LASA systems.

The README's API, importable from here: `from lasa_jax.generate import generate` (KV-cache decoding of one batch;
the engine itself, shared with KTO's benign answers and the LLM judges, is `lasa_jax.decoding`).

Modules: `stage` (the contract: SSI decisions on the base model, then answers, the meta file), `settings` (the
config reader), `gate` (which prompts get the conditional prefix, per mode).
"""
from lasa_jax.decoding.generate import generate

__all__ = ["generate"]
