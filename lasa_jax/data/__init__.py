"""Data loaders, one module per data-format family.

- `languages`: language-name normalisation to ISO 639-1 codes.
- `parallel`: parallel text for Locate (text, language, group_id, source).
- `labelled`: harmful/benign prompts for the SSI.
- `preference` (subpackage, one module a step): paired/unpaired preference rows for KTO, latent labels,
  tokenisation, class weights, KL pairing and resumable batches.
- `benign`: the base model's cached answers to benign prompts (desirable KTO rows).
- `heldout`: the held-out guard (no evaluation prompt enters training or selection).
- `eval_sets`: held-out evaluation prompts (MultiJail, XSTest, OR-Bench, OKTest).
"""
