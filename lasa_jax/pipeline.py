"""The whole method in one run: locate -> SSI -> KTO (+ HF export) -> generate (baseline, prefix-only, LASA) ->
evaluate.

The stages are the rows of `STAGE_TABLE` (name, stage module, config section, generate mode); each module follows
the `lasa_jax.stage` contract, so the loop has no special case: `module.run(stage config, stage dir, mesh)` (the
same call as the stage's own script, with a stage config derived from the pipeline config, `configs/pipeline.py`);
a result that is not `completed` (KTO preempted) stops the pipeline; report.md joins each module's `report_lines`.
Each stage has its own subdirectory of the workdir:

    <workdir>/locate/             bottleneck.json, layers.csv, plots, activations.npz
    <workdir>/ssi/ssi/            the SSI artifact (config.json, params.safetensors, metrics.json)
    <workdir>/kto/                checkpoints/, metrics.jsonl, hf_export/ (the aligned model)
    <workdir>/generate_baseline/     generations.jsonl of the base model, no prefix
    <workdir>/generate_prefix_only/  generations.jsonl of the base model with SSI-gated prefix (ablation: no KTO)
    <workdir>/generate_lasa/         generations.jsonl of the aligned model with SSI-gated prefix
    <workdir>/evaluate/              report.md, report.json, asr_by_language.png, systems_by_language.png
    <workdir>/report.md           summary linking every artifact

A stage that finished writes `<stage dir>/stage_done.json` (a hash of its stage config, a run id, and the run ids of
the stages whose outputs it consumed) and is skipped on the next run; a crashed stage simply runs again (KTO
resumes from its last checkpoint, generation from its partial file). Rerunning with a changed stage config is
refused unless the stage is listed in `rerun`, which clears that stage's directory first. When a stage
runs again, every later stage that consumed its output runs again too (`stage_inputs`), so a report never mixes a
new SSI with old generations. The evaluate stage compares every system whose generate stage is in `stages` or has
finished in the workdir (so a run without generate_prefix_only compares baseline and LASA only). Every
process runs every stage; only process 0 writes markers and reports.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import importlib
import json
import logging
import os
import time
import uuid
from typing import Any

import ml_collections

from lasa_jax.infra import storage
from lasa_jax.infra.base_config import comma_list
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StageRow:
    """One pipeline stage: its name (= its directory under the workdir), its stage module (the `lasa_jax.stage`
    contract), the pipeline config section its stage config starts from, and its generate mode ("" otherwise)."""

    name: str
    module: str
    section: str
    mode: str = ""


STAGE_TABLE = (
    StageRow("locate", "lasa_jax.locate.stage", "locate"),
    StageRow("ssi", "lasa_jax.ssi.stage", "ssi"),
    StageRow("kto", "lasa_jax.kto.stage", "kto"),
    StageRow("generate_baseline", "lasa_jax.generate.stage", "generate", mode="baseline"),
    StageRow("generate_prefix_only", "lasa_jax.generate.stage", "generate", mode="prefix_only"),
    StageRow("generate_lasa", "lasa_jax.generate.stage", "generate", mode="lasa"),
    StageRow("evaluate", "lasa_jax.evaluate.stage", "evaluate"),
)
STAGES = tuple(row.name for row in STAGE_TABLE)
# system compared by the evaluate stage -> the generate stage that writes its generations (report column order)
GENERATE_STAGES = {row.mode: row.name for row in STAGE_TABLE if row.mode}
DONE_FILE = "stage_done.json"
SHARED_FIELDS = ("model_path", "mesh", "seed", "distributed", "attention_backend")


def stage_module(row: StageRow):
    """The stage module of a row, imported on first use."""
    return importlib.import_module(row.module)


def _stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
    """The stage configs of a pipeline config: shared fields copied in, paths between stages wired up."""
    out: dict[str, ml_collections.ConfigDict] = {}
    for row in STAGE_TABLE:
        c = copy.deepcopy(config[row.section])
        with c.unlocked():
            for field in SHARED_FIELDS:
                c[field] = copy.deepcopy(config[field])
            if "template_kwargs" in c:
                c.template_kwargs = config.template_kwargs
            if row.mode:
                c.mode = row.mode
        out[row.name] = c
    base, d = config.model_path, lambda s: _stage_dir(workdir, s)
    # the pipeline's data_root is the one shared-data folder of every stage
    with out["locate"].unlocked():
        out["locate"].data.root = config.data_root
    with out["ssi"].unlocked():
        out["ssi"].residual_index = int(config.residual_index)
        out["ssi"].locate_workdir = d("locate") if config.residual_index < 0 else ""
        out["ssi"].data.root = config.data_root
    ssi_dir = os.path.join(d("ssi"), "ssi")
    kto_export = os.path.join(d("kto"), "hf_export")
    with out["kto"].unlocked():
        out["kto"].export.enabled = True
        out["kto"].export.path = kto_export
        if out["kto"].labels.mode == "ssi":
            out["kto"].labels.ssi_dir = ssi_dir
        out["kto"].data.root = config.data_root
        if out["kto"].data.format == "polyrefuse_completions" and not out["kto"].data.path:
            out["kto"].data.path = os.path.join(config.data_root, "polyrefuse_completions")
    for mode, stage in GENERATE_STAGES.items():
        g = out[stage]
        with g.unlocked():
            g.data_root = config.data_root
            if mode == "lasa":
                g.model_path, g.base_model_path, g.ssi_dir, g.tokenizer_path = kto_export, base, ssi_dir, base
            else:  # prefix_only: the base model generates; baseline: it records each prompt's SSI score only
                g.base_model_path, g.ssi_dir = base, ssi_dir
    stages = comma_list(config.stages)
    with out["evaluate"].unlocked():
        out["evaluate"].data_root = config.data_root  # its polyrefuse_completions/ trains the calibrated judge
        for system, stage in GENERATE_STAGES.items():
            compared = stage in stages or stage_status(workdir, stage) is not None
            out["evaluate"][f"{system}_generations"] = (os.path.join(d(stage), out[stage].output) if compared
                                                        else "")
        if "utility" in out["evaluate"]:  # capability of the base model and of the KTO export
            out["evaluate"].utility.data_root = config.data_root
            out["evaluate"].utility.models.baseline, out["evaluate"].utility.models.lasa = base, kto_export
    return out


def stage_inputs(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
    """For each stage, the earlier stages whose outputs it reads (under this pipeline config)."""
    return {
        "locate": (),
        "ssi": ("locate",) if config.residual_index < 0 else (),
        "kto": ("ssi",) if config.kto.labels.mode == "ssi" else (),
        "generate_baseline": ("ssi",),  # the baseline records each prompt's SSI score
        "generate_prefix_only": ("ssi",),  # the base model generates: no KTO
        "generate_lasa": ("ssi", "kto"),
        "evaluate": tuple(GENERATE_STAGES.values()),
    }


def _barrier(name: str) -> None:
    """All processes reach this point before any goes on (markers written by process 0 are then visible)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def config_hash(config: ml_collections.ConfigDict) -> str:
    return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()[:16]


