"""KTO training data: rows -> held-out guard -> + benign rows -> latent labels -> token-level examples -> weights.

`prepare_examples(settings, tokenizer, base_model)` is the whole preparation of a run (the `data`, `labels` and
`train` class-weight settings); `load_rows`, `label_rows` and `data_fingerprint` are its steps.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.data.heldout import guard_inputs
from lasa_jax.data.preference.formats import load_paired_preference_json, load_unpaired_jsonl
from lasa_jax.data.preference.polyrefuse import convert_polyrefuse_completions, family_completion_models
from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.infra.base_config import comma_list
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import read_json
from lasa_jax.kto import benign as benign_data
from lasa_jax.kto.examples import KTOExample, tokenize_rows
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.kto.settings import KTODataSettings, KTOSettings, LabelSettings
from lasa_jax.kto.weights import balance_class_weights
from lasa_jax.models.decoder import Decoder
from lasa_jax.models.hf import model_fingerprint, resolve_model_path
from lasa_jax.sharding import batch_shards

log = logging.getLogger(__name__)


def load_rows(data: KTODataSettings, model_type: str | None = None) -> tuple[list[PreferenceRow], dict[str, Any]]:
    """Rows of `data.paths` (concatenated) read as `data.format`, and loader counts.

    polyrefuse_completions: the model folders come from `data.polyrefuse.models` (`completion_models`: "auto"
    selects the family of `model_type`, the base model's config.json model_type).
    """
    if not data.paths:
        raise InputError(f"{config_field('data.path')} is required (a preference file, or the PolyRefuse completions "
                         "root)")
    rows: list[PreferenceRow] = []
    counts: dict[str, Any] = {}
    for path in data.paths:
        if data.format == "paired_json":
            loaded = load_paired_preference_json(path)
        elif data.format == "unpaired_jsonl":
            loaded = load_unpaired_jsonl(path)
        else:
            pr = data.polyrefuse
            models, why = completion_models(pr.models, path, model_type)
            loaded, counts[path] = convert_polyrefuse_completions(
                path, models=models, languages=list(pr.languages) or None, modes=list(pr.modes), source=pr.source)
            counts[path]["models"] = sorted({row.origin.split("/", 1)[0] for row in loaded})
            counts[path]["models_selected_by"] = why
            log.info("KTO data: polyrefuse completions of %s (%s)", counts[path]["models"], why)
        rows += loaded
    counts["rows"] = len(rows)
    return rows, counts


def completion_models(spec: str, root: str, model_type: str | None) -> tuple[list[str] | None, str]:
    """(model folders or None = all, why) for `data.polyrefuse.models` = spec (see configs/kto.py)."""
    spec = str(spec).strip()
    if spec in ("", "all"):
        return None, f"data.polyrefuse.models={spec!r}: every model folder"
    if spec != "auto":
        return comma_list(spec), "data.polyrefuse.models (explicit)"
    family = family_completion_models(root, model_type or "")
    if family is None:
        log.warning("KTO data: no polyrefuse completions of the model family %r under %s; using every model's "
                    "(set %s to choose)", model_type, root, config_field("data.polyrefuse.models"))
        return None, f"auto: no folder for model_type {model_type!r}, every model folder"
    return family, f"auto: the family of model_type {model_type!r}"


def _model_type(model_dir: str) -> str:
    """config.json's model_type of a local HF directory ("" when absent)."""
    return str(read_json(os.path.join(model_dir, "config.json"), "model config").get("model_type", ""))


def label_rows(rows: Sequence[PreferenceRow], labels: LabelSettings,
               base_model: Callable[[], Decoder]) -> list[PreferenceRow]:
    """Latent labels by `labels.mode`. "ssi" scores each distinct prompt text with the SSI on `base_model()` (the
    frozen `model_path` model the SSI was trained on, neither the initial policy nor the reference)."""
    if labels.mode == "paper":
        return assign_latent_labels(rows, "paper", unsafe_prob_by_source=labels.unsafe_prob_by_source,
                                    default_prob=labels.default_prob, seed=labels.seed)
    if not labels.ssi_dir:
        raise InputError(f"{config_field('labels.ssi_dir')} is required with labels.mode='ssi' (a trained SSI "
                         "directory)")
    from lasa_jax.ssi.artifact import SSIScorer, load_ssi

    model = base_model()
    shards = batch_shards(model.mesh) if model.mesh is not None else 1
    scorer = SSIScorer(model, load_ssi(labels.ssi_dir), batch_size=shards * -(-8 // shards))
    return assign_latent_labels(rows, "ssi", ssi_flags=scorer)


def data_fingerprint(examples: Sequence[KTOExample]) -> str:
    """SHA-256 (24 hex) of the token-level training data: ids, loss masks, desirability and KL groups, in order."""
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.rendered.input_ids, np.int32).tobytes())
        h.update(np.asarray(e.rendered.loss_mask, np.int8).tobytes())
        h.update(f"|{int(e.desirable)}|{e.group_id}|{e.row_index}\n".encode())
    return h.hexdigest()[:24]


def prepare_examples(settings: KTOSettings, tokenizer,
                     base_model: Callable[[], Decoder]) -> tuple[list[KTOExample], dict[str, Any]]:
    """Rows -> held-out guard -> + benign rows -> latent labels -> token-level examples -> class weights.

    Returns (examples, summary): "load", "held_out", "benign", "tokenize" (kept / truncated / no_end_of_turn /
    dropped per class, source and language), "examples", "desirable", "undesirable", "weights"
    (`balance_class_weights`: the weights the run uses) and "data_fingerprint".
    """
    data = settings.data
    model_dir = resolve_model_path(settings.model.path)
    rows, load_counts = load_rows(data, _model_type(model_dir))
    guarded, held_out = guard_inputs({"rows": rows}, data.root, "KTO data", allow_missing=data.allow_missing_held_out)
    rows = guarded["rows"]
    rows, benign = _with_benign_rows(rows, settings, tokenizer, base_model, model_dir)
    rows = label_rows(rows, settings.labels, base_model)
    examples, token_counts = tokenize_rows(
        rows, tokenizer, prefix=settings.prefix, max_length=data.max_length,
        max_prompt_length=data.max_prompt_length or None, template_kwargs=settings.template_kwargs,
        truncate_completions=data.truncate_completions)
    num_desirable = sum(e.desirable for e in examples)
    t = settings.train
    weights = balance_class_weights(num_desirable, len(examples) - num_desirable, t.desirable_weight,
                                    t.undesirable_weight, t.balance_weights)
    summary = {"load": load_counts, "held_out": held_out, "benign": benign, "tokenize": token_counts,
               "examples": len(examples), "desirable": num_desirable,
               "undesirable": len(examples) - num_desirable, "weights": weights,
               "data_fingerprint": data_fingerprint(examples)}
    _log_data_summary(summary)
    return examples, summary


def _with_benign_rows(rows: list[PreferenceRow], settings: KTOSettings, tokenizer,
                      base_model: Callable[[], Decoder], model_dir: str) -> tuple[list[PreferenceRow], dict]:
    """rows + benign rows making `data.benign.share` of them (`lasa_jax.kto.benign`), held-out guarded."""
    from lasa_jax.infra.cache import cache_dir

    data, spec = settings.data, settings.data.benign
    wanted = benign_data.num_benign_rows(len(rows), spec.share)
    if wanted == 0:
        return rows, {"share": spec.share, "used": 0}
    if not data.root:
        raise InputError(f"{config_field('data.benign.share')} > 0 needs {config_field('data.root')} (PolyRefuse "
                         "harmless-train prompts); set data.benign.share=0 to train without benign rows")
    languages = list(spec.languages) or sorted({r.language for r in rows if r.language})
    prompts = benign_data.benign_prompts(data.root, languages, min(wanted, spec.max_prompts))
    generated, counts = benign_data.generate_benign_rows(
        base_model(), tokenizer, prompts, model_fingerprint=model_fingerprint(model_dir),
        cache_dir=spec.cache_dir or os.path.join(cache_dir(), "kto_benign"), max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size, template_kwargs=settings.template_kwargs, progress=settings.progress_bar)
    guarded, counts["held_out"] = guard_inputs({"benign": generated}, data.root, "KTO benign rows",
                                               allow_missing=data.allow_missing_held_out)
    mixed, mix = benign_data.mix_benign_rows(rows, guarded["benign"], spec.share)
    return mixed, {"share": spec.share, "languages": languages, **counts, **mix}


def _log_data_summary(summary: Mapping[str, Any]) -> None:
    """One INFO line per class and per (source, class) / (language, class) with kept / truncated / dropped counts."""
    tokenize = summary["tokenize"]
    for label, tally in sorted(tokenize["by_class"].items()):
        log.info("KTO data, %s: %s", label, tally)
    for key in ("by_source", "by_language"):
        for name, classes in sorted(tokenize[key].items()):
            log.info("KTO data, %s %s: %s", key[3:], name, classes)
    w = summary["weights"]
    log.info("KTO data: %d examples, %d desirable : %d undesirable; weights %.4g / %.4g (ratio %.3f)",
             summary["examples"], summary["desirable"], summary["undesirable"], w["desirable_weight"],
             w["undesirable_weight"], w["ratio"])


