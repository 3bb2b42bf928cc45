"""Stage 1 (Locate), the run: find the semantic bottleneck k*, the residual index where prompts cluster by meaning.

    result = run(config, workdir)                 # config: configs/locate.py; a StageResult (lasa_jax.stage)
    result.details                                # the BottleneckResult

The stage contract (`lasa_jax.stage`): NAME = "locate"; `settings(config)` (`lasa_jax.locate.settings`, the only
reader of the config); `run(config | settings, workdir, mesh=None, model=None)` with outputs {"bottleneck",
"layers_csv", "plot", "activations"} and summary {"best_layer", "bottleneck_found", "num_layers"};
`report_lines(stage_dir)` for the pipeline's report.md. `run` is the one entry that reads a config; the steps
below take the typed `LocateSettings`.

k* is chosen as in the paper: at each residual index, S_sem is the silhouette of the pooled prompt vectors grouped
by query (translations of one prompt), S_lang the silhouette grouped by language; k* maximises S_sem - S_lang.

Steps:
1. Data (`lasa_jax.locate.corpus.locate_corpus_with_notes(settings.data, seed)`): parallel texts
   `ParallelText(text, language, group_id, source, label)`, group ids namespaced by source. `data.source`:
   - "default": `default_locate_corpus` under `data.root` (FLORES/SIB-200 + PolyRefuse train/val; no MultiJail);
   - "jsonl": a generic JSON Lines file `{text|prompt, language, group_id[, label, source, split]}` at `data.path`
     (e.g. lasa_jax/demo_data/prompts.jsonl); rows whose `split` is not in `data.splits` are dropped, rows without
     a `split` field are kept (() keeps every row);
   - "hub": the same row layout through `datasets.load_dataset(data.path, split=data.hub_split,
     data_files=data.hub_data_files, cache_dir=data.hub_cache_dir)` (e.g. data.path="json" with local files);
   - "translated_json": the reference code's `safety_train_translated.json` at `data.path` (harmful, label 1);
   - "multijail": MultiJail (`data.path`, default `<data.root>/multijail`). A held-out evaluation set: refused
     unless `data.allow_held_out=True`, and then loudly warned about.
   Unless `data.allow_held_out` is set, every source but "multijail" goes through the held-out guard
   (`lasa_jax.data.heldout.guard_inputs`): held-out source names are refused, and groups holding a prompt of
   MultiJail, XSTest, OR-Bench-hard-test or OKTest (files under `data.root`, required unless
   `data.allow_missing_held_out`) under any source name are dropped, counted and logged (normalised exact text or
   shingle Jaccard >= 0.6).
   Then: languages in `data.languages`, groups with >= `data.min_languages` of them, with
   `data.common_sources_only` only the sources present in every requested language (`keep_common_sources`), at
   most `data.max_groups_per_source` groups per source (0 = all), drawn with `config.seed`.
   Source confound: in the default corpus vi, bn, sw and jv come only from FLORES (benign news) while the other
   six languages also come from PolyRefuse (harmful/harmless requests), so S_lang partly measures source/domain
   (a language cluster is also a domain cluster) and S_sem mixes two kinds of groups. `data.common_sources_only`
   (default False, the paper's mixed data) removes the confound at the price of data (all ten languages: FLORES
   only). The texts per source and language are reported in activations.json and bottleneck.json ("corpus").
2. Tokenisation (`tokenize_prompts`): raw text with the tokenizer's default special tokens (the paper), or the chat
   template (`chat_template`, `template_kwargs` JSON); at most `max_length` tokens.
3. Capture: `capture(..., residual_index=None)`, every residual index 0..L in one forward pass per batch, pooled
   (`pooling`: last real token, the paper's feature, or mean) -> float32 (L+1, N, D).
   Stored through the one activation cache (`lasa_jax.models.activation_cache`) as `<workdir>/activations.npz`
   (features + per-text columns language, group_id, source, label (-1 = unknown)) with `<workdir>/activations.json`
   beside it: the cache key (model fingerprint and dtypes, pooling, tokenisation settings, the token ids and the
   corpus records) and a corpus summary. A rerun whose key matches loads the file instead of running the model
   (`reuse_activations`); files of the earlier cache format are captured again.
4. Selection (`select_bottleneck_layer`, `config.selection`): argmax over residual indices 1..L (the paper's
   candidates; `selection.include_embeddings` adds 0, `selection.include_final=False` drops L) of S_sem - S_lang
   on L2-normalised vectors, with a group bootstrap (interval and pick share per layer), seeded by `config.seed`,
   and the verdict: no bottleneck when diff < 0 at every candidate, k* at a range edge, or pick share < 0.5
   (bottleneck.json `bottleneck_found`, `reason`; a console warning).
5. Probe (`lasa_jax.locate.probe`, `config.probe`): from the same features, the validation AUROC of a
   harmful-vs-benign logistic probe at every residual index (split by query group; labelled rows only: PolyRefuse
   harmful 1 / harmless 0, FLORES 0). Null with a reason when the labels do not allow it or when
   `data.allow_held_out` is set (the probe uses non-held-out data only). Caveat: in the default corpus the benign
   class mixes FLORES news with PolyRefuse harmless requests, so part of the AUROC can be domain, not safety.
6. Report (`write_bottleneck_report`): bottleneck.json (with "model", the model's identity, and "corpus", the
   corpus summary and data notes), layers.csv, bottleneck_layers.png, and tsne_layer<k>.png for each of
   `report.tsne_layers`.

Multi-process runs: every process loads the data, runs the (sharded) capture and the selection; only process 0
writes files. The activation file is reused only if every process can read a matching one (a shared workdir).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence

import numpy as np

from lasa_jax.data.parallel import ParallelText
from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.locate.corpus import corpus_summary, locate_corpus_with_notes
from lasa_jax.locate.probe import ProbeResult, layer_probe_auroc
from lasa_jax.locate.report import BOTTLENECK_FILE, load_bottleneck, probe_line, summary_line, write_bottleneck_report
from lasa_jax.locate.selection import BottleneckResult, select_bottleneck_layer
from lasa_jax.locate.settings import LocateSettings, parse_tsne_layers, settings
from lasa_jax.models import activation_cache
from lasa_jax.models.capture import capture, default_batch_size, tokenize_prompts
from lasa_jax.models.loading import load_model, load_tokenizer
from lasa_jax.stage import StageResult, as_settings, report_link

__all__ = ["ACTIVATIONS_FILE", "ACTIVATIONS_META_FILE", "NAME", "UNKNOWN_LABEL", "locate_activations", "locate_probe",
           "report_lines", "run", "settings"]

log = logging.getLogger(__name__)

NAME = "locate"
ACTIVATIONS_STEM = "activations"  # the activation cache entry: activations.npz + activations.json
ACTIVATIONS_FILE, ACTIVATIONS_META_FILE = (p.name for p in activation_cache.entry_paths(ACTIVATIONS_STEM))
UNKNOWN_LABEL = -1  # label column value of texts without a harmful/benign label


# -------------------------------------------------------------------------------------------------- activations


def _records_digest(records: Sequence[ParallelText]) -> str:
    """SHA-256 of the records' (text, language, group_id, source, label), in order."""
    rows = [[r.text, r.language, r.group_id, r.source, r.label] for r in records]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


