"""Stage 2 end to end: data -> cached features -> training -> threshold -> metrics -> the SSI artifact.

Data (`config.data.source`):
- "polyrefuse" (default; `config.data.root` = the shared data folder): train = PolyRefuse harmful/harmless train,
  val = PolyRefuse val, both in `train_languages` (en, zh, ko). Val groups whose English text nearly duplicates a
  train group (token Jaccard >= `dedup_jaccard`) are dropped; PolyRefuse shares no identical English instruction
  between harmful_train and harmful_val, but 3 val rows are paraphrases of train rows at 0.6. Evaluation sets:
  "test_in_distribution" = PolyRefuse test in the train languages, "test_cross_lingual" = PolyRefuse test in the
  `test_languages` that have it (it, ar, th of the MultiJail languages) (test groups nearly duplicating a train/val
  group are dropped the same way; harmful_test rows 345, 405, 530, 548 are MultiJail prompts and always dropped),
  and "benign_flores" = FLORES-200 test sentences (via SIB-200, benign) in all train and test languages, an
  out-of-domain false-positive check (it is the only benign data here for vi, bn, sw, jv).
- "jsonl": a generic file (`config.data.jsonl_path`, `lasa_jax.data.labelled.load_labelled_jsonl`), rows whose
  `split` is in `config.data.jsonl_splits` (rows without one count as "train"); their groups are split
  train/val/test by `val_fraction`/`test_fraction` (stratified by label). Train and val use the train languages;
  "test_in_distribution" = test groups in the train languages, "test_cross_lingual" = test groups in the other
  languages (`test_languages`, or every other language when empty). With `config.data.root`, "benign_flores" too.
  The near-duplicate filter applies as for PolyRefuse.
- "authors": the reference code's harmful `unsafe_train.json` (`unsafe_train_path`) + benign UltraFeedback files
  (`ultrafeedback_dir`, first `ultrafeedback_per_language` rows per language), grouped split as for "jsonl".
Held-out sets: `lasa_jax.data.heldout.guard_inputs` checks every split and evaluation set above by source name, and
drops (counts, logs) the train/val groups holding a prompt of MultiJail, XSTest, OR-Bench-hard-test or OKTest
under any source name (normalised exact text or shingle Jaccard >= 0.6), recorded under notes "held_out_content";
the four files under `data.root` are required unless `data.allow_missing_held_out`.
MultiJail itself enters only as "multijail_harmful" (`data.eval_multijail`, when the file exists): its prompts in
the train and test languages, harmful only, for per-language TPR in the unseen languages (the only harmful data
for vi, bn, sw, jv). It is an evaluation-only set (`SSIData.held_out_evaluation`): its features are computed and
scored only after training, early stopping and threshold selection are finished, and nothing is chosen with it.
`max_groups_per_split` (0 = all) keeps at most that many groups per label in every split and set (quick runs).

Output: `<workdir>/ssi/` (the artifact, `lasa_jax.ssi.artifact`) with metrics.json holding the data summary, the
training history, both thresholds with their validation metrics, and per-language metrics of every evaluation set
at the chosen threshold (and at the accuracy-optimal one), "multijail_harmful" included (listed under
"held_out_evaluation"); features are cached in `<workdir>/feature_cache/` (or
`config.feature_cache_dir`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Any

import numpy as np

from lasa_jax import io_utils
from lasa_jax.data.eval_sets import MULTIJAIL_CSV
from lasa_jax.data.heldout import check_source_names, guard_inputs
from lasa_jax.data.labelled import (
    LabelledPrompt,
    check_disjoint_groups,
    drop_near_duplicate_groups,
    grouped_split,
    limit_groups,
    load_flores_benign,
    load_labelled_jsonl,
    load_multijail_prompts,
    load_polyrefuse_prompts,
    load_ultrafeedback_prompts,
    load_unsafe_train_json,
    select_languages,
    split_summary,
)
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES, normalize_language
from lasa_jax.errors import InputError
from lasa_jax.io_utils import read_json
from lasa_jax.runtime import is_writer, load_model, load_tokenizer
from lasa_jax.runtime import template_kwargs as runtime_template_kwargs
from lasa_jax.ssi.artifact import ARTIFACT_SUBDIR, METRICS_FILE, SSI, SSIConfig, save_ssi
from lasa_jax.ssi.features import prompt_features, tokenization_fingerprint
from lasa_jax.ssi.metrics import DECISION_RULE, choose_threshold, classification_metrics, evaluate_by_language
from lasa_jax.ssi.mlp import resolve_hidden_dims
from lasa_jax.ssi.training import TrainSettings, train_classifier

log = logging.getLogger(__name__)
DATA_SOURCES = ("polyrefuse", "jsonl", "authors")
MULTIJAIL_SET = "multijail_harmful"  # name of the evaluation-only MultiJail set in metrics.json and the plot


@dataclasses.dataclass
class SSIData:
    """train / val records, named evaluation sets, and notes on what was dropped (for metrics.json).

    held_out_evaluation: named held-out sets (MultiJail) that are only scored once the SSI is final: never
    features of training, early stopping or threshold selection.
    """

    train: list[LabelledPrompt]
    val: list[LabelledPrompt]
    evaluation: dict[str, list[LabelledPrompt]]
    notes: dict[str, Any]
    held_out_evaluation: dict[str, list[LabelledPrompt]] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------- data


def _languages(values) -> tuple[str, ...]:
    return tuple(dict.fromkeys(normalize_language(v) for v in values))


def load_ssi_data(data_config, seed: int) -> SSIData:
    """Assemble the splits described in the module docstring from `config.data`."""
    source = data_config.source
    if source not in DATA_SOURCES:
        raise InputError(f"--config.data.source must be one of {DATA_SOURCES}, got {source!r}")
    train_languages = _languages(data_config.train_languages)
    if not train_languages:
        raise InputError("--config.data.train_languages must name at least one language")
    test_languages = tuple(lang for lang in _languages(data_config.test_languages) if lang not in train_languages)
    root = pathlib.Path(data_config.root) if data_config.root else None
    notes: dict[str, Any] = {"source": source, "train_languages": list(train_languages)}
    evaluation: dict[str, list[LabelledPrompt]] = {}

    if source == "polyrefuse":
        if root is None:
            raise InputError("--config.data.root is required for data.source='polyrefuse' (the shared data folder "
                             "holding polyrefuse/ and flores200_sib200/)")
        polyrefuse = root / "polyrefuse"
        train = load_polyrefuse_prompts(polyrefuse, ("train",), train_languages)
        val = load_polyrefuse_prompts(polyrefuse, ("val",), train_languages)
        test = load_polyrefuse_prompts(polyrefuse, ("test",), train_languages + test_languages)
        cross_languages = tuple(lang for lang in test_languages if any(r.language == lang for r in test))
        notes["polyrefuse_test_languages_missing"] = [lang for lang in test_languages if lang not in cross_languages]
    else:
        if source == "jsonl":
            if not data_config.jsonl_path:
                raise InputError("--config.data.jsonl_path is required for data.source='jsonl'")
            keep = set(data_config.jsonl_splits)
            records = load_labelled_jsonl(data_config.jsonl_path, splits=keep | ({None} if "train" in keep else set()))
        else:
            if not data_config.unsafe_train_path or not data_config.ultrafeedback_dir:
                raise InputError("data.source='authors' needs --config.data.unsafe_train_path (unsafe_train.json) "
                                 "and --config.data.ultrafeedback_dir (monolingual_first1000_<lang>.json files)")
            records = load_unsafe_train_json(data_config.unsafe_train_path)
            records += load_ultrafeedback_prompts(data_config.ultrafeedback_dir,
                                                  max_per_language=data_config.ultrafeedback_per_language or None)
        fractions = {"train": 1.0 - data_config.val_fraction - data_config.test_fraction,
                     "val": data_config.val_fraction, "test": data_config.test_fraction}
        parts = grouped_split(records, fractions, seed=seed)
        cross_languages = test_languages or tuple(sorted({r.language for r in records} - set(train_languages)))
        train = select_languages(parts["train"], train_languages)
        val = select_languages(parts["val"], train_languages)
        test = select_languages(parts["test"], train_languages + cross_languages)
    guarded, notes["held_out_content"] = guard_inputs(
        {"train": train, "val": val}, root, "SSI data",
        allow_missing=bool(data_config.get("allow_missing_held_out", False)))
    train, val = guarded["train"], guarded["val"]
    val, test = _drop_near_duplicates(train, val, test, data_config, notes)
    evaluation["test_in_distribution"] = select_languages(test, train_languages)
    evaluation["test_cross_lingual"] = select_languages(test, cross_languages)
    evaluation_languages = train_languages + (test_languages or cross_languages)
    if root is not None and data_config.include_flores:
        evaluation["benign_flores"] = load_flores_benign(root / "flores200_sib200", evaluation_languages,
                                                         splits=(data_config.flores_split,))
    held_out_evaluation = _multijail_evaluation(data_config, root, evaluation_languages, notes)

    limit = data_config.max_groups_per_split
    train, val = limit_groups(train, limit, seed), limit_groups(val, limit, seed)
    evaluation = {name: limit_groups(records, limit, seed) for name, records in evaluation.items() if records}
    held_out_evaluation = {name: limit_groups(records, limit, seed) for name, records in held_out_evaluation.items()}
    for name, records in [("train", train), ("val", val), *evaluation.items()]:
        check_source_names(records, what=f"SSI {name} split")
    # evaluation sets may share groups with each other (one query in several languages), never with train or val
    check_disjoint_groups({"train": train, "val": val, "evaluation": [r for rs in evaluation.values() for r in rs],
                           "held_out_evaluation": [r for rs in held_out_evaluation.values() for r in rs]})
    for name, records in (("train", train), ("val", val)):
        if len({r.label for r in records}) < 2:
            raise InputError(f"the SSI {name} split needs harmful and benign prompts; got {split_summary(records)}")
    return SSIData(train, val, evaluation, notes, held_out_evaluation)


def _multijail_evaluation(data_config, root, languages, notes) -> dict[str, list[LabelledPrompt]]:
    """{MULTIJAIL_SET: MultiJail prompts in `languages`} when `data.eval_multijail` and the file exists, else {}
    (with the reason in notes["multijail_evaluation"])."""
    if not data_config.eval_multijail:
        notes["multijail_evaluation"] = "off (data.eval_multijail=False)"
        return {}
    path = root / MULTIJAIL_CSV if root is not None else None
    multijail_languages = [lang for lang in languages if lang in MULTIJAIL_LANGUAGES]
    if path is None or not path.is_file() or not multijail_languages:
        reason = ("no --config.data.root" if path is None else f"{path} not found" if not path.is_file()
                  else f"no MultiJail language among {list(languages)}")
        log.warning("evaluation-only MultiJail set skipped: %s", reason)
        notes["multijail_evaluation"] = f"skipped: {reason}"
        return {}
    notes["multijail_evaluation"] = {"path": str(path), "languages": multijail_languages,
                                     "use": "evaluation only, scored after training and threshold selection"}
    return {MULTIJAIL_SET: load_multijail_prompts(path, multijail_languages)}


def _drop_near_duplicates(train, val, test, data_config, notes):
    threshold = data_config.dedup_jaccard
    if not threshold:
        return val, test
    language = data_config.dedup_language
    val, dropped_val = drop_near_duplicate_groups(val, train, language=language, threshold=threshold)
    test, dropped_test = drop_near_duplicate_groups(test, train + val, language=language, threshold=threshold)
    notes["near_duplicates"] = {"language": language, "jaccard_threshold": threshold,
                                "dropped_val_groups": dropped_val, "dropped_test_groups": dropped_test}
    log.info("near-duplicate filter: dropped %d val and %d test groups", len(dropped_val), len(dropped_test))
    return val, test


# --------------------------------------------------------------------------------------------------- training


def resolve_residual_index(config, model=None) -> int:
    """config.residual_index, or (when < 0) `best_layer` of the Locate workdir's bottleneck.json, logged with the
    Locate verdict (a warning when Locate found no semantic bottleneck) and the probe AUROC there.

    With `model`, a located layer must come from that model: the report's number of layers and (when recorded)
    model fingerprint must match, else ValueError naming both values.
    """
    if config.residual_index >= 0:
        return int(config.residual_index)
    if not config.locate_workdir:
        raise InputError("set --config.residual_index=K or --config.locate_workdir=DIR (a Locate workdir with "
                         "bottleneck.json) to read k* from")
    from lasa_jax.bottleneck import load_bottleneck

    report = load_bottleneck(config.locate_workdir)
    if model is not None:
        where = f"{config.locate_workdir}/bottleneck.json"
        if report["num_layers"] != model.config.num_layers:
            raise InputError(f"{where} was located on a model with {report['num_layers']} layers, but "
                             f"--config.model_path has {model.config.num_layers}")
        located_on = (report.get("model") or {}).get("fingerprint")
        if located_on and model.fingerprint and located_on != model.fingerprint:
            raise InputError(f"{where} was located on model {located_on} ({report['model'].get('path')}), but "
                             f"--config.model_path={config.model_path} is model {model.fingerprint}")
    from lasa_jax.bottleneck import verdict_line

    if report["bottleneck_found"] is False:
        log.warning("residual index %d = best_layer of %s, used because --config.residual_index=-1, but %s; set "
                    "--config.residual_index=K to train on another layer", report["best_layer"],
                    config.locate_workdir, verdict_line(report))
    else:
        log.info("residual index %d = best_layer of %s: %s", report["best_layer"], config.locate_workdir,
                 verdict_line(report))
    return int(report["best_layer"])


def _probability(threshold_logit: float) -> float:
    """sigmoid of a logit threshold in float64: the probability threshold stored beside it for older readers."""
    return float(1.0 / (1.0 + np.exp(-np.float64(threshold_logit))))


def train_settings(config) -> TrainSettings:
    t = config.train
    return TrainSettings(learning_rate=t.learning_rate, weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                         batch_size=t.batch_size, num_epochs=t.num_epochs, patience=t.patience,
                         early_stopping_metric=t.early_stopping_metric, min_delta=t.min_delta,
                         class_balance=t.class_balance, lr_plateau_patience=t.lr_plateau_patience,
                         lr_plateau_factor=t.lr_plateau_factor, seed=config.seed)


def _labels(records):
    return np.array([r.label for r in records], np.int64)


def _languages_of(records):
    return [r.language for r in records]


def _finished_metrics(artifact_dir: pathlib.Path, run_hash: str) -> dict[str, Any] | None:
    """The metrics of a complete artifact written by the run whose config hashes to `run_hash`, else None."""
    try:
        metrics = read_json(artifact_dir / METRICS_FILE)
    except (FileNotFoundError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("run_config_hash") == run_hash else None


def train_ssi(config, workdir: str | os.PathLike, mesh=None) -> dict[str, Any]:
    """Run Stage 2 with a `configs/ssi.py` config; writes `<workdir>/ssi/` and returns its metrics dict."""
    start = time.perf_counter()
    workdir = io_utils.to_path(workdir)
    artifact_dir = workdir / ARTIFACT_SUBDIR
    run_hash = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    if artifact_dir.exists() and not config.overwrite:
        finished = _finished_metrics(artifact_dir, run_hash)
        if finished is not None:  # this very run finished before (e.g. killed after the artifact was written)
            log.info("%s was already written by this configuration; nothing to do", artifact_dir)
            return finished
        raise FileExistsError(f"{artifact_dir} already exists; pass --config.overwrite=True or another --workdir")
    data = load_ssi_data(config.data, seed=config.seed)
    model = load_model(config, mesh)
    residual_index = resolve_residual_index(config, model)
    if model.fingerprint is None:
        raise InputError(f"the model at {config.model_path} has no fingerprint; an SSI must record its base model")
    if residual_index > model.config.num_layers:
        raise InputError(f"residual_index {residual_index} exceeds the model's {model.config.num_layers} layers")
    tokenizer = load_tokenizer(config.model_path)
    template_kwargs = runtime_template_kwargs(config)
    cache_dir = config.feature_cache_dir or str(workdir / "feature_cache")

    def embedder(records):
        """Features of `records` (each distinct text embedded once, cached): a function records -> (n, D)."""
        texts = list(dict.fromkeys(r.text for r in records))
        features = prompt_features(model, tokenizer, texts, residual_index=residual_index, pooling=config.pooling,
                                   chat_template=config.chat_template, max_length=config.max_length,
                                   template_kwargs=template_kwargs, batch_size=config.capture_batch_size or None,
                                   cache_dir=cache_dir)
        row_of = {text: i for i, text in enumerate(texts)}
        return lambda subset: features[[row_of[r.text] for r in subset]]

    features_of = embedder(data.train + data.val + [r for records in data.evaluation.values() for r in records])

    d_model = model.config.hidden_size
    hidden_dims = resolve_hidden_dims(config.ssi.hidden_dims, d_model)
    settings = train_settings(config)
    result = train_classifier(features_of(data.train), _labels(data.train), features_of(data.val), _labels(data.val),
                              hidden_dims=hidden_dims, dropout=config.ssi.dropout,
                              standardize=bool(config.ssi.standardize), settings=settings)

    provisional = SSIConfig(
        residual_index=residual_index, threshold=0.5, d_model=d_model, hidden_dims=hidden_dims,
        pooling=config.pooling, chat_template=bool(config.chat_template),
        base_model_fingerprint=model.fingerprint,
        train_languages=tuple(data.notes["train_languages"]), max_length=config.max_length,
        dropout=config.ssi.dropout, standardize=bool(config.ssi.standardize), threshold_rule=config.threshold.rule,
        fpr_bound=config.threshold.fpr_bound,
        template_kwargs=template_kwargs, base_model_path=str(config.model_path),
        base_model_num_layers=model.config.num_layers, base_model_dtype=model.config.param_dtype,
        tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=bool(config.chat_template),
                                                 max_length=config.max_length, template_kwargs=template_kwargs),
        best_epoch=result.best_epoch)
    ssi = SSI(provisional, result.classifier)
    val_labels = _labels(data.val)
    # thresholds are chosen on logits: float32 probabilities saturate to 1.0 above logit ~16.6 (ssi/metrics.py)
    val_logits = ssi.logits(features_of(data.val))
    thresholds = {rule: choose_threshold(val_labels, val_logits, rule, config.threshold.fpr_bound, scale="logit")
                  for rule in ("tpr_at_fpr", "accuracy")}
    chosen = thresholds[config.threshold.rule]
    chosen_validation = classification_metrics(val_labels, val_logits, chosen)
    if not chosen_validation["tp"]:
        log.warning("the chosen threshold logit %.4f flags no harmful validation prompt (rule %s, FPR bound %s): the "
                    "SSI does not separate the classes at this layer", chosen, config.threshold.rule,
                    config.threshold.fpr_bound)
    ssi = SSI(dataclasses.replace(provisional, threshold=_probability(chosen), threshold_logit=chosen),
              result.classifier)

    # the SSI (parameters and threshold) is final: only now are the held-out evaluation sets embedded and scored
    held_out_features_of = embedder([r for records in data.held_out_evaluation.values() for r in records])
    scored = [("val", data.val, features_of)]
    scored += [(name, records, features_of) for name, records in data.evaluation.items()]
    scored += [(name, records, held_out_features_of) for name, records in data.held_out_evaluation.items()]
    evaluation, at_accuracy_threshold = {}, {}
    for name, records, embed in scored:
        logits = ssi.logits(embed(records))
        evaluation[name] = evaluate_by_language(_labels(records), logits, _languages_of(records), chosen)
        at_accuracy_threshold[name] = evaluate_by_language(_labels(records), logits, _languages_of(records),
                                                           thresholds["accuracy"])
    metrics = {
        "summary": {name: {key: m["macro"][key] for key in ("tpr", "fpr", "accuracy", "f1", "auroc")}
                    for name, m in evaluation.items()},
        "decision_rule": DECISION_RULE,
        "residual_index": residual_index,
        "threshold": {
            "chosen": _probability(chosen), "chosen_logit": chosen, "chosen_on": "logits",
            "rule": config.threshold.rule, "fpr_bound": config.threshold.fpr_bound,
            "candidates": {rule: {"threshold": _probability(t), "threshold_logit": t,
                                  "validation": classification_metrics(val_labels, val_logits, t)}
                           for rule, t in thresholds.items()},
        },
        "training": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                     "pos_weight": result.pos_weight, "settings": dataclasses.asdict(settings),
                     "hidden_dims": list(hidden_dims), "dropout": config.ssi.dropout,
                     "standardize": bool(config.ssi.standardize),
                     "num_params": result.classifier.num_params(), "history": result.history},
        "data": {"notes": data.notes, "train": split_summary(data.train), "val": split_summary(data.val),
                 **{name: split_summary(records) for name, records in
                    [*data.evaluation.items(), *data.held_out_evaluation.items()]}},
        "held_out_evaluation": sorted(data.held_out_evaluation),
        "evaluation": evaluation,
        "evaluation_at_accuracy_threshold": at_accuracy_threshold,
        "base_model": {"path": str(config.model_path), "fingerprint": model.fingerprint,
                       "num_layers": model.config.num_layers, "d_model": d_model,
                       "dtype": model.config.param_dtype},
    }
    metrics["wall_seconds"] = round(time.perf_counter() - start, 2)
    metrics["run_config_hash"] = run_hash
    if is_writer():
        save_ssi(artifact_dir, ssi, metrics=metrics, overwrite=bool(config.overwrite))
        log.info("SSI written to %s (threshold logit %.4f = p %.6f, %s)", artifact_dir, chosen, _probability(chosen),
                 config.threshold.rule)
    for name, summary in metrics["summary"].items():
        log.info("%s (macro over languages): %s", name, summary)
    return metrics
