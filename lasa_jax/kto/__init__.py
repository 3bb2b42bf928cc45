"""Stage 3 (Inject): Latent KTO fine-tuning with the conditional prefix on rows labelled unsafe.

The README's API, importable from here: `from lasa_jax.kto import kto_loss` (TRL's KTO loss, jit-compiled).

Modules, in the order a run uses them: `stage` (the contract), `settings` (the config reader), `trainer` (the run:
data, models, reference, checkpoints, export), `run_models` (base model, initial policy, reference), `data` (rows ->
held-out guard -> benign rows (`benign`) -> latent labels (`labels`) -> token-level examples (`examples`) -> class
weights (`weights`)), `batches` (the seeded, resumable batch sequence with KL pairing), `buckets` (batches trimmed
to length buckets), `reference_table` (precomputed reference log-probs), `run_identity` (what a resume must
match), `loop` (the step loop, with `metric_writer` and `preemption`), `step` (the jitted update), `loss` (the KTO
loss), `checkpoint` (orbax checkpoints).
"""
from lasa_jax.kto.loss import kto_loss

__all__ = ["kto_loss"]
