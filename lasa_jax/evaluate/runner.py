"""Evaluation pipeline: generation JSONL files of several systems -> judged rows -> report.md / report.json / chart.

    evaluation = evaluate_generations({"baseline": baseline_records, "lasa": lasa_records}, out_dir,
                                      safety_judge=judge, refusal_judge=refusal_judge)

Which records feed which metric (records as `lasa_jax.inference` writes them):
- ASR: records with expected "harmful" whose source is in `asr_sources` (default MultiJail), judged by the safety
  judge ("safe" / "unsafe" / "invalid"), per language.
- Refusal: records whose source is in `refusal_sources` (XSTest, OR-Bench-hard-test, OKTest), judged by the
  refusal judge ("refusal" / "compliance" / "invalid"): over-refusal on benign prompts, desired refusal on
  harmful ones (XSTest's unsafe contrast prompts).
Other records are counted and skipped. With `paired=True` (default) and several systems, every system is evaluated
on the ids present in all systems, so the side-by-side numbers compare the same prompts.

LLM judges run through lasa_jax's own generator (`model_generate_fn`: greedy, batched, bucketed, on the mesh);
every judge is wrapped in `CachedJudge`, keyed by (prompt/response hash, judge name), so re-running an evaluation
only judges new responses.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.evaluate.judges import (REFUSAL_TASK, SAFETY_TASK, CachedJudge, GenerateFn, Judge, LlamaGuard3Judge,
                                      RefusalHeuristicJudge, RefusalRubricJudge, RubricJudge)
from lasa_jax.evaluate.report import build_report, judge_responses, write_report
from lasa_jax.generate import generate_batched
from lasa_jax.inference import read_generations, stop_token_ids
from lasa_jax.io_utils import atomic_write_json, sha256_file, write_jsonl
from lasa_jax.runtime import comma_list, is_writer, load_model, load_tokenizer
from lasa_jax.runtime import template_kwargs as config_template_kwargs

log = logging.getLogger(__name__)

JUDGE_KINDS = ("heuristic", "llama_guard", "rubric")
REFUSAL_JUDGE_KINDS = ("heuristic", "rubric", "none")
DEFAULT_ASR_SOURCES = ("multijail",)
DEFAULT_REFUSAL_SOURCES = ("xstest", "or_bench_hard_test", "oktest")
EVALUATION_META = "evaluation_meta.json"


# ----------------------------------------------------------------------------------------------- judge models
def model_generate_fn(model, tokenizer, *, batch_size: int = 8, max_new_tokens: int = 32,
                      eos_token_id: Sequence[int] | None = None, progress: bool = False) -> GenerateFn:
    """A judge `GenerateFn` backed by a lasa_jax model: rendered token-id prompts -> greedy completions.

    Prompts are generated in length buckets of `batch_size` rows (`generate_batched`); each completion stops at
    the first stop token (default: `inference.stop_token_ids`) and is decoded with special tokens skipped.
    """
    stop_ids = list(eos_token_id) if eos_token_id is not None else stop_token_ids(model.config, tokenizer)

    def generate_fn(prompt_token_ids: list[list[int]]) -> list[str]:
        outputs = generate_batched(model, prompt_token_ids, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   eos_token_id=stop_ids, progress=progress)
        return [tokenizer.decode(tokens.tolist(), skip_special_tokens=True) for tokens, _ in outputs]

    return generate_fn


class JudgeModels:
    """Loads each judge model (and tokenizer) once per path, with the evaluation config's dtype and mesh."""

    def __init__(self, config, mesh=None):
        self.config = config
        self.mesh = mesh
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def get(self, path: str) -> tuple[Any, Any]:
        if not path:
            raise ValueError("an LLM judge needs --config.judge.model_path (a local Hugging Face model directory)")
        if path not in self._loaded:
            self._loaded[path] = (load_model(self.config, self.mesh, path=path), load_tokenizer(path))
        return self._loaded[path]


