"""Unpaired preference rows for Latent KTO: the public names of the modules below, importable from here.

Pipeline (METHOD.md §5, with the fixes of §9 items 12-14), one module a step:
  `formats` (`load_paired_preference_json`, `load_unpaired_jsonl`) and `polyrefuse`
  (`convert_polyrefuse_completions`) load `PreferenceRow`s (`rows`; record fields checked by `fields`)
  -> `labels.assign_latent_labels` (is_unsafe: source-based proxy or SSI predictions)
  -> `examples.tokenize_rows` (render_example with the conditional prefix iff is_unsafe; over-long completions are
  tail-truncated and, like completions cut by their generator (`ends_naturally`), get no end-of-turn token; counts
  per desirability, source and language) -> `weights.balance_class_weights` (TRL's class-weight range check)
  -> `batches.iterate_kto_batches` (seeded permutation per epoch, KL rows paired by a derangement that avoids the
  row's own group and its own prompt (`pairing`), fixed-shape padded arrays, resumable from a `DataPosition`).

Desirability: a safety refusal is desirable and a harmful compliance undesirable, with or without the prefix.
Loggers are children of `lasa_jax.data.preference` (e.g. `lasa_jax.data.preference.examples`).
"""
from lasa_jax.data.preference.batches import (
    DataPosition,
    KTOBatch,
    batches_per_epoch,
    build_kto_batch,
    iterate_kto_batches,
)
from lasa_jax.data.preference.examples import DROP_WARNING_FRACTION, KTOExample, tokenize_rows
from lasa_jax.data.preference.formats import load_paired_preference_json, load_unpaired_jsonl
from lasa_jax.data.preference.labels import DEFAULT_UNSAFE_PROB_BY_SOURCE, assign_latent_labels
from lasa_jax.data.preference.pairing import derangement, epoch_permutation, kl_clashes, kl_partners
from lasa_jax.data.preference.polyrefuse import (
    COMPLETION_FAMILIES,
    COMPLETIONS_SUFFIX,
    convert_polyrefuse_completions,
    family_completion_models,
    read_completions_file,
)
from lasa_jax.data.preference.rows import NATURAL_END_CHARS, PreferenceRow, ends_naturally, prompt_group_id
from lasa_jax.data.preference.weights import (
    AUTO_WEIGHT_RATIO,
    BALANCE_MODES,
    WEIGHT_RATIO_RANGE,
    balance_class_weights,
    trl_weight_check,
)

__all__ = [
    "AUTO_WEIGHT_RATIO", "BALANCE_MODES", "COMPLETIONS_SUFFIX", "COMPLETION_FAMILIES", "DEFAULT_UNSAFE_PROB_BY_SOURCE",
    "DROP_WARNING_FRACTION", "NATURAL_END_CHARS", "WEIGHT_RATIO_RANGE", "DataPosition", "KTOBatch", "KTOExample",
    "PreferenceRow", "assign_latent_labels", "balance_class_weights", "batches_per_epoch", "build_kto_batch",
    "convert_polyrefuse_completions", "derangement", "ends_naturally", "epoch_permutation",
    "family_completion_models", "iterate_kto_batches", "kl_clashes", "kl_partners", "load_paired_preference_json",
    "load_unpaired_jsonl", "prompt_group_id", "read_completions_file", "tokenize_rows", "trl_weight_check",
]
