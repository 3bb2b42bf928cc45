"""Stage 3 (Inject): Latent KTO fine-tuning with the conditional prefix on rows labelled unsafe.

The README's API, importable from here: `from lasa_jax.kto import kto_loss` (TRL's KTO loss, jit-compiled).

Modules, in the order a run uses them: `stage` (the contract), `settings` (the config reader), `data` (rows ->
held-out guard -> benign rows (`benign`) -> latent labels (`labels`) -> token-level examples (`examples`) -> class
weights (`weights`)), `batches` (fixed-shape batches, KL pairing by `pairing`, trimmed by `buckets`), `trainer` (the
run: models, reference, checkpoints, export), `loop` (the step loop), `step` (the jitted update), `loss`,
`reference_table`, `checkpoint`, `run_identity`, `metric_writer`, `preemption`.
"""
from lasa_jax.kto.loss import kto_loss

__all__ = ["kto_loss"]