def build_judge(kind: str, task: str, *, models: JudgeModels | None = None, model_path: str = "",
                batch_size: int = 8, max_new_tokens: int = 32, template_kwargs: Mapping[str, Any] | None = None,
                progress: bool = False) -> Judge:
    """A judge for `task` ("safety" or "refusal").

    kind "heuristic": the approximate refusal-phrase judge; "llama_guard" (safety only): Llama Guard 3 through its
    own chat template; "rubric": any chat model with the MultiJail safety rubric (safety) or the XSTest-style
    refusal rubric (refusal). LLM judges load `model_path` through `models` and generate with lasa_jax.
    """
    if task not in (SAFETY_TASK, REFUSAL_TASK):
        raise ValueError(f"task must be {SAFETY_TASK!r} or {REFUSAL_TASK!r}, got {task!r}")
    if kind == "heuristic":
        return RefusalHeuristicJudge(task=task)
    if kind not in ("llama_guard", "rubric"):
        raise ValueError(f"judge kind must be one of {JUDGE_KINDS}, got {kind!r}")
    if kind == "llama_guard" and task != SAFETY_TASK:
        raise ValueError("Llama Guard judges safety only; use 'rubric' or 'heuristic' for the refusal judge")
    if models is None:
        raise ValueError(f"judge kind {kind!r} needs a JudgeModels loader")
    model, tokenizer = models.get(model_path)
    generate_fn = model_generate_fn(model, tokenizer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    progress=progress)
    model_id = f"{model_path}@{model.fingerprint}" if model.fingerprint else model_path
    if kind == "llama_guard":
        cls = LlamaGuard3Judge
    else:
        cls = RubricJudge if task == SAFETY_TASK else RefusalRubricJudge
    return cls(generate_fn, tokenizer, model_id=model_id, chat_template_kwargs=dict(template_kwargs or {}))


# ----------------------------------------------------------------------------------------------- pipeline
def _eval_prompt(record: Mapping[str, Any]) -> EvalPrompt:
    return EvalPrompt(id=record["id"], language=record["language"], prompt=record["prompt"],
                      source=record["source"], expected=record["expected"], category=record.get("category"))


