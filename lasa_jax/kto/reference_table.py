"""Precomputed reference log-probs of a KTO run (`reference.mode` "precomputed"): computed once, saved, looked up.

Policy rows are keyed by row index, KL rows by (row index, partner row index), since KL pairs are drawn per batch.
The table is computed along the run's own deterministic batch sequence, on the same length-bucketed arrays the
steps see (`lasa_jax.kto.buckets`), with the policy and KL rows of a batch in one reference forward
(`lasa_jax.kto.step.reference_logps`; later epochs, whose policy rows are all known, run the KL rows only).
File: `<workdir>/reference_logps.npz` with the identity of the run it belongs to.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.storage import atomic_path
from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import KTOBatch
from lasa_jax.kto.buckets import trimmed_arrays
from lasa_jax.models import logprobs
from lasa_jax.models.config import ModelConfig
from lasa_jax.sharding import put_batch, to_host

log = logging.getLogger(__name__)


class ReferenceTable:
    """Precomputed reference log-probs: policy rows by row index, KL rows by (row index, partner row index)."""

    def __init__(self, policy: dict[int, float], kl: dict[tuple[int, int], float]):
        self.policy = policy
        self.kl = kl

    @classmethod
    def compute(cls, ref_params: Any, ref_config: ModelConfig, mesh, batches: Iterator[KTOBatch], num_batches: int,
                chunk_size: int, progress: bool = True, buckets: tuple[int, ...] | None = None) -> ReferenceTable:
        """Run the reference over the policy and KL rows of `num_batches` batches (one forward per batch).

        buckets: the run's sequence-length buckets (`lasa_jax.kto.buckets.length_buckets`); None = full length.
        """
        from lasa_jax.infra.progress import progress_bar

        policy: dict[int, float] = {}
        kl: dict[tuple[int, int], float] = {}
        bar = progress_bar(num_batches, progress and is_writer(), "reference log-probs", unit="batch")
        for _ in range(num_batches):
            batch = next(batches)
            arrays = trimmed_arrays(batch, buckets)
            rows, valid = batch.row_index, np.flatnonzero(batch.valid)
            if any(int(rows[i]) not in policy for i in valid):  # policy and KL rows in one forward
                device = dict(zip(arrays, put_batch(mesh, *arrays.values())))
                ref, kl_ref = (to_host(x) for x in kto_step.batch_reference_logps(
                    ref_params, ref_config, device, mesh=mesh, chunk_size=chunk_size))
                for i in valid:
                    policy.setdefault(int(rows[i]), float(ref[i]))
            else:  # every policy row seen (a later epoch): the KL rows only
                kl_arrays = put_batch(mesh, *(arrays[k] for k in kto_step.KL_ROW_KEYS))
                kl_ref = to_host(logprobs.batch_logps(ref_params, ref_config, *kl_arrays, mesh=mesh,
                                                      chunk_size=chunk_size))
            for i in valid:
                kl[(int(rows[i]), int(rows[batch.kl_partner[i]]))] = float(kl_ref[i])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return cls(policy, kl)

    def lookup(self, batch: KTOBatch) -> dict[str, np.ndarray]:
        """(B,) float32 `ref_logps` and `kl_ref_logps` for a batch (0 on padding rows)."""
        ref = np.zeros(len(batch.valid), np.float32)
        kl_ref = np.zeros(len(batch.valid), np.float32)
        rows = batch.row_index
        for i in np.flatnonzero(batch.valid):
            ref[i] = self.policy[int(rows[i])]
            kl_ref[i] = self.kl[(int(rows[i]), int(rows[batch.kl_partner[i]]))]
        return {"ref_logps": ref, "kl_ref_logps": kl_ref}

    def save(self, path: str, identity: Mapping[str, Any]) -> None:
        """Write the table and the identity of the run it belongs to (.npz, atomic, process 0 only)."""
        if not is_writer():
            return
        policy_rows = np.array(sorted(self.policy), np.int64)
        kl_pairs = np.array(sorted(self.kl), np.int64).reshape(-1, 2)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, identity=np.array(json.dumps(identity, sort_keys=True)), policy_rows=policy_rows,
                         policy_logps=np.array([self.policy[int(r)] for r in policy_rows], np.float32),
                         kl_pairs=kl_pairs,
                         kl_logps=np.array([self.kl[(int(a), int(b))] for a, b in kl_pairs], np.float32))

    @classmethod
    def load(cls, path: str, identity: Mapping[str, Any]) -> ReferenceTable | None:
        """The table at `path` if it exists and belongs to a run with this identity, else None."""
        if not storage.isfile(path):
            return None
        with np.load(storage.for_reading(path), allow_pickle=False) as data:
            if str(data["identity"]) != json.dumps(identity, sort_keys=True):
                log.warning("%s belongs to another configuration; recomputing the reference log-probs", path)
                return None
            policy = dict(zip(data["policy_rows"].tolist(), data["policy_logps"].astype(np.float32).tolist()))
            kl = {(int(a), int(b)): float(v) for (a, b), v in zip(data["kl_pairs"], data["kl_logps"])}
        return cls(policy, kl)

