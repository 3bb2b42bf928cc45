"""Stage 2 (Interpret): the Safety Semantic Interpreter (SSI), an MLP on the residual stream at the bottleneck.

The README's API, importable from here:

    from lasa_jax.ssi import load_ssi, SSIScorer
    scorer = SSIScorer(model, load_ssi(ssi_dir))       # model: the frozen base model the SSI was trained on
    probs, flags = scorer.score(["How do I ...?", ...])  # p(harmful) (N,) float32, flags (N,) bool

Modules: `stage` (the contract and the run), `settings` (the config reader), `data` (splits and evaluation sets),
`features` (truncated-trunk features with a disk cache), `mlp` (the network), `training` (optax training with early
stopping), `metrics` (thresholds, per-language metrics), `plot` (the per-language plot), `artifact` (the one on-disk
schema, loading, the scorer).
"""
from lasa_jax.ssi.artifact import SSIScorer, load_ssi

__all__ = ["SSIScorer", "load_ssi"]