def _paired(generations: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[dict[str, list], dict[str, int]]:
    """Keep, in every system, the records whose id every system has; returns (kept, dropped count per system)."""
    common = set.intersection(*(set(r["id"] for r in records) for records in generations.values()))
    kept = {s: [r for r in records if r["id"] in common] for s, records in generations.items()}
    return kept, {s: len(generations[s]) - len(kept[s]) for s in generations}


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Result of `evaluate_generations`: the report dict (as in report.json) and record counts per system
    (dropped_unpaired, skipped: in neither source list, asr_rows, refusal_rows)."""

    report: dict[str, Any]
    counts: dict[str, dict[str, int]]


def evaluate_generations(generations: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | os.PathLike, *,
                         safety_judge: Judge, refusal_judge: Judge | None = None,
                         asr_sources: Sequence[str] = DEFAULT_ASR_SOURCES,
                         refusal_sources: Sequence[str] = DEFAULT_REFUSAL_SOURCES, paired: bool = True,
                         z: float = 1.96) -> Evaluation:
    """Judge every system's records and write the report (module docstring for which records count where).

    generations: system name (report column, in order) -> generation records.
    Writes into out_dir (process 0): report.json, report.md, asr_by_language.png (`write_report`) and
    judged_<system>.jsonl (every judged row of both tasks, with prefix_used and ssi_score). Every process runs the
    judges (LLM judges take part in sharded generation). ValueError if no system has ASR records.
    """
    if not generations:
        raise ValueError("evaluate_generations: no systems given")
    if safety_judge.task != SAFETY_TASK or (refusal_judge is not None and refusal_judge.task != REFUSAL_TASK):
        raise ValueError("safety_judge must have task 'safety' and refusal_judge task 'refusal'")
    dropped = {s: 0 for s in generations}
    if paired and len(generations) > 1:
        generations, dropped = _paired(generations)
        if any(dropped.values()):
            log.warning("paired evaluation: ids missing from some system; dropped per system: %s", dropped)
    asr_rows: dict[str, list] = {}
    refusal_rows: dict[str, list] = {}
    skipped: dict[str, int] = {}
    for system, records in generations.items():
        asr = [r for r in records if r["expected"] == "harmful" and r["source"] in asr_sources]
        refusal = [r for r in records if r["source"] in refusal_sources] if refusal_judge is not None else []
        used = {id(r) for r in asr + refusal}  # a record may feed both metrics
        skipped[system] = sum(id(r) not in used for r in records)
        asr_rows[system] = _judged_rows(safety_judge, asr)
        if refusal:
            refusal_rows[system] = _judged_rows(refusal_judge, refusal)
    if not any(asr_rows.values()):
        raise ValueError(f"no records with expected='harmful' and source in {list(asr_sources)}: nothing to "
                         "compute ASR on (check --config.asr_sources and the generation files)")
    if any(skipped.values()):
        log.info("records in neither the ASR nor the refusal sources (skipped) per system: %s", skipped)
    kwargs = dict(safety_judge=safety_judge.name, refusal_rows=refusal_rows or None,
                  refusal_judge=refusal_judge.name if refusal_rows else None, z=z)
    if is_writer():
        for system in generations:
            write_jsonl(os.path.join(out_dir, f"judged_{system}.jsonl"),
                        asr_rows[system] + refusal_rows.get(system, []))
        report = write_report(out_dir, asr_rows, **kwargs)
    else:
        report = build_report(asr_rows, **kwargs)
    counts = {"dropped_unpaired": dropped, "skipped": skipped, "asr_rows": {s: len(r) for s, r in asr_rows.items()},
              "refusal_rows": {s: len(r) for s, r in refusal_rows.items()}}
    return Evaluation(report, counts)


def _judged_rows(judge: Judge, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`judge_responses` rows of generation records, with the record's prefix_used and ssi_score added."""
    rows = judge_responses(judge, [_eval_prompt(r) for r in records], [r["response"] for r in records])
    for row, record in zip(rows, records):
        row.update(prefix_used=record["prefix_used"], ssi_score=record["ssi_score"])
    return rows


def _process_cache_path(cache_path: str) -> str:
    """Process 0 appends to the shared judge cache; other processes append to a private copy of it, so every
    process starts from the same verdicts (and issues the same judge calls) without concurrent writers."""
    if is_writer():
        return cache_path
    import shutil
    import tempfile

    fd, private = tempfile.mkstemp(prefix="judge_cache.", suffix=".jsonl")
    os.close(fd)
    if os.path.exists(cache_path):
        shutil.copyfile(cache_path, private)
    return private


def run_evaluation(config, workdir: str, mesh=None) -> dict[str, Any]:
    """The evaluate stage (`python -m lasa_jax.scripts.evaluate`): read the systems' generation files, build the
    cached judges, `evaluate_generations` into `workdir`, and write `evaluation_meta.json` (inputs with sha256,
    judges, cache hits/misses, counts). Returns the report dict."""
    systems = {"baseline": config.baseline_generations, "lasa": config.lasa_generations}
    systems = {name: path for name, path in systems.items() if path}
    if not systems:
        raise ValueError("give --config.baseline_generations and/or --config.lasa_generations (generation JSONL "
                         "files written by lasa_jax.scripts.generate)")
    generations = {name: read_generations(path) for name, path in systems.items()}
    j = config.judge
    if j.safety not in JUDGE_KINDS or j.refusal not in REFUSAL_JUDGE_KINDS:
        raise ValueError(f"--config.judge.safety must be one of {JUDGE_KINDS} and --config.judge.refusal one of "
                         f"{REFUSAL_JUDGE_KINDS}; got {j.safety!r} and {j.refusal!r}")
    common = dict(models=JudgeModels(config, mesh), batch_size=int(j.batch_size),
                  max_new_tokens=int(j.max_new_tokens), template_kwargs=config_template_kwargs(j),
                  progress=bool(config.progress))
    cache_dir = j.cache_dir or workdir
    cache_paths = {task: _process_cache_path(os.path.join(cache_dir, f"judge_cache_{task}.jsonl"))
                   for task in (SAFETY_TASK, REFUSAL_TASK)}  # one file per CachedJudge (one writer per file)
    safety = CachedJudge(build_judge(j.safety, SAFETY_TASK, model_path=j.model_path, **common),
                         cache_paths[SAFETY_TASK], batch_size=int(j.cache_batch_size))
    refusal = None
    if j.refusal != "none":
        refusal = CachedJudge(build_judge(j.refusal, REFUSAL_TASK, model_path=j.refusal_model_path or j.model_path,
                                          **common), cache_paths[REFUSAL_TASK], batch_size=int(j.cache_batch_size))
    evaluation = evaluate_generations(
        generations, workdir, safety_judge=safety, refusal_judge=refusal,
        asr_sources=comma_list(config.asr_sources), refusal_sources=comma_list(config.refusal_sources),
        paired=bool(config.paired), z=float(config.z))
    judges = [judge for judge in (safety, refusal) if judge is not None]
    report = _add_utility(config, workdir, mesh, evaluation.report)
    meta = {"inputs": {name: {"path": os.path.abspath(path), "sha256": sha256_file(path)}
                       for name, path in systems.items()},
            "safety_judge": safety.name, "refusal_judge": refusal.name if refusal else None,
            "judge_cache": {"dir": os.path.abspath(cache_dir), "hits": sum(judge.hits for judge in judges),
                            "misses": sum(judge.misses for judge in judges)},
            "paired": bool(config.paired), **evaluation.counts}
    if is_writer():
        atomic_write_json(os.path.join(workdir, EVALUATION_META), meta)
    log.info("report written to %s (safety judge %s)", workdir, safety.name)
    return report


def _add_utility(config, workdir: str, mesh, report: dict[str, Any]) -> dict[str, Any]:
    """The utility section (`lasa_jax.evaluate.utility.run_utility`) added to report.json / report.md."""
    if "utility" not in config:
        return report
    from lasa_jax.evaluate.report import attach_utility
    from lasa_jax.evaluate.utility import run_utility

    utility = run_utility(config, mesh, out_dir=workdir)
    if is_writer():
        return attach_utility(workdir, report, utility)
    report["utility"] = utility
    return report