def _columns(records: Sequence[ParallelText]) -> dict[str, np.ndarray]:
    return {"language": np.array([r.language for r in records]),
            "group_id": np.array([r.group_id for r in records]),
            "source": np.array([r.source for r in records]),
            "label": np.array([UNKNOWN_LABEL if r.label is None else r.label for r in records], np.int32)}


def locate_activations(s: LocateSettings, workdir: str | os.PathLike, model, tokenizer,
                       records: Sequence[ParallelText]) -> np.ndarray:
    """(L+1, N, D) float32 pooled features of `records` (module docstring, steps 2-3), reused from `workdir` when
    the stored key matches, else captured and stored (process 0)."""
    token_ids = tokenize_prompts(tokenizer, [r.text for r in records], use_chat_template=s.chat_template,
                                 max_length=s.max_length, template_kwargs=s.template_kwargs)
    description = activation_cache.key_description(
        model, token_ids, residual_index=None, pooling=s.pooling, chat_template=s.chat_template,
        max_length=s.max_length, template_kwargs=s.template_kwargs, extra={"records_sha256": _records_digest(records)})
    key = activation_cache.entry_key(description)
    stem = storage.to_path(workdir) / ACTIVATIONS_STEM
    columns = _columns(records)
    shape = (model.config.num_layers + 1, len(records), model.config.hidden_size)
    cacheable = model.fingerprint is not None
    if not cacheable:
        log.warning("activation reuse disabled: the model has no fingerprint (load it with from_pretrained)")
    if cacheable and s.reuse_activations:
        features = activation_cache.read_entry(stem, key, shape, columns, logger=log)
        if features is not None:
            log.info("reusing activations from %s (key %s): %d texts x %d residual indices",
                     storage.to_path(workdir) / ACTIVATIONS_FILE, key[:16], shape[1], shape[0])
            return features
    lengths = np.array([len(ids) for ids in token_ids])
    log.info("capturing %d residual indices for %d texts (tokens per text: median %d, max %d, max_length %d)",
             shape[0], shape[1], int(np.median(lengths)), int(lengths.max()), s.max_length)
    features = capture(model, token_ids, pooling=s.pooling, residual_index=None,
                       batch_size=default_batch_size(model, s.capture_batch_size), progress=s.progress)
    activation_cache.write_entry(stem, key, description, features, columns,
                                 metadata={"corpus": corpus_summary(records)})
    if is_writer():
        log.info("saved activations to %s (key %s)", storage.to_path(workdir) / ACTIVATIONS_FILE, key[:16])
    return features


