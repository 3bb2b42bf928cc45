"""The generation engine every stage that generates shares (evaluation answers, KTO's benign answers, LLM judges).

Modules: `generate` (one static batch with a `lax.while_loop`; `generate_batched`, the entry point for many
prompts), `continuous` (continuous batching: a slot pool refilled as rows finish), `sampling` (token selection),
`stop_tokens` (which ids end a row; the padded eos array the programs compare with), `answers` (chat prompts ->
generation records: rendering with or without the prefix, the resumable loop, the generations.jsonl format).
"""