def stage_status(workdir: str, stage: str) -> dict | None:
    path = os.path.join(_stage_dir(workdir, stage), DONE_FILE)
    return read_json(path, "stage marker") if storage.isfile(path) else None


def stage_decision(workdir: str, stage: str, digest: str, consumed: dict[str, str | None],
                   rerun: bool) -> tuple[str, str]:
    """("skip" | "run" | "clear", reason) for `stage`: skip a finished stage whose config hash and consumed input
    run ids are unchanged; clear and run it again when asked (`rerun`) or when an input stage ran (again) since,
    whatever its config (its old outputs are stale either way); run it (continuing whatever it left) when it has not
    finished. A finished stage with another config and unchanged inputs -> ValueError.
    """
    status = stage_status(workdir, stage)
    if rerun:
        return "clear", f"{config_field('rerun')} lists {stage}"
    if status is None:
        return "run", "not finished"
    recorded = status.get("inputs", {})
    changed = [up for up in consumed if recorded.get(up) != consumed[up]]
    if changed:
        return "clear", f"{stage}'s input stage(s) {', '.join(changed)} ran again"
    if status.get("config_hash") != digest:
        raise InputError(f"pipeline stage {stage!r} already finished in {_stage_dir(workdir, stage)} with a "
                         f"different configuration (hash {status.get('config_hash')} != {digest}); add it to "
                         f"{config_field('rerun')} to run it again (its directory is cleared) or use another workdir")
    return "skip", f"already done ({status.get('finished_at')})"