# ------------------------------------------------------------------------------------------------------ the stage


def locate_probe(s: LocateSettings, features: np.ndarray, records: Sequence[ParallelText]) -> ProbeResult:
    """The per-residual-index probe AUROC of step 5 (module docstring) for the captured `features` (L+1, N, D)."""
    labels = np.array([UNKNOWN_LABEL if r.label is None else r.label for r in records], np.int32)
    if s.probe is None or not s.probe.enabled:
        return ProbeResult(None, f"disabled ({config_field('probe.enabled')}=False)", {})
    if s.data.allow_held_out:
        return ProbeResult(None, "not computed: data.allow_held_out=True (the probe uses non-held-out data only)",
                           {})
    return layer_probe_auroc(features, labels, [r.group_id for r in records], seed=s.seed,
                             val_fraction=s.probe.val_fraction, c=s.probe.c, num_steps=s.probe.num_steps)


def _select(s: LocateSettings, features: np.ndarray, records: Sequence[ParallelText]) -> BottleneckResult:
    """Step 4 and 5: the layer selection and the probe, logged per residual index."""
    sel = s.selection
    result = select_bottleneck_layer(features, [r.language for r in records], [r.group_id for r in records],
                                     metric=sel.metric, include_embeddings=sel.include_embeddings,
                                     include_final=sel.include_final, num_bootstrap=sel.num_bootstrap,
                                     bootstrap=sel.bootstrap, confidence=sel.confidence, seed=s.seed)
    probe = locate_probe(s, features, records)
    probe_settings = {key: value for key, value in probe.to_json_dict().items() if key != "auroc"}
    result = dataclasses.replace(result, probe_auroc=probe.auroc, probe=probe_settings)
    if probe.reason:
        log.warning("Locate probe AUROC not computed: %s", probe.reason)
    for row in result.layer_rows():
        auroc = "  n/a" if row["probe_auroc"] is None else f"{row['probe_auroc']:.3f}"
        log.info("residual index %2d: S_lang %.4f  S_sem %.4f  diff %.4f  [%.4f, %.4f]  pick share %.2f  "
                 "probe AUROC %s", row["layer"], row["s_lang"], row["s_sem"], row["diff"], row["diff_lo"],
                 row["diff_hi"], row["pick_share"], auroc)
    return result


def _model_and_tokenizer(s: LocateSettings, mesh, model):
    """The given model (or `model_path` loaded on `mesh`) and its tokenizer (from `model_path` or the model's
    `source_path`)."""
    if model is None:
        model = load_model(s.model, mesh)
    tokenizer_path = s.model.path or model.source_path
    if not tokenizer_path:
        raise InputError(f"{config_field('model_path')} is required to load the tokenizer of the given model")
    return model, load_tokenizer(str(tokenizer_path))


