"""Data loaders, one module per data-format family.

- `languages`: language-name normalisation to ISO 639-1 codes.
- `parallel`: parallel text for Locate (text, language, group_id, source).
- `labelled`: harmful/benign prompts for the SSI.
- `preference`: paired/unpaired preference rows for KTO.
- `eval_sets`: held-out evaluation prompts (MultiJail, XSTest, OR-Bench, OKTest).
"""
