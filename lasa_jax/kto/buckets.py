"""Sequence-length buckets of KTO batches: each batch is trimmed on the host to the smallest bucket that holds it.

Rows are right-padded to `data.max_length` by `lasa_jax.kto.batches.iterate_kto_batches`; a batch whose longest
real row (policy or KL, padding rows included) has n tokens only needs the first n positions. Trimming to the
smallest bucket >= n of a short fixed list (`length_buckets`: powers of two from 64, then max_length) keeps the
number of compiled step programs small (4 for max_length 512) while most of the padding is never computed. The
policy and KL rows of a batch share its bucket (one shape per step). Trimming only drops positions that every row
masks out (attention_mask 0, loss_mask 0), so log-probs are those of the full-length rows up to float reassociation.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lasa_jax.infra.errors import InputError
from lasa_jax.kto.batches import KTOBatch

MIN_BUCKET = 64
SEQUENCE_KEYS = ("input_ids", "attention_mask", "loss_mask", "kl_input_ids", "kl_attention_mask", "kl_loss_mask")


def length_buckets(max_length: int, spec: str | Sequence[int] = "auto") -> tuple[int, ...] | None:
    """The bucket lengths for `train.length_buckets` = spec: "auto" (powers of two from 64 below max_length, then
    max_length), "off" (None: every batch keeps max_length), or explicit lengths ("128,256"; max_length is added)."""
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "off":
            return None
        if spec == "auto":
            lengths, n = [], MIN_BUCKET
            while n < max_length:
                lengths.append(n)
                n *= 2
            return tuple(lengths) + (int(max_length),)
        try:
            spec = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise InputError(f"length buckets: expected 'auto', 'off' or comma-separated lengths, got {spec!r}") \
                from None
    lengths = sorted({int(n) for n in spec if 0 < int(n) < max_length} | {int(max_length)})
    return tuple(lengths)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length (the last bucket when none is)."""
    for bucket in buckets:
        if bucket >= length:
            return int(bucket)
    return int(buckets[-1])


def batch_length(batch: KTOBatch) -> int:
    """Positions a batch needs: its longest policy or KL row (real tokens)."""
    return int(max(batch.attention_mask.sum(axis=1).max(), batch.kl_attention_mask.sum(axis=1).max()))


def trimmed_arrays(batch: KTOBatch, buckets: Sequence[int] | None) -> dict[str, np.ndarray]:
    """`batch.device_arrays()` with the (B, S) arrays cut to the batch's bucket (unchanged when buckets is None)."""
    arrays = batch.device_arrays()
    if not buckets:
        return arrays
    length = bucket_for(batch_length(batch), buckets)
    return {k: (v[:, :length] if k in SEQUENCE_KEYS else v) for k, v in arrays.items()}
