"""The generate stage (`python -m lasa_jax.scripts.generate`, `configs/generate.py`): eval prompts -> SSI decisions
on the base model -> responses -> `<workdir>/<output>` (+ `<output>.meta.json`). Stage contract: `lasa_jax.stage`.

`settings` (lasa_jax/generate/settings.py) is the only reader of the config section. Modes (the gate:
`lasa_jax.generate.gate`; the records: `lasa_jax.decoding.answers`): "lasa" scores with the SSI on the base model,
frees it, and generates with the aligned model; "prefix_only" generates with that same base model (loaded once);
"baseline" generates with `model_path` and records SSI scores only when an SSI is given. The meta file holds
models, fingerprints, decoding, stop tokens, counts (`summarize`) and timings.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lasa_jax.decoding.answers import PARTIAL_SUFFIX, generate_responses, write_generations
from lasa_jax.decoding.stop_tokens import stop_token_ids
from lasa_jax.generate.gate import prefix_decisions
from lasa_jax.generate.settings import GenerateSettings, settings
from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.storage import atomic_write_json, read_json
from lasa_jax.models.loading import load_model, load_tokenizer
from lasa_jax.ssi.artifact import SSIScorer, load_ssi
from lasa_jax.stage import StageResult, as_settings, report_link

log = logging.getLogger(__name__)
NAME = "generate"
META_SUFFIX = ".meta.json"


def _ssi_decisions(s: GenerateSettings, prompts, mesh, meta: dict[str, Any]):
    """(scores, flags, the base model when it also generates (prefix_only) else None); the base model is freed
    otherwise before the generating model is loaded."""
    if not s.scores:
        return (*prefix_decisions(s.mode, prompts), None)
    base = load_model(s.base_model, mesh)
    scorer = SSIScorer(base, load_ssi(s.ssi_dir), batch_size=s.decoding.batch_size, progress=s.progress)
    meta.update(base_model_path=s.base_model.path, base_fingerprint=base.fingerprint, ssi_dir=s.ssi_dir,
                ssi_threshold=scorer.threshold, ssi_threshold_logit=scorer.threshold_logit,
                ssi_residual_index=scorer.ssi.config.residual_index)
    scores, flags = prefix_decisions(s.mode, prompts, scorer)
    generator = base if s.mode == "prefix_only" else None  # the base model generates too: loaded once
    del base, scorer
    gc.collect()
    return scores, flags, generator


def run(config_or_settings, workdir: str, mesh=None) -> StageResult:
    """Run the generate stage into `workdir`; outputs {"generations": path, "meta": path}."""
    s = as_settings(config_or_settings, GenerateSettings, settings)
    output = os.path.join(workdir, s.output)
    prompts = s.eval_sets.load()
    meta: dict[str, Any] = {"mode": s.mode, "model_path": s.model.path, "eval_sets": ",".join(s.eval_sets.specs),
                            "template_kwargs": dict(s.template_kwargs), "prefix": s.prefix}
    log.info("%d prompts from %s, mode %s", len(prompts), meta["eval_sets"], s.mode)
    start = time.perf_counter()
    scores, flags, model = _ssi_decisions(s, prompts, mesh, meta)
    meta["ssi_seconds"] = time.perf_counter() - start
    if model is None:
        model = load_model(s.model, mesh)
    tokenizer = load_tokenizer(s.tokenizer_path)
    stop_ids = list(s.eos_token_ids) or stop_token_ids(model.config, tokenizer, s.template_kwargs,
                                                       model_dir=getattr(model, "source_path", None))
    meta.update(fingerprint=model.fingerprint, decoding=dataclasses.asdict(s.decoding), eos_token_ids=stop_ids,
                max_prompt_length=s.max_prompt_length)
    partial = output + PARTIAL_SUFFIX
    start = time.perf_counter()
    records = generate_responses(model, tokenizer, prompts, mode=s.mode, ssi_scores=scores, prefix_flags=flags,
                                 decoding=s.decoding, prefix=s.prefix, template_kwargs=s.template_kwargs,
                                 max_prompt_length=s.max_prompt_length, eos_token_id=stop_ids, partial_path=partial,
                                 resume=s.resume, chunk_size=s.chunk_size, progress=s.progress)
    seconds = time.perf_counter() - start
    new_tokens = sum(r["num_new_tokens"] for r in records)
    meta.update(generation_seconds=seconds, new_tokens=new_tokens, summary=summarize(records))
    write_generations(output, records)
    if is_writer():
        atomic_write_json(output + META_SUFFIX, meta)
        if storage.exists(partial):
            storage.remove(partial)
    log.info("wrote %d records to %s (%d new tokens in %.1f s; prefix used on %d)", len(records), output,
             new_tokens, seconds, int(flags.sum()))
    return StageResult(NAME, outputs={"generations": output, "meta": output + META_SUFFIX},
                       summary={"prompts": len(records), "prefix_used": int(flags.sum()), "new_tokens": new_tokens})


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The meta file's "summary": counts per (source, language) of prompts, prefix used and finished at EOS, the
    mean SSI score where recorded, and the totals."""
    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        g = groups.setdefault(f"{r['source']}/{r['language']}", {"prompts": 0, "prefix_used": 0, "eos": 0,
                                                                  "ssi_scores": []})
        g["prompts"] += 1
        g["prefix_used"] += int(r["prefix_used"])
        g["eos"] += int(r["finish_reason"] == "eos")
        if r["ssi_score"] is not None:
            g["ssi_scores"].append(r["ssi_score"])
    for g in groups.values():
        scores = g.pop("ssi_scores")
        g["mean_ssi_score"] = float(np.mean(scores)) if scores else None
    total = len(records)
    return {"prompts": total, "prefix_used": sum(g["prefix_used"] for g in groups.values()),
            "finished_at_eos": sum(g["eos"] for g in groups.values()), "by_source_language": groups,
            "prefix_rate": sum(g["prefix_used"] for g in groups.values()) / total if total else None}


def _ssi_threshold_text(meta: dict) -> str:
    """The SSI decision threshold of a generation meta record: the logit it compares (and its probability)."""
    if meta.get("ssi_threshold_logit") is not None:
        return f"logit {meta['ssi_threshold_logit']:.3f} (p {meta['ssi_threshold']:.4f})"
    return f"p {meta['ssi_threshold']:.4f}"


def report_lines(stage_dir: str, output: str = "generations.jsonl") -> list[str]:
    """The pipeline report's lines: prompts, prefix use (with the SSI threshold), EOS count, the file link."""
    meta_path = os.path.join(stage_dir, output + META_SUFFIX)
    meta = read_json(meta_path) if storage.isfile(meta_path) else None
    lines = []
    if meta and meta.get("summary"):
        s = meta["summary"]
        gate = (f" (SSI threshold {_ssi_threshold_text(meta)} at residual index {meta['ssi_residual_index']})"
                if meta.get("ssi_threshold") is not None else "")
        lines.append(f"{s['prompts']} prompts, conditional prefix used on {s['prefix_used']}{gate}; "
                     f"{s['finished_at_eos']} finished at EOS.")
    return lines + [f"- {report_link(stage_dir, output)}"]
