"""The KTO step loop: batches -> jit steps -> metrics (throughput, MFU) -> periodic checkpoints, SIGTERM, NaN stop.

`TrainLoop(spec, ...).run(state, batches)` runs steps start_step + 1 .. total_steps. Metrics of step s are read
after step s + 1 is dispatched (the device never waits for the host), except at checkpoint steps, where the step's
loss is checked before its state is saved. SIGTERM: the current step finishes, a checkpoint is saved and the loop
returns "preempted". A NaN/inf loss or gradient norm raises `NonFiniteLossError` (the bad state is never saved).
Each logged record averages the device metrics over the steps since the last one (`window_record`).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import DataPosition, KTOBatch
from lasa_jax.kto.buckets import trimmed_arrays
from lasa_jax.kto.metric_writer import MetricWriter
from lasa_jax.kto.preemption import PreemptionSignal
from lasa_jax.models.config import ModelConfig
from lasa_jax.sharding import put_batch

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm of update `step` was NaN/inf; the run stopped without saving that state."""

    def __init__(self, step: int, last_checkpoint_step: int | None, metrics: Mapping[str, float]):
        self.step = step
        self.last_checkpoint_step = last_checkpoint_step
        super().__init__(f"non-finite KTO loss at step {step} (loss={metrics.get('loss')}, grad_norm="
                         f"{metrics.get('grad_norm')}); training stopped. Last good checkpoint: "
                         f"{'none' if last_checkpoint_step is None else f'step {last_checkpoint_step}'}")


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """What the loop needs besides the state: step range, logging/checkpoint cadence, FLOP accounting inputs."""

    start_step: int
    total_steps: int
    num_examples: int
    identity: Mapping[str, Any]
    policy_config: ModelConfig
    online_reference: bool
    log_every_steps: int = 10
    checkpoint_every_steps: int = 100
    buckets: tuple[int, ...] | None = None
    peak_flops_per_device: float | None = None
    tensorboard: bool = True
    progress_bar: bool = True


