"""Data files: readers of the sets the stages use, one module per family. Readers return the rows of a file as
records; each stage groups, filters and converts them for its own use.

- `languages`: language names and scripts (ISO 639-1 codes).
- `fields`: checked fields of one record, shared by the readers.
- `parallel`: parallel text (FLORES/SIB-200, PolyRefuse, MultiJail, generic JSONL / hub) -> `ParallelText`.
- `labelled`: harmful/benign prompts for the SSI -> `LabelledPrompt`.
- `preference` (subpackage): preference files (the authors' paired JSON, unpaired JSONL, the WildGuard-labelled
  PolyRefuse completions) -> `PreferenceRow`s.
- `groups`: query-group operations (subsampling, grouped splits, disjointness).
- `heldout`: the held-out guard (no evaluation prompt enters training or selection).
- `eval_sets`: held-out evaluation prompts (MultiJail, XSTest, OR-Bench, OKTest) -> `EvalPrompt`.
"""
