"""The generate stage (`python -m lasa_jax.scripts.generate`, `configs/generate.py`): eval prompts -> SSI decisions
on the base model -> responses -> `<workdir>/<output>` (+ `<output>.meta.json`).

Modes (`lasa_jax.decoding.answers` for the record format and the LASA method): "lasa" scores with the SSI on the base
model, frees it, and generates with the aligned model; "prefix_only" generates with that same base model (loaded
once); "baseline" generates with `model_path` and records SSI scores only when an SSI is given. The meta file holds
models, fingerprints, decoding, stop tokens, counts and timings. Stage contract: `lasa_jax.stage`.

`settings` reads the stage's own fields; the shared base-config fields (model_path, dtype, compute_dtype) are read by
`runtime.load_model` from `GenerateSettings.section`, the validated config section itself.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from lasa_jax.data.eval_sets import EvalSetSelection, HubSetOptions
from lasa_jax.decoding.answers import (
    GATED_MODES,
    MODES,
    PARTIAL_SUFFIX,
    Decoding,
    generate_responses,
    prefix_decisions,
    stop_token_ids,
    summarize,
    write_generations,
)
from lasa_jax.infra import storage
from lasa_jax.infra.base_config import comma_list
from lasa_jax.infra.base_config import template_kwargs as config_template_kwargs
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import atomic_write_json, read_json
from lasa_jax.models.loading import load_model, load_tokenizer, read_model_settings
from lasa_jax.stage import StageResult, as_settings, report_link

log = logging.getLogger(__name__)
NAME = "generate"
META_SUFFIX = ".meta.json"


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    """The generate stage's settings (configs/generate.py). model_path: the model that generates; base_model_path:
    the frozen model the SSI reads ("" = no SSI); prefix_only: both are the base model."""

    mode: str
    model_path: str
    base_model_path: str
    ssi_dir: str
    tokenizer_path: str
    prefix: str
    template_kwargs: Mapping[str, Any]
    max_prompt_length: int | None
    eval_sets: EvalSetSelection
    decoding: Decoding
    eos_token_ids: tuple[int, ...]
    output: str
    chunk_size: int
    resume: bool
    progress: bool
    section: Any = dataclasses.field(repr=False, compare=False, default=None)

    @property
    def scores(self) -> bool:
        """Whether the SSI scores the prompts (gated modes, or a baseline that records scores)."""
        return self.mode in GATED_MODES or bool(self.ssi_dir)


def eval_set_selection(config) -> EvalSetSelection:
    """The eval_sets, data_root, languages, max_per_language(_sets) and hub fields of a generate config."""
    hub = config.hub
    field_map = json.loads(hub.field_map) if hub.field_map else None
    if field_map is not None and not isinstance(field_map, dict):
        raise InputError(f"{config_field('hub.field_map')} must be a JSON object, got {hub.field_map!r}")
    specs = tuple(comma_list(config.eval_sets))
    if not specs:
        raise InputError(f"{config_field('eval_sets')} is empty")
    limit_sets = tuple(comma_list(config.get("max_per_language_sets", ""))) or None
    unknown = sorted(set(limit_sets or ()) - set(specs))
    if unknown:
        raise InputError(f"{config_field('max_per_language_sets')}: {unknown} not in {config_field('eval_sets')} "
                         f"{list(specs)}")
    return EvalSetSelection(specs, data_root=config.data_root, languages=tuple(comma_list(config.languages)) or None,
                            max_per_language=int(config.max_per_language),
                            hub=HubSetOptions(name=hub.name or None, split=hub.split, expected=hub.expected or None,
                                              language=hub.language or None, field_map=field_map),
                            limit_sets=limit_sets)


def _model_paths(config) -> tuple[str, str]:
    """(model that generates, base model the SSI reads or ""); prefix_only generates with the base model, so
    base_model_path defaults to model_path there and the two must not differ."""
    if config.mode not in MODES:
        raise InputError(f"{config_field('mode')}: expected one of {MODES}, got {config.mode!r}")
    base = config.base_model_path
    if config.mode == "prefix_only":
        base = base or config.model_path
        if config.model_path and os.path.abspath(config.model_path) != os.path.abspath(base):
            raise InputError(f"mode prefix_only generates with the base model the SSI reads: "
                             f"{config_field('model_path')} ({config.model_path!r}) must be empty or equal to "
                             f"{config_field('base_model_path')} ({config.base_model_path!r})")
        return base, base
    return config.model_path, base


def settings(config) -> GenerateSettings:
    """Read and validate a generate config section."""
    model_path, base_model_path = _model_paths(config)
    if (config.mode in GATED_MODES or config.ssi_dir) and (not config.ssi_dir or not base_model_path):
        raise InputError(f"mode {config.mode!r} (or recording SSI scores) needs {config_field('ssi_dir')} and "
                         f"{config_field('base_model_path')} (the frozen base model the SSI reads)")
    d = config.decoding
    decoding = Decoding(max_new_tokens=int(d.max_new_tokens), temperature=float(d.temperature), top_p=float(d.top_p),
                        top_k=int(d.top_k), seed=int(config.seed), batch_size=int(d.batch_size))
    if int(config.chunk_size) < 1:
        raise InputError(f"{config_field('chunk_size')} must be >= 1, got {config.chunk_size}")
    return GenerateSettings(
        mode=config.mode, model_path=model_path, base_model_path=base_model_path, ssi_dir=config.ssi_dir,
        tokenizer_path=config.tokenizer_path, prefix=config.prefix, template_kwargs=config_template_kwargs(config),
        max_prompt_length=int(config.max_prompt_length) or None, eval_sets=eval_set_selection(config),
        decoding=decoding, eos_token_ids=tuple(int(i) for i in comma_list(config.eos_token_ids)),
        output=config.output, chunk_size=int(config.chunk_size), resume=bool(config.resume),
        progress=bool(config.progress), section=config)


def _ssi_decisions(s: GenerateSettings, prompts, mesh, meta: dict[str, Any]):
    """(scores, flags, the base model when it also generates (prefix_only) else None); the base model is freed
    otherwise before the generating model is loaded."""
    if not s.scores:
        return (*prefix_decisions(s.mode, prompts), None)
    from lasa_jax.ssi.artifact import SSIScorer, load_ssi

    base = load_model(read_model_settings(s.section), mesh, path=s.base_model_path)
    scorer = SSIScorer(base, load_ssi(s.ssi_dir), batch_size=s.decoding.batch_size, progress=s.progress)
    meta.update(base_model_path=s.base_model_path, base_fingerprint=base.fingerprint, ssi_dir=s.ssi_dir,
                ssi_threshold=scorer.threshold, ssi_threshold_logit=getattr(scorer, "threshold_logit", None),
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
    meta: dict[str, Any] = {"mode": s.mode, "model_path": s.model_path, "eval_sets": ",".join(s.eval_sets.specs),
                            "template_kwargs": dict(s.template_kwargs), "prefix": s.prefix}
    log.info("%d prompts from %s, mode %s", len(prompts), meta["eval_sets"], s.mode)
    start = time.perf_counter()
    scores, flags, model = _ssi_decisions(s, prompts, mesh, meta)
    meta["ssi_seconds"] = time.perf_counter() - start
    if model is None:
        model = load_model(read_model_settings(s.section), mesh, path=s.model_path)
    tokenizer = load_tokenizer(s.tokenizer_path or s.model_path)
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