class TrainLoop:
    """One run of the step loop (module docstring). `step_fn(state, device_batch, ref_params)`; `table`: the
    precomputed `ReferenceTable` (None online); `checkpointer`: a `lasa_jax.kto.checkpoint.Checkpointer`."""

    def __init__(self, spec: LoopSpec, workdir: str, mesh, step_fn: Callable, checkpointer, *, table=None,
                 ref_params: Any = None):
        self.spec, self.mesh, self.step_fn, self.checkpointer = spec, mesh, step_fn, checkpointer
        self.table, self.ref_params = table, ref_params
        self.writer = MetricWriter(workdir, start_step=spec.start_step, total_steps=spec.total_steps,
                                   tensorboard=spec.tensorboard, progress_bar=spec.progress_bar)
        self.window: list[tuple[dict, dict, float | None]] = []  # (device metrics, host stats, seconds)
        self.last_time: float | None = None
        from lasa_jax.presets import device_peak_flops

        self.peak = spec.peak_flops_per_device or device_peak_flops(jax.devices()[0].device_kind)

    def run(self, state: Any, batches: Iterator[tuple[KTOBatch, DataPosition]]) -> tuple[str, Any, int]:
        """Returns (status "completed" | "preempted", final state, last step)."""
        spec = self.spec
        pending, step = None, spec.start_step
        try:
            with PreemptionSignal() as preemption:
                for step in range(spec.start_step + 1, spec.total_steps + 1):
                    batch, position = next(batches)
                    state, metrics = self.step_fn(state, self.device_batch(batch), self.ref_params)
                    if pending is not None:
                        self.finish(*pending)
                    pending = (step, metrics, self.batch_stats(batch, position))
                    preempted = preemption.any_process()
                    every = spec.checkpoint_every_steps
                    if (every > 0 and step % every == 0) or step == spec.total_steps or preempted:
                        self.finish(*pending)
                        pending = None
                        self.save(step, position, state)
                    if preempted:
                        log.warning("SIGTERM: saved checkpoint step %d; rerun with the same workdir to resume", step)
                        return "preempted", state, step
                if pending is not None:
                    self.finish(*pending)
        finally:
            self.writer.close()
        return "completed", state, step

    def device_batch(self, batch: KTOBatch) -> dict[str, jax.Array]:
        """The batch trimmed to its length bucket (+ precomputed reference log-probs), sharded on the mesh."""
        arrays = trimmed_arrays(batch, self.spec.buckets)
        if self.table is not None:
            arrays.update(self.table.lookup(batch))
        return dict(zip(arrays, put_batch(self.mesh, *arrays.values())))

    def finish(self, step: int, metrics, stats) -> None:
        """Fetch step `step`'s metrics, stop on NaN, log every `log_every_steps`."""
        spec = self.spec
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        seconds = None if self.last_time is None else now - self.last_time
        self.last_time = now
        self.window.append((host, stats, seconds))
        if host["finite"] != 1.0:
            self.writer.write(step, host)
            self.checkpointer.wait_until_finished()
            raise NonFiniteLossError(step, self.checkpointer.latest_step(), host)
        self.writer.advance()
        if step % spec.log_every_steps == 0 or step == spec.total_steps or step == spec.start_step + 1:
            self.writer.write(step, window_record(self.window, self.mesh.devices.size, self.peak))
            self.window.clear()

    def save(self, step: int, position: DataPosition, state: Any) -> None:
        spec = self.spec
        self.checkpointer.save(step, state, {"step": step, "data_position": position.to_dict(),
                                             "identity": spec.identity, "total_steps": spec.total_steps,
                                             "time": time.time()})
        self.last_time = None  # the save is not part of any step's time

    def batch_stats(self, batch: KTOBatch, position: DataPosition) -> dict[str, float]:
        """Host-side numbers of a step: real tokens, FLOPs (real lengths), KL-row notes, fractional epoch."""
        valid = batch.valid
        policy_lengths = batch.attention_mask.sum(axis=1)[valid]
        kl_lengths = batch.kl_attention_mask.sum(axis=1)[valid]
        useful, total = kto_step.step_flops(self.spec.policy_config, policy_lengths, kl_lengths,
                                            self.spec.online_reference)
        return {"tokens": float(policy_lengths.sum()), "flops_policy": useful, "flops_total": total,
                "kl_truncated": float(batch.num_kl_truncated), "kl_same_group": float(batch.num_kl_same_group),
                "epoch": position.epoch + position.index / self.spec.num_examples}


def window_record(window, num_devices: int, peak_flops_per_device: float | None) -> dict[str, float | None]:
    """Mean of each device metric over the window; throughput over its timed steps."""
    record: dict[str, float | None] = {}
    for name in window[0][0]:
        if name != "finite":
            record[name] = float(np.mean([host[name] for host, _, _ in window]))
    record["learning_rate"] = window[-1][0]["learning_rate"]
    record["epoch"] = window[-1][1]["epoch"]
    record["kl_rows_truncated"] = float(sum(stats["kl_truncated"] for _, stats, _ in window))
    record["kl_rows_same_group"] = float(sum(stats["kl_same_group"] for _, stats, _ in window))
    timed = [(stats, seconds) for _, stats, seconds in window if seconds is not None]
    if timed:
        seconds = sum(s for _, s in timed)
        record["step_time_s"] = seconds / len(timed)
        record["tokens_per_s"] = sum(stats["tokens"] for stats, _ in timed) / seconds
        for kind in ("policy", "total"):
            flops_per_s = sum(stats[f"flops_{kind}"] for stats, _ in timed) / seconds
            record[f"flops_per_s_{kind}"] = flops_per_s
            record[f"mfu_{kind}"] = kto_step.model_flops_utilisation(flops_per_s, peak_flops_per_device, num_devices)
    return record
