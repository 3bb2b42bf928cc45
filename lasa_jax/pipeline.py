"""The whole method in one run: locate -> SSI -> KTO (+ HF export) -> generate (baseline, prefix-only, LASA) ->
evaluate.

Each stage runs the same library function as its own script, with a stage config derived from the pipeline config
(`configs/pipeline.py`), in its own subdirectory of the workdir:

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
refused unless the stage is listed in `--config.rerun`, which clears that stage's directory first. When a stage
runs again, every later stage that consumed its output runs again too (`stage_inputs`), so a report never mixes a
new SSI with old generations. The evaluate stage compares every system whose generate stage is in `--config.stages`
or has finished in the workdir (so a run without generate_prefix_only compares baseline and LASA only). Every
process runs every stage; only process 0 writes markers and reports.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import ml_collections

from lasa_jax import io_utils
from lasa_jax.errors import InputError
from lasa_jax.io_utils import atomic_write_json, atomic_write_text
from lasa_jax.runtime import is_writer

log = logging.getLogger(__name__)

STAGES = ("locate", "ssi", "kto", "generate_baseline", "generate_prefix_only", "generate_lasa", "evaluate")
# system compared by the evaluate stage -> the generate stage that writes its generations (report column order)
GENERATE_STAGES = {"baseline": "generate_baseline", "prefix_only": "generate_prefix_only", "lasa": "generate_lasa"}
DONE_FILE = "stage_done.json"
SHARED_FIELDS = ("model_path", "mesh", "seed", "distributed")


def _comma(value: str) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage)


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
    """The stage configs of a pipeline config: shared fields copied in, paths between stages wired up."""
    out: dict[str, ml_collections.ConfigDict] = {}
    for stage, key in (("locate", "locate"), ("ssi", "ssi"), ("kto", "kto"), ("generate_baseline", "generate"),
                       ("generate_prefix_only", "generate"), ("generate_lasa", "generate"), ("evaluate", "evaluate")):
        c = copy.deepcopy(config[key])
        with c.unlocked():
            for field in SHARED_FIELDS:
                c[field] = copy.deepcopy(config[field])
            if "template_kwargs" in c:
                c.template_kwargs = config.template_kwargs
        out[stage] = c
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
            g.mode = mode
            g.data_root = config.data_root
            if mode == "lasa":
                g.model_path, g.base_model_path, g.ssi_dir, g.tokenizer_path = kto_export, base, ssi_dir, base
            else:  # prefix_only: the base model generates; baseline: it records each prompt's SSI score only
                g.base_model_path, g.ssi_dir = base, ssi_dir
    stages = _comma(config.stages)
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


def _stage_functions() -> dict[str, Callable]:
    from lasa_jax.evaluate.runner import run_evaluation
    from lasa_jax.inference import run_generation
    from lasa_jax.locate import run_locate
    from lasa_jax.ssi.pipeline import train_ssi
    from lasa_jax.train.kto_trainer import train_kto

    return {"locate": lambda c, w, m: run_locate(c, w, mesh=m), "ssi": train_ssi, "kto": train_kto,
            "generate_baseline": run_generation, "generate_prefix_only": run_generation,
            "generate_lasa": run_generation, "evaluate": run_evaluation}


def stage_status(workdir: str, stage: str) -> dict | None:
    path = os.path.join(_stage_dir(workdir, stage), DONE_FILE)
    if not io_utils.isfile(path):
        return None
    with io_utils.open_file(path) as f:
        return json.load(f)


def stage_decision(workdir: str, stage: str, digest: str, consumed: dict[str, str | None],
                   rerun: bool) -> tuple[str, str]:
    """("skip" | "run" | "clear", reason) for `stage`: skip a finished stage whose config hash and consumed input
    run ids are unchanged; clear and run it again when asked (`rerun`) or when an input stage ran (again) since,
    whatever its config (its old outputs are stale either way); run it (continuing whatever it left) when it has not
    finished. A finished stage with another config and unchanged inputs -> ValueError.
    """
    status = stage_status(workdir, stage)
    if rerun:
        return "clear", f"--config.rerun={stage}"
    if status is None:
        return "run", "not finished"
    recorded = status.get("inputs", {})
    changed = [up for up in consumed if recorded.get(up) != consumed[up]]
    if changed:
        return "clear", f"{stage}'s input stage(s) {', '.join(changed)} ran again"
    if status.get("config_hash") != digest:
        raise InputError(f"pipeline stage {stage!r} already finished in {_stage_dir(workdir, stage)} with a "
                         f"different configuration (hash {status.get('config_hash')} != {digest}); add it to "
                         f"--config.rerun to run it again (its directory is cleared) or use another workdir")
    return "skip", f"already done ({status.get('finished_at')})"


def run_pipeline(config: ml_collections.ConfigDict, workdir: str, mesh=None) -> dict[str, Any]:
    """Run (or continue) every stage in `config.stages`; returns {stage: "done" | "skipped"}."""
    stages = _comma(config.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise InputError(f"--config.stages: unknown stage(s) {unknown}; expected a comma-separated subset of {STAGES}")
    rerun = _comma(config.rerun)
    if [s for s in rerun if s not in STAGES]:
        raise InputError(f"--config.rerun: expected a comma-separated subset of {STAGES}, got {config.rerun!r}")
    if not config.model_path:
        raise InputError("--config.model_path is required (the base model: a local Hugging Face directory or hub id)")
    configs = stage_configs(config, workdir)
    inputs = stage_inputs(config)
    _check_memory_plan(config, stages)
    functions = _stage_functions()
    outcome: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        stage_dir, stage_config = _stage_dir(workdir, stage), configs[stage]
        digest = config_hash(stage_config)
        consumed = {up: (stage_status(workdir, up) or {}).get("run_id") for up in inputs[stage]}
        action, reason = stage_decision(workdir, stage, digest, consumed, stage in rerun)
        if action == "clear" and io_utils.isdir(stage_dir):
            log.info("pipeline: %s: clearing %s", reason, stage_dir)
            if is_writer():
                io_utils.rmtree(stage_dir)
        _barrier(f"pipeline-{stage}-start")
        if action == "skip":
            log.info("pipeline: %s %s, skipped", stage, reason)
            outcome[stage] = "skipped"
            continue
        log.info("pipeline: running %s in %s", stage, stage_dir)
        if is_writer():
            io_utils.makedirs(stage_dir)
            atomic_write_json(os.path.join(stage_dir, "config.json"), json.loads(stage_config.to_json_best_effort()))
        start = time.perf_counter()
        result = functions[stage](stage_config, stage_dir, mesh)
        if stage == "kto" and result.status != "completed":
            log.warning("pipeline: kto stopped (%s) at step %d; rerun the same command to continue from its last "
                        "checkpoint", result.status, result.step)
            outcome[stage] = result.status
            break
        if is_writer():
            atomic_write_json(os.path.join(stage_dir, DONE_FILE), {
                "stage": stage, "config_hash": digest, "run_id": uuid.uuid4().hex, "inputs": consumed,
                "seconds": round(time.perf_counter() - start, 1),
                "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")})
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
    from lasa_jax.config import ModelConfig
    from lasa_jax.errors import InputError
    from lasa_jax.memory_plan import check_pipeline
    from lasa_jax.presets import PAPER_MODELS, TPU_PRESETS

    preset, mode = config.get("preset", ""), config.get("memory_plan", "check")
    if mode not in ("check", "warn", "off"):
        raise InputError(f"--config.memory_plan: expected check, warn or off, got {mode!r}")
    if mode == "off" or (preset != "cpu" and preset not in TPU_PRESETS):
        return
    if io_utils.isfile(os.path.join(config.model_path, "config.json")):
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
        log.warning("pipeline: memory plan (--config.memory_plan=warn): %s", e)
        return
    for plan in plans:
        log.info("pipeline: memory plan: %s", plan.describe())


def _read_json(path: str) -> Any:
    if not io_utils.isfile(path):
        return None
    with io_utils.open_file(path) as f:
        return json.load(f)


def _locate_summary_lines(locate_dir: str) -> list[str]:
    """The report's Locate lines: k* with its interval and pick share, the verdict, the probe AUROC."""
    from lasa_jax.bottleneck import BOTTLENECK_FILE, load_bottleneck, probe_line

    if not io_utils.isfile(os.path.join(locate_dir, BOTTLENECK_FILE)):
        return []
    b = load_bottleneck(locate_dir)
    best = b["layers"][b["best_layer"]]
    lines = [f"Semantic bottleneck k* = {b['best_layer']} of L = {b['num_layers']} (S_sem - S_lang = "
             f"{best['diff']:.3f}, 95% interval [{best['diff_lo']:.3f}, {best['diff_hi']:.3f}], "
             f"picked in {100 * best['pick_share']:.0f}% of resamples); {b['num_points']} texts, "
             f"{b['num_groups']} groups, languages {', '.join(b['languages'])}."]
    if b["bottleneck_found"] is False:
        lines += ["", f"**No semantic bottleneck found**: {b['reason']}. Later stages with residual_index=-1 used "
                      f"k* = {b['best_layer']} anyway."]
    if probe_line(b):
        lines += ["", f"Harmful-vs-benign probe (grouped validation split): {probe_line(b)}."]
    return lines


