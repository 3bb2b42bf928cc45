"""Training metrics output: `metrics.jsonl` and TensorBoard in the workdir, and a tqdm progress bar.

Only process 0 writes (`lasa_jax.infra.distributed.is_writer`); on other processes every method is a no-op. Each
JSONL line is one flat JSON object {"step": int, name: float, ...}, appended and flushed when written. On resume
from step s, lines with step > s (logged after the checkpoint the run resumes from) are removed first, atomically,
and TensorBoard events after s are purged (`purge_step`), so a resumed run's logs read as one uninterrupted run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


class MetricWriter:
    """Write metrics of a run that starts (or resumes) at `start_step` and ends at `total_steps`."""

    def __init__(self, workdir: str, *, start_step: int, total_steps: int, tensorboard: bool = True,
                 progress_bar: bool = True):
        self.enabled = is_writer()
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = self._tensorboard = self._bar = None
        if not self.enabled:
            return
        _truncate_after(self.path, start_step)
        self._file = storage.open_append(self.path)
        if tensorboard and not storage.is_url(workdir):  # tensorboardX writes local files; metrics.jsonl has all
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                              purge_step=start_step + 1 if start_step > 0 else None)
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="kto", unit="step", dynamic_ncols=True)

    def write(self, step: int, metrics: Mapping[str, float | int | None]) -> None:
        """Append one record (None values are left out) and show loss / margin on the progress bar."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        record.update({k: _json_number(v) for k, v in metrics.items() if v is not None})
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for name, value in record.items():
                if name != "step":
                    self._tensorboard.add_scalar(name, value, global_step=step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}",
                                  margin=f"{record.get('margin', float('nan')):.4f}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        """Move the progress bar."""
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._bar is not None:
            self._bar.close()
        self._file = self._tensorboard = self._bar = None


def read_metrics(path: str) -> list[dict]:
    """The records of a `metrics.jsonl` file, in order. A torn last line (the process was killed while writing
    it) is ignored; any other unreadable line is a ValueError."""
    with storage.open_file(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                break
            raise InputError(f"{path}: line {number} is not valid JSON ({e})") from None
    return records


def _truncate_after(path: str, step: int) -> None:
    """Drop records with step > `step` (and a torn last line) from an existing metrics file (atomic rewrite)."""
    if not storage.isfile(path):
        return
    with storage.open_file(path) as f:
        num_lines = sum(1 for line in f if line.strip())
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    if len(kept) != num_lines:
        atomic_write_text(path, "".join(json.dumps(r, allow_nan=True) + "\n" for r in kept))


def _json_number(value) -> float | int:
    """int for integers, else float (NaN/inf are written as NaN/Infinity, which `json.loads` reads back)."""
    if isinstance(value, (bool, int)):
        return int(value)
    return float(value)