def _selected_stages(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(stages to run, stages to rerun) of a pipeline config, validated (InputError)."""
    stages = comma_list(config.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise InputError(f"{config_field('stages')}: unknown stage(s) {unknown}; expected a comma-separated subset of "
                         f"{STAGES}")
    rerun = comma_list(config.rerun)
    if [s for s in rerun if s not in STAGES]:
        raise InputError(f"{config_field('rerun')}: expected a comma-separated subset of {STAGES}, got "
                         f"{config.rerun!r}")
    if not config.model_path:
        raise InputError(f"{config_field('model_path')} is required (the base model: a local Hugging Face directory "
                         "or hub id)")
    return stages, rerun


def _mark_done(stage_dir: str, stage: str, digest: str, consumed: dict[str, str | None], seconds: float) -> None:
    """`<stage dir>/stage_done.json` (process 0): config hash, a new run id, the consumed input run ids."""
    if is_writer():
        atomic_write_json(os.path.join(stage_dir, DONE_FILE), {
            "stage": stage, "config_hash": digest, "run_id": uuid.uuid4().hex, "inputs": consumed,
            "seconds": round(seconds, 1),
            "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict[str, Any]:
    """Run (or continue) every stage in `config.stages`; returns {stage: "done" | "skipped" | why it stopped}."""
    stages, rerun = _selected_stages(config)
    configs, inputs = stage_configs(config, workdir), stage_inputs(config)
    _check_memory_plan(config, stages)
    outcome: dict[str, Any] = {}
    for row in (row for row in STAGE_TABLE if row.name in stages):
        stage, stage_dir, stage_config = row.name, _stage_dir(workdir, row.name), configs[row.name]
        digest = config_hash(stage_config)
        consumed = {up: (stage_status(workdir, up) or {}).get("run_id") for up in inputs[stage]}
        action, reason = stage_decision(workdir, stage, digest, consumed, stage in rerun)
        if action == "clear" and storage.isdir(stage_dir):
            log.info("pipeline: %s: clearing %s", reason, stage_dir)
            if is_writer():
                storage.rmtree(stage_dir)
        _barrier(f"pipeline-{stage}-start")
        if action == "skip":
            log.info("pipeline: %s %s, skipped", stage, reason)
            outcome[stage] = "skipped"
            continue
        log.info("pipeline: running %s in %s", stage, stage_dir)
        if is_writer():
            storage.makedirs(stage_dir)
            atomic_write_json(os.path.join(stage_dir, "config.json"), json.loads(stage_config.to_json_best_effort()))
        start = time.perf_counter()
        result = stage_module(row).run(stage_config, stage_dir, mesh)
        if not result.completed:
            log.warning("pipeline: %s stopped (%s; %s); rerun the same command to continue it", stage, result.status,
                        dict(result.summary))
            outcome[stage] = result.status
            break
        _mark_done(stage_dir, stage, digest, consumed, time.perf_counter() - start)
        _barrier(f"pipeline-{stage}-done")
        outcome[stage] = "done"
    if is_writer():
        write_summary(workdir, config)
    return outcome


def _check_memory_plan(config: ml_collections.ConfigDict, stages: list[str]) -> None:
    """Stop before the first stage (InputError) when the KTO or generation stages in `stages` do not fit the
    preset's memory (`lasa_jax.memory_plan.check_pipeline`); the model's shapes come from `model_path`'s
    config.json or the paper model's architecture (no weights are read). Skipped without a known preset or shapes;
    `config.memory_plan` "warn" logs instead of raising, "off" skips it."""
    from lasa_jax.memory_check import check_pipeline
    from lasa_jax.models.config import ModelConfig
    from lasa_jax.presets import PAPER_MODELS, TPU_PRESETS

    preset, mode = config.get("preset", ""), config.get("memory_plan", "check")
    if mode not in ("check", "warn", "off"):
        raise InputError(f"{config_field('memory_plan')}: expected check, warn or off, got {mode!r}")
    if mode == "off" or (preset != "cpu" and preset not in TPU_PRESETS):
        return
    if storage.isfile(os.path.join(config.model_path, "config.json")):
        model_config = ModelConfig.from_pretrained(config.model_path)
    elif config.get("paper_model") in PAPER_MODELS:
        model_config = PAPER_MODELS[config.paper_model].model_config()
    else:
        log.info("pipeline: no config.json at %s and no paper model: memory plan skipped", config.model_path)
        return
    try:
        plans = check_pipeline(config, model_config, stages)
    except InputError as e:
        if mode == "check":
            raise
        log.warning("pipeline: memory plan (%s=warn): %s", config_field("memory_plan"), e)
        return
    for plan in plans:
        log.info("pipeline: memory plan: %s", plan.describe())


def write_summary(workdir: str, config: ml_collections.ConfigDict) -> str:
    """`<workdir>/report.md`: each stage's state and its module's `report_lines` (links, headline numbers)."""
    lines = ["# LASA pipeline report", "", f"Base model: `{config.model_path}`", ""]
    if config.get("report_note"):
        lines += [str(config.report_note), ""]
    for row in STAGE_TABLE:
        status = stage_status(workdir, row.name)
        lines.append(f"## {row.name}: " + (f"done in {status['seconds']:.0f} s" if status else "not run"))
        lines += stage_module(row).report_lines(_stage_dir(workdir, row.name))
        lines.append("")
    path = os.path.join(workdir, "report.md")
    atomic_write_text(path, "\n".join(lines))
    return path


