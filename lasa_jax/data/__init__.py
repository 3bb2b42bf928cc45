"""Data files: readers of the sets the stages use, one module per family. Readers return plain rows; each stage
converts them to its own types.

- `languages`: language names and scripts (ISO 639-1 codes).
- `parallel`: parallel text (FLORES/SIB-200, PolyRefuse, MultiJail, ...) for Locate.
- `labelled`: harmful/benign prompts for the SSI.
- `preference` (subpackage): preference files (the authors' paired JSON, unpaired JSONL, the WildGuard-labelled
  PolyRefuse completions) -> `PreferenceRow`s.
- `groups`: query-group operations (subsampling, grouped splits, disjointness).
- `heldout`: the held-out guard (no evaluation prompt enters training or selection).
- `eval_sets`: held-out evaluation prompts (MultiJail, XSTest, OR-Bench, OKTest).
"""
