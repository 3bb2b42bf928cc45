"""The KTO stage's contract (`lasa_jax.stage`): settings of the kto config section, run, report lines.

    NAME = "kto"
    settings(config) -> KTOSettings                 validation of configs/kto.py (`lasa_jax.kto.settings`)
    run(config | settings, workdir, mesh=None) -> StageResult
        status "completed" or the stop reason ("preempted": SIGTERM, checkpoint saved, rerun to continue);
        details: the `TrainResult`; outputs: "checkpoints", "metrics", "run_summary", "hf_export" (when exported)
    report_lines(stage_dir) -> list[str]            from <stage_dir>/run_summary.json, with links

A NaN loss raises `NonFiniteLossError` (no StageResult), as `train_kto` does.
"""
from __future__ import annotations

import os

from lasa_jax.infra import storage
from lasa_jax.infra.storage import read_json
from lasa_jax.kto.metric_writer import METRICS_FILE
from lasa_jax.kto.settings import KTOSettings, read_settings
from lasa_jax.kto.trainer import CHECKPOINT_DIR, RUN_SUMMARY_FILE, train_kto
from lasa_jax.stage import StageResult, as_settings, report_link

NAME = "kto"


def settings(config) -> KTOSettings:
    """The validated settings of a kto config section (configs/kto.py)."""
    return read_settings(config)


def run(config_or_settings, workdir: str, mesh=None) -> StageResult:
    """Train (or resume) KTO in `workdir` on `mesh` (None: `lasa_jax.sharding.make_mesh()` over all devices)."""
    kto_settings = as_settings(config_or_settings, KTOSettings, read_settings)
    if mesh is None:
        from lasa_jax.sharding import make_mesh

        mesh = make_mesh()
    result = train_kto(kto_settings, workdir, mesh)
    outputs = {"checkpoints": os.path.join(workdir, CHECKPOINT_DIR), "metrics": os.path.join(workdir, METRICS_FILE),
               "run_summary": os.path.join(workdir, RUN_SUMMARY_FILE)}
    if result.export_dir:
        outputs["hf_export"] = result.export_dir
    summary = {"step": result.step, "total_steps": result.total_steps, "resumed_from": result.resumed_from}
    return StageResult(stage=NAME, status=result.status, outputs=outputs, summary=summary, details=result)


def report_lines(stage_dir: str) -> list[str]:
    """Markdown lines for the pipeline report: "KTO {status} at step {step} of {total_steps}." (when the run wrote
    its summary) and links to metrics.jsonl and the exported model, relative to the stage's parent directory
    (the pipeline workdir; "(missing)" when absent)."""
    lines = []
    summary_path = os.path.join(stage_dir, RUN_SUMMARY_FILE)
    if storage.isfile(summary_path):
        run_summary = read_json(summary_path, "KTO run summary")
        lines.append(f"KTO {run_summary.get('status')} at step {run_summary.get('step')} of "
                     f"{run_summary.get('total_steps')}.")
    lines.append(f"- {report_link(stage_dir, METRICS_FILE)}, aligned model {report_link(stage_dir, 'hf_export')}")
    return lines
