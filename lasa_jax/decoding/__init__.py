"""The generation engine every stage that generates shares (evaluation answers, KTO's benign answers, LLM judges).

Modules: `generate` (one static batch with a `lax.while_loop`; `generate_batched`, the entry point for many
prompts), `continuous` (continuous batching: a slot pool refilled as rows finish), `sampling` (token selection),
`answers` (chat prompts -> answer records: rendering with or without the prefix, resumable files).
"""
