"""The SSI stage (Stage 2, `python -m lasa_jax.scripts.train_ssi`, `configs/ssi.py`): data -> cached features ->
training -> threshold -> metrics -> the SSI artifact. Stage contract: `lasa_jax.stage`.

Data: `lasa_jax.ssi.data` (train/val splits, evaluation sets, the held-out guard, the evaluation-only MultiJail set).
The residual index is `residual_index`, or (when < 0) k* of the Locate workdir (`resolve_residual_index`).

Output: `<workdir>/ssi/` (the artifact, `lasa_jax.ssi.artifact`) with metrics.json holding the data summary, the
training history, both thresholds (chosen on logits) with their validation metrics, and per-language metrics of
every evaluation set at the chosen threshold (and at the accuracy-optimal one), "multijail_harmful" included
(listed under "held_out_evaluation", embedded and scored only once the SSI is final); features are cached in
`<workdir>/feature_cache/` (or `feature_cache_dir`). A finished artifact written by the same configuration (its
`run_config_hash`) is returned as is; another existing artifact needs `overwrite`.

`settings` (lasa_jax/ssi/settings.py) is the only reader of the config section; everything here takes its
`SSISettings`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import time
from typing import Any

import numpy as np

from lasa_jax.data.labelled import split_summary
from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import read_json
from lasa_jax.locate.report import load_bottleneck, verdict_line
from lasa_jax.models.loading import load_model, load_tokenizer
from lasa_jax.ssi.artifact import ARTIFACT_SUBDIR, METRICS_FILE, SSI, SSIConfig, save_ssi
from lasa_jax.ssi.data import SSIData, load_ssi_data
from lasa_jax.ssi.features import prompt_features, tokenization_fingerprint
from lasa_jax.ssi.metrics import (
    DECISION_RULE,
    THRESHOLD_RULES,
    choose_threshold,
    classification_metrics,
    evaluate_by_language,
)
from lasa_jax.ssi.mlp import resolve_hidden_dims
from lasa_jax.ssi.settings import SSISettings, settings
from lasa_jax.ssi.training import train_classifier
from lasa_jax.stage import StageResult, as_settings, report_link

log = logging.getLogger(__name__)
NAME = "ssi"


def resolve_residual_index(residual_index: int, locate_workdir: str, model=None, model_path: str = "") -> int:
    """`residual_index`, or (when < 0) `best_layer` of the Locate workdir's bottleneck.json, logged with the Locate
    verdict (a warning when Locate found no semantic bottleneck) and the probe AUROC there.

    With `model` (loaded from `model_path`), a located layer must come from that model: the report's number of
    layers and (when recorded) model fingerprint must match, else InputError naming both values.
    """
    if residual_index >= 0:
        return int(residual_index)
    if not locate_workdir:
        raise InputError(f"set {config_field('residual_index')} to K or {config_field('locate_workdir')} to a Locate "
                         "workdir (with bottleneck.json) to read k* from")
    report = load_bottleneck(locate_workdir)
    if model is not None:
        where = f"{locate_workdir}/bottleneck.json"
        if report["num_layers"] != model.config.num_layers:
            raise InputError(f"{where} was located on a model with {report['num_layers']} layers, but "
                             f"{config_field('model_path')} has {model.config.num_layers}")
        located_on = (report.get("model") or {}).get("fingerprint")
        if located_on and model.fingerprint and located_on != model.fingerprint:
            raise InputError(f"{where} was located on model {located_on} ({report['model'].get('path')}), but "
                             f"{config_field('model_path')}={model_path} is model {model.fingerprint}")
    if report["bottleneck_found"] is False:
        log.warning("residual index %d = best_layer of %s, used because %s=-1, but %s; set %s to K to train on "
                    "another layer", report["best_layer"], locate_workdir, config_field("residual_index"),
                    verdict_line(report), config_field("residual_index"))
    else:
        log.info("residual index %d = best_layer of %s: %s", report["best_layer"], locate_workdir,
                 verdict_line(report))
    return int(report["best_layer"])


def _probability(threshold_logit: float) -> float:
    """sigmoid of a logit threshold in float64: the probability threshold stored beside it for older readers."""
    return float(1.0 / (1.0 + np.exp(-np.float64(threshold_logit))))


def _labels(records):
    return np.array([r.label for r in records], np.int64)


def _finished_metrics(artifact_dir: pathlib.Path, run_hash: str) -> dict[str, Any] | None:
    """The metrics of a complete artifact written by the run whose config hashes to `run_hash`, else None."""
    try:
        metrics = read_json(artifact_dir / METRICS_FILE)
    except (FileNotFoundError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("run_config_hash") == run_hash else None


def _embedder(s: SSISettings, model, tokenizer, residual_index: int, cache_dir: str):
    """records -> a function subset -> features (n, D) (each distinct text embedded once, cached)."""
    def embed(records):
        texts = list(dict.fromkeys(r.text for r in records))
        features = prompt_features(model, tokenizer, texts, residual_index=residual_index, pooling=s.pooling,
                                   chat_template=s.chat_template, max_length=s.max_length,
                                   template_kwargs=dict(s.template_kwargs), batch_size=s.capture_batch_size,
                                   cache_dir=cache_dir)
        row_of = {text: i for i, text in enumerate(texts)}
        return lambda subset: features[[row_of[r.text] for r in subset]]
    return embed


def _provisional_ssi(s: SSISettings, model, tokenizer, data: SSIData, residual_index: int, hidden_dims, result):
    """The trained SSI with a placeholder threshold (0.5): its config records the base model and tokenisation."""
    return SSI(SSIConfig(
        residual_index=residual_index, threshold=0.5, d_model=model.config.hidden_size, hidden_dims=hidden_dims,
        pooling=s.pooling, chat_template=s.chat_template, base_model_fingerprint=model.fingerprint,
        train_languages=tuple(data.notes["train_languages"]), max_length=s.max_length, dropout=s.classifier.dropout,
        standardize=s.classifier.standardize, threshold_rule=s.threshold.rule, fpr_bound=s.threshold.fpr_bound,
        template_kwargs=dict(s.template_kwargs), base_model_path=str(s.model.path),
        base_model_num_layers=model.config.num_layers, base_model_dtype=model.config.param_dtype,
        tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=s.chat_template, max_length=s.max_length,
                                                 template_kwargs=dict(s.template_kwargs)),
        best_epoch=result.best_epoch), result.classifier)


def _thresholds(s: SSISettings, ssi: SSI, val_labels, val_logits) -> dict[str, float]:
    """{rule: threshold logit} on the validation logits (float32 probabilities saturate above logit ~16.6)."""
    thresholds = {rule: choose_threshold(val_labels, val_logits, rule, s.threshold.fpr_bound, scale="logit")
                  for rule in THRESHOLD_RULES}
    if not classification_metrics(val_labels, val_logits, thresholds[s.threshold.rule])["tp"]:
        log.warning("the chosen threshold logit %.4f flags no harmful validation prompt (rule %s, FPR bound %s): the "
                    "SSI does not separate the classes at this layer", thresholds[s.threshold.rule],
                    s.threshold.rule, s.threshold.fpr_bound)
    return thresholds


def _score_sets(ssi: SSI, scored, thresholds: dict[str, float], chosen: float):
    """Per-language metrics of every (name, records, embed) set at the chosen and the accuracy threshold."""
    evaluation, at_accuracy_threshold = {}, {}
    for name, records, embed in scored:
        logits, languages = ssi.logits(embed(records)), [r.language for r in records]
        evaluation[name] = evaluate_by_language(_labels(records), logits, languages, chosen)
        at_accuracy_threshold[name] = evaluate_by_language(_labels(records), logits, languages,
                                                           thresholds["accuracy"])
    return evaluation, at_accuracy_threshold


def _metrics(s: SSISettings, model, data: SSIData, result, residual_index, hidden_dims, thresholds, val_labels,
             val_logits, evaluation, at_accuracy_threshold) -> dict[str, Any]:
    """metrics.json (module docstring)."""
    chosen = thresholds[s.threshold.rule]
    sets = [*data.evaluation.items(), *data.held_out_evaluation.items()]
    return {
        "summary": {name: {key: m["macro"][key] for key in ("tpr", "fpr", "accuracy", "f1", "auroc")}
                    for name, m in evaluation.items()},
        "decision_rule": DECISION_RULE, "residual_index": residual_index,
        "threshold": {
            "chosen": _probability(chosen), "chosen_logit": chosen, "chosen_on": "logits",
            "rule": s.threshold.rule, "fpr_bound": s.threshold.fpr_bound,
            "candidates": {rule: {"threshold": _probability(t), "threshold_logit": t,
                                  "validation": classification_metrics(val_labels, val_logits, t)}
                           for rule, t in thresholds.items()}},
        "training": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                     "pos_weight": result.pos_weight, "settings": dataclasses.asdict(s.train),
                     "hidden_dims": list(hidden_dims), "dropout": s.classifier.dropout,
                     "standardize": s.classifier.standardize,
                     "num_params": result.classifier.num_params(), "history": result.history},
        "data": {"notes": data.notes, "train": split_summary(data.train), "val": split_summary(data.val),
                 **{name: split_summary(records) for name, records in sets}},
        "held_out_evaluation": sorted(data.held_out_evaluation),
        "evaluation": evaluation, "evaluation_at_accuracy_threshold": at_accuracy_threshold,
        "base_model": {"path": str(s.model.path), "fingerprint": model.fingerprint,
                       "num_layers": model.config.num_layers, "d_model": model.config.hidden_size,
                       "dtype": model.config.param_dtype},
    }


def _result(artifact_dir: pathlib.Path, metrics: dict[str, Any]) -> StageResult:
    return StageResult(NAME, outputs={"ssi": str(artifact_dir)}, details=metrics,
                       summary={"residual_index": metrics.get("residual_index"),
                                "threshold_logit": (metrics.get("threshold") or {}).get("chosen_logit")})


def _load_model_checked(s: SSISettings, mesh):
    """(model, residual index) with the model fingerprinted and the index within its layers (else InputError)."""
    model = load_model(s.model, mesh)
    residual_index = resolve_residual_index(s.residual_index, s.locate_workdir, model, s.model.path)
    if model.fingerprint is None:
        raise InputError(f"the model at {s.model.path} has no fingerprint; an SSI must record its base model")
    if residual_index > model.config.num_layers:
        raise InputError(f"residual_index {residual_index} exceeds the model's {model.config.num_layers} layers")
    return model, residual_index


def run(config_or_settings, workdir: str | os.PathLike, mesh=None) -> StageResult:
    """Run the SSI stage; writes `<workdir>/ssi/`; details = the metrics dict."""
    s = as_settings(config_or_settings, SSISettings, settings)
    start = time.perf_counter()
    artifact_dir = storage.to_path(workdir) / ARTIFACT_SUBDIR
    if artifact_dir.exists() and not s.overwrite:
        finished = _finished_metrics(artifact_dir, s.run_hash)
        if finished is not None:  # this very run finished before (e.g. killed after the artifact was written)
            log.info("%s was already written by this configuration; nothing to do", artifact_dir)
            return _result(artifact_dir, finished)
        raise FileExistsError(f"{artifact_dir} already exists; set {config_field('overwrite')}=True or use another "
                              "workdir")
    data = load_ssi_data(s.data, seed=s.seed)
    model, residual_index = _load_model_checked(s, mesh)
    tokenizer = load_tokenizer(s.model.path)
    embedder = _embedder(s, model, tokenizer, residual_index, s.feature_cache_dir or str(storage.to_path(workdir) /
                                                                                       "feature_cache"))
    features_of = embedder(data.train + data.val + [r for records in data.evaluation.values() for r in records])
    hidden_dims = resolve_hidden_dims(s.classifier.hidden_dims, model.config.hidden_size)
    result = train_classifier(features_of(data.train), _labels(data.train), features_of(data.val), _labels(data.val),
                              hidden_dims=hidden_dims, dropout=s.classifier.dropout,
                              standardize=s.classifier.standardize, settings=s.train)
    provisional = _provisional_ssi(s, model, tokenizer, data, residual_index, hidden_dims, result)
    val_labels, val_logits = _labels(data.val), provisional.logits(features_of(data.val))
    thresholds = _thresholds(s, provisional, val_labels, val_logits)
    chosen = thresholds[s.threshold.rule]
    ssi = SSI(dataclasses.replace(provisional.config, threshold=_probability(chosen), threshold_logit=chosen),
              result.classifier)
    # the SSI (parameters and threshold) is final: only now are the held-out evaluation sets embedded and scored
    held_out_features_of = embedder([r for records in data.held_out_evaluation.values() for r in records])
    scored = [("val", data.val, features_of), *[(n, rs, features_of) for n, rs in data.evaluation.items()],
              *[(n, rs, held_out_features_of) for n, rs in data.held_out_evaluation.items()]]
    evaluation, at_accuracy = _score_sets(ssi, scored, thresholds, chosen)
    metrics = _metrics(s, model, data, result, residual_index, hidden_dims, thresholds, val_labels, val_logits,
                       evaluation, at_accuracy)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    metrics["run_config_hash"] = s.run_hash
    if is_writer():
        save_ssi(artifact_dir, ssi, metrics=metrics, overwrite=s.overwrite)
        log.info("SSI written to %s (threshold logit %.4f = p %.6f, %s)", artifact_dir, chosen, _probability(chosen),
                 s.threshold.rule)
    for name, summary in metrics["summary"].items():
        log.info("%s (macro over languages): %s", name, summary)
    return _result(artifact_dir, metrics)


def report_lines(stage_dir: str) -> list[str]:
    """The pipeline report's lines: residual index, threshold, hidden dims, train languages, artifact links."""
    path = os.path.join(stage_dir, ARTIFACT_SUBDIR, "config.json")
    ssi_config = read_json(path) if storage.isfile(path) else None
    lines = []
    if ssi_config:
        lines.append(f"SSI at residual index {ssi_config['residual_index']}, threshold {ssi_config['threshold']:.4f} "
                     f"({ssi_config.get('threshold_rule', '')}), hidden dims {ssi_config['hidden_dims']}, trained on "
                     f"{', '.join(ssi_config['train_languages'])}.")
    links = [report_link(stage_dir, f"{ARTIFACT_SUBDIR}/{name}")
             for name in ("config.json", "metrics.json", "metrics_per_language.png")]
    return lines + ["- " + ", ".join(links)]