def run(config_or_settings, workdir: str | os.PathLike, mesh=None, model=None) -> StageResult:
    """Run Stage 1 with a `configs/locate.py` config or its settings (module docstring); files go to `workdir`.

    model: an already loaded `Decoder` (e.g. from a pipeline); None loads `model_path` on `mesh`.
    """
    s = as_settings(config_or_settings, LocateSettings, settings)
    if model is None and not s.model.path:  # before any work
        raise InputError(f"{config_field('model_path')} is required (a local Hugging Face model directory or a "
                         "hub id)")
    workdir = storage.to_path(workdir)
    records, notes = locate_corpus_with_notes(s.data, seed=s.seed)
    summary = corpus_summary(records)
    log.info("Locate data (%s): %d texts, %d groups; texts per language %s; per source and language %s",
             s.data.source, summary["num_texts"], summary["num_groups"], summary["texts_per_language"],
             summary["texts_per_source_language"])
    model, tokenizer = _model_and_tokenizer(s, mesh, model)
    num_layers = model.config.num_layers
    parse_tsne_layers(s.tsne_layers, best_layer=0, num_layers=num_layers)
    if is_writer():
        workdir.mkdir(parents=True, exist_ok=True)
    features = locate_activations(s, workdir, model, tokenizer, records)
    result = _select(s, features, records)
    paths = {"json": str(workdir / BOTTLENECK_FILE), "csv": str(workdir / "layers.csv"),
             "plot": str(workdir / "bottleneck_layers.png")}
    if is_writer():
        tsne_layers = parse_tsne_layers(s.tsne_layers, result.best_layer, num_layers)
        paths = write_bottleneck_report(result, workdir, features=features if tsne_layers else None,
                                        languages=[r.language for r in records],
                                        group_ids=[r.group_id for r in records], tsne_layers=tsne_layers,
                                        tsne_max_iter=s.tsne_max_iter,
                                        metadata={"model": model.identity(), "corpus": {**summary, "notes": notes}})
        log.info("wrote %s", ", ".join(sorted(paths.values())))
    _log_verdict(result)
    outputs = {"bottleneck": paths["json"], "layers_csv": paths["csv"], "plot": paths["plot"],
               "activations": str(workdir / ACTIVATIONS_FILE)}
    return StageResult(stage=NAME, outputs=outputs, details=result,
                       summary={"best_layer": result.best_layer, "bottleneck_found": result.bottleneck_found,
                                "num_layers": result.num_layers})


def _log_verdict(result: BottleneckResult) -> None:
    if result.bottleneck_found:
        log.info("Locate: %s", summary_line(result))
    else:
        log.warning("Locate: %s. Later stages that read k* from this workdir (residual_index=-1) will use index "
                    "%d anyway; set their residual_index explicitly to choose another.", summary_line(result),
                    result.best_layer)


def report_lines(stage_dir: str | os.PathLike) -> list[str]:
    """The report's Locate lines (markdown): k* with its interval and pick share, the verdict, the probe AUROC
    (when `stage_dir` holds a bottleneck.json), then the links to its files."""
    links = [f"- {report_link(stage_dir, BOTTLENECK_FILE)}, {report_link(stage_dir, 'layers.csv')}, "
             f"{report_link(stage_dir, 'bottleneck_layers.png')}"]
    if not (storage.to_path(stage_dir) / BOTTLENECK_FILE).is_file():
        return links
    b = load_bottleneck(stage_dir)
    best = b["layers"][b["best_layer"]]
    lines = [f"Semantic bottleneck k* = {b['best_layer']} of L = {b['num_layers']} (S_sem - S_lang = "
             f"{best['diff']:.3f}, {100 * b.get('confidence', 0.95):g}% interval [{best['diff_lo']:.3f}, "
             f"{best['diff_hi']:.3f}], "
             f"picked in {100 * best['pick_share']:.0f}% of resamples); {b['num_points']} texts, "
             f"{b['num_groups']} groups, languages {', '.join(b['languages'])}."]
    if b["bottleneck_found"] is False:
        lines += ["", f"**No semantic bottleneck found**: {b['reason']}. Later stages with residual_index=-1 used "
                      f"k* = {b['best_layer']} anyway."]
    if probe_line(b):
        lines += ["", f"Harmful-vs-benign probe (grouped validation split): {probe_line(b)}."]
    return lines + links