def write_summary(workdir: str, config: ml_collections.ConfigDict) -> str:
    """`<workdir>/report.md`: what each stage produced, with links (relative paths) and headline numbers."""
    lines = ["# LASA pipeline report", "", f"Base model: `{config.model_path}`", ""]
    if config.get("report_note"):
        lines += [str(config.report_note), ""]

    def link(rel: str, text: str | None = None) -> str:
        return f"[{text or rel}]({rel})" if io_utils.exists(os.path.join(workdir, rel)) else f"{text or rel} (missing)"

    for stage in STAGES:
        status = stage_status(workdir, stage)
        done = f"done in {status['seconds']:.0f} s" if status else "not run"
        lines.append(f"## {stage}: {done}")
        if stage == "locate":
            lines += _locate_summary_lines(os.path.join(workdir, "locate"))
            lines += [f"- {link('locate/bottleneck.json')}, {link('locate/layers.csv')}, "
                      f"{link('locate/bottleneck_layers.png')}"]
        elif stage == "ssi":
            ssi_config = _read_json(os.path.join(workdir, "ssi", "ssi", "config.json"))
            if ssi_config:
                lines.append(f"SSI at residual index {ssi_config['residual_index']}, threshold "
                             f"{ssi_config['threshold']:.4f} ({ssi_config.get('threshold_rule', '')}), hidden dims "
                             f"{ssi_config['hidden_dims']}, trained on {', '.join(ssi_config['train_languages'])}.")
            lines += [f"- {link('ssi/ssi/config.json')}, {link('ssi/ssi/metrics.json')}, "
                      f"{link('ssi/ssi/metrics_per_language.png')}"]
        elif stage == "kto":
            run = _read_json(os.path.join(workdir, "kto", "run_summary.json"))
            if run:
                lines.append(f"KTO {run.get('status')} at step {run.get('step')} of {run.get('total_steps')}.")
            lines += [f"- {link('kto/metrics.jsonl')}, aligned model {link('kto/hf_export')}"]
        elif stage.startswith("generate"):
            meta = _read_json(os.path.join(workdir, stage, "generations.jsonl.meta.json"))
            if meta and meta.get("summary"):
                s = meta["summary"]
                lines.append(f"{s['prompts']} prompts, conditional prefix used on {s['prefix_used']}"
                             + (f" (SSI threshold {_ssi_threshold_text(meta)} at residual index "
                                f"{meta['ssi_residual_index']})" if meta.get("ssi_threshold") is not None else "")
                             + f"; {s['finished_at_eos']} finished at EOS.")
            lines += [f"- {link(stage + '/generations.jsonl')}"]
        elif stage == "evaluate":
            report = _read_json(os.path.join(workdir, "evaluate", "report.json"))
            if report:
                lines += headline_lines(report)
            lines += [f"- {link('evaluate/report.md')}, {link('evaluate/report.json')}, "
                      f"{link('evaluate/asr_by_language.png')}, {link('evaluate/systems_by_language.png')}"]
        lines.append("")
    path = os.path.join(workdir, "report.md")
    atomic_write_text(path, "\n".join(lines))
    return path


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def headline_lines(report: dict) -> list[str]:
    """The summary's headline numbers, averaged over languages: ASR and benign refusal rate per system (baseline,
    prefix_only, lasa, ...) and the SSI's flag rates, from report.json's "comparison" part (ASR only for older
    reports without it)."""
    comp = report.get("comparison")
    if not comp:
        parts = [f"{system} {_percent(summary.get('macro_asr'))}"
                 for system, summary in report.get("asr", {}).get("systems", {}).items()]
        return ["Average ASR over languages: " + ", ".join(parts) + "."] if parts else []
    lines = []
    for metric in comp["metrics"].values():
        parts = [f"{system} **{_percent(metric['systems'][system]['average'])}**" for system in comp["systems"]
                 if system in metric["systems"]]
        lines.append(f"- Average {metric['label']} over languages: " + ", ".join(parts) + ".")
    ssi = comp.get("ssi")
    if ssi:
        lines.append(f"- The SSI flagged {_percent(ssi['harmful']['average'])} of harmful and "
                     f"{_percent(ssi['benign']['average'])} of benign prompts (averaged over languages).")
    return lines


def _ssi_threshold_text(meta: dict) -> str:
    """The SSI decision threshold of a generation meta record: the logit it compares (and its probability)."""
    if meta.get("ssi_threshold_logit") is not None:
        return f"logit {meta['ssi_threshold_logit']:.3f} (p {meta['ssi_threshold']:.4f})"
    return f"p {meta['ssi_threshold']:.4f}"
