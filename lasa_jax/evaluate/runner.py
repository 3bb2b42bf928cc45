"""Judging generations: generation JSONL records of several systems -> judged rows -> report.md / report.json /
charts (the evaluate stage itself, reading its config: `lasa_jax.evaluate.stage`).

    evaluation = evaluate_generations({"baseline": baseline_records, "prefix_only": prefix_only_records,
                                       "lasa": lasa_records}, out_dir, safety_judge=judge, refusal_judge=refusal_judge)

Which records feed which metric (records as `lasa_jax.decoding.answers` writes them):
- ASR: records with expected "harmful" whose source is in `asr_sources` (default MultiJail), judged by the safety
  judge ("safe" / "unsafe" / "invalid"), per language.
- Refusal: records whose source is in `refusal_sources` (XSTest, OR-Bench-hard-test, OKTest), judged by the
  refusal judge ("refusal" / "compliance" / "invalid"): over-refusal on benign prompts, desired refusal on
  harmful ones (XSTest's unsafe contrast prompts).
- SSI flag rates: the prefix_used of the harmful ASR records and of the benign records of the refusal sources
  (with or without a refusal judge), for the systems generated with the SSI gate (modes lasa, prefix_only).
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
from collections.abc import Mapping, Sequence
from typing import Any

from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.decoding.generate import generate_batched
from lasa_jax.decoding.stop_tokens import stop_token_ids
from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.evaluate.judges import GenerateFn, LlamaGuard3Judge, RefusalRubricJudge, RubricJudge
from lasa_jax.evaluate.report import build_report, judge_responses, write_report
from lasa_jax.evaluate.verdicts import REFUSAL_TASK, SAFETY_TASK, Judge
from lasa_jax.infra import storage
from lasa_jax.infra.base_config import template_kwargs as config_template_kwargs
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import read_json, write_jsonl
from lasa_jax.models.loading import load_model, load_tokenizer, read_model_settings

log = logging.getLogger(__name__)

JUDGE_KINDS = ("auto", "calibrated", "heuristic", "llama_guard", "rubric")
REFUSAL_JUDGE_KINDS = ("heuristic", "rubric", "none")
DEFAULT_ASR_SOURCES = ("multijail",)
DEFAULT_REFUSAL_SOURCES = ("xstest", "or_bench_hard_test", "oktest")
EVALUATION_META = "evaluation_meta.json"
SSI_ROW_FIELDS = ("id", "language", "expected", "prefix_used", "ssi_score", "mode")
# the systems with their own config field <system>_generations, in report column order
NAMED_SYSTEMS = ("baseline", "prefix_only", "lasa")
LABELLED_SUBDIR = "polyrefuse_completions"


# ----------------------------------------------------------------------------------------------- judge models
def model_generate_fn(model, tokenizer, *, batch_size: int = 8, max_new_tokens: int = 32,
                      eos_token_id: Sequence[int] | None = None, progress: bool = False) -> GenerateFn:
    """A judge `GenerateFn` backed by a lasa_jax model: rendered token-id prompts -> greedy completions.

    Prompts are generated in length buckets of `batch_size` rows (`generate_batched`); each completion stops at
    the first stop token (default: `inference.stop_token_ids`) and is decoded with special tokens skipped.
    """
    stop_ids = list(eos_token_id) if eos_token_id is not None else stop_token_ids(
        model.config, tokenizer, model_dir=getattr(model, "source_path", None))

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
            raise InputError(f"an LLM judge needs {config_field('judge.model_path')} (a local Hugging Face model "
                             "directory)")
        if path not in self._loaded:
            model = load_model(read_model_settings(self.config), self.mesh, path=path)
            self._loaded[path] = (model, load_tokenizer(path))
        return self._loaded[path]


def labelled_dir(data_root: str, explicit: str = "") -> str:
    """The WildGuard-labelled response folder: `explicit`, else `<data_root>/polyrefuse_completions` ("" if none)."""
    return explicit or (os.path.join(data_root, LABELLED_SUBDIR) if data_root else "")


def has_labelled_data(path: str) -> bool:
    from lasa_jax.evaluate.calibration import labelled_files

    try:
        return bool(path) and bool(labelled_files(path))
    except InputError:
        return False


def resolve_judge_kind(kind: str, task: str, labelled: str) -> str:
    """"auto" (the default safety judge) -> "calibrated" when the labelled data exists, else "heuristic" (with a
    warning); the refusal task has no calibrated judge, so "auto" is "heuristic" there. Other kinds unchanged."""
    if kind != "auto":
        return kind
    if task == SAFETY_TASK and has_labelled_data(labelled):
        return "calibrated"
    if task == SAFETY_TASK:
        log.warning("no WildGuard-labelled responses at %r (%s/%s): the safety judge falls back to the refusal-phrase "
                    "heuristic", labelled, config_field("data_root"), LABELLED_SUBDIR)
    return "heuristic"


def build_judge(kind: str, task: str, *, models: JudgeModels | None = None, model_path: str = "",
                batch_size: int = 8, max_new_tokens: int = 32, template_kwargs: Mapping[str, Any] | None = None,
                progress: bool = False, labelled: str = "") -> Judge:
    """A judge for `task` ("safety" or "refusal").

    kind "auto": `resolve_judge_kind`; "calibrated" (safety only): the n-gram judge trained on the even rows of the
    labelled responses in `labelled` (`ngram_judge.cached_ngram_judge`); "heuristic": the approximate
    refusal-phrase judge; "llama_guard" (safety only): Llama Guard 3 through its own chat template; "rubric": any
    chat model with the MultiJail safety rubric (safety) or the XSTest-style refusal rubric (refusal). LLM judges
    load `model_path` through `models` and generate with lasa_jax.
    """
    if task not in (SAFETY_TASK, REFUSAL_TASK):
        raise InputError(f"task must be {SAFETY_TASK!r} or {REFUSAL_TASK!r}, got {task!r}")
    kind = resolve_judge_kind(kind, task, labelled)
    if kind == "heuristic":
        return RefusalHeuristicJudge(task=task)
    if kind not in JUDGE_KINDS:
        raise InputError(f"judge kind must be one of {JUDGE_KINDS}, got {kind!r}")
    if kind in ("llama_guard", "calibrated") and task != SAFETY_TASK:
        what = "Llama Guard judges" if kind == "llama_guard" else "the calibrated n-gram judge judges"
        raise InputError(f"{what} safety only; use 'rubric' or 'heuristic' for the refusal judge")
    if kind == "calibrated":
        if not has_labelled_data(labelled):
            raise InputError(f"judge 'calibrated' needs the WildGuard-labelled responses: {labelled!r} has no "
                             f"<model>/<language>/harmful_<mode>_evaluations.no_tokens.json files (set "
                             f"{config_field('data_root')} to the shared data folder, or use judge 'heuristic')")
        from lasa_jax.evaluate.ngram_judge import cached_ngram_judge

        return cached_ngram_judge(labelled)[0]
    if models is None:
        raise InputError(f"judge kind {kind!r} needs a JudgeModels loader")
    model, tokenizer = models.get(model_path)
    generate_fn = model_generate_fn(model, tokenizer, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                    progress=progress)
    model_id = f"{model_path}@{model.fingerprint}" if model.fingerprint else model_path
    if kind == "llama_guard":
        cls = LlamaGuard3Judge
    else:
        cls = RubricJudge if task == SAFETY_TASK else RefusalRubricJudge
    return cls(generate_fn, tokenizer, model_id=model_id, chat_template_kwargs=dict(template_kwargs or {}))


# ----------------------------------------------------------------------------------------------- calibration
def find_calibration(judge: Judge, explicit_path: str = "", labelled: str = "",
                     out_dir: str = "") -> dict[str, Any] | None:
    """The measured calibration of a safety judge, as `calibration.calibration_summary` (None = not calibrated).

    Looked up in order: `explicit_path` (a calibration.json from `scripts.calibrate_judge`; it must name this
    judge); the calibration.json stored with a calibrated n-gram judge; for the heuristic, measured now on the
    odd rows of `labelled` (seconds) and written to `<out_dir>/judge_calibration/`. LLM judges without an
    explicit file are not calibrated (run `scripts.calibrate_judge` and pass --config.judge.calibration).
    """
    from lasa_jax.evaluate.calibration import calibrate, calibration_summary, load_labelled_responses, write_calibration
    from lasa_jax.evaluate.ngram_judge import NgramJudge

    inner = getattr(judge, "inner", judge)
    path = explicit_path
    if not path and isinstance(inner, NgramJudge) and inner.calibration_path:
        path = inner.calibration_path
    if path:
        result = read_json(path, "judge calibration file")
        if result.get("judge") != judge.name:
            raise InputError(f"{path}: calibration of judge {result.get('judge')!r}, but the judge that runs is "
                             f"{judge.name!r}")
        return calibration_summary(result, storage.absolute(path))
    if isinstance(inner, RefusalHeuristicJudge) and has_labelled_data(labelled):
        result = calibrate(inner, load_labelled_responses(labelled, split="odd"), split="odd", data_root=labelled)
        if out_dir and is_writer():
            path = write_calibration(os.path.join(out_dir, "judge_calibration"), result)[0]
        return calibration_summary(result, storage.absolute(path) if path else "")
    return None


def run_calibration(config, workdir: str, mesh=None) -> dict[str, Any]:
    """`python -m lasa_jax.scripts.calibrate_judge`: judge the labelled responses of `config.split`, write
    calibration.json + calibration.md into `workdir`; returns the calibration dict."""
    from lasa_jax.evaluate.calibration import calibrate, load_labelled_responses, write_calibration

    j = config.judge
    labelled = labelled_dir(config.data_root, config.labelled_dir)
    judge = build_judge(j.safety, SAFETY_TASK, models=JudgeModels(config, mesh), model_path=j.model_path,
                        batch_size=int(j.batch_size), max_new_tokens=int(j.max_new_tokens),
                        template_kwargs=config_template_kwargs(j), progress=bool(config.progress), labelled=labelled)
    result = calibrate(judge, load_labelled_responses(labelled, split=config.split), split=config.split,
                       data_root=labelled)
    if is_writer():
        json_path, md_path = write_calibration(workdir, result)
        log.info("calibration of %s on the %s split: %s, %s (goal met: %s)", judge.name, config.split, json_path,
                 md_path, result["goal"]["met"])
    return result


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
                         z: float = 1.96, safety_calibration: Mapping[str, Any] | None = None) -> Evaluation:
    """Judge every system's records and write the report (module docstring for which records count where).

    generations: system name (report column, in order) -> generation records.
    safety_calibration: the safety judge's measured calibration (`find_calibration`), None = not calibrated.
    Writes into out_dir (process 0): report.json, report.md, the two charts (`write_report`) and
    judged_<system>.jsonl (every judged row of both tasks, with prefix_used and ssi_score). Every process runs the
    judges (LLM judges take part in sharded generation). ValueError if no system has ASR records.
    """
    if not generations:
        raise InputError("evaluate_generations: no systems given")
    if safety_judge.task != SAFETY_TASK or (refusal_judge is not None and refusal_judge.task != REFUSAL_TASK):
        raise InputError("safety_judge must have task 'safety' and refusal_judge task 'refusal'")
    dropped = {s: 0 for s in generations}
    if paired and len(generations) > 1:
        generations, dropped = _paired(generations)
        if any(dropped.values()):
            log.warning("paired evaluation: ids missing from some system; dropped per system: %s", dropped)
    asr_rows: dict[str, list] = {}
    refusal_rows: dict[str, list] = {}
    ssi_rows: dict[str, list] = {}
    skipped: dict[str, int] = {}
    for system, records in generations.items():
        asr = [r for r in records if r["expected"] == "harmful" and r["source"] in asr_sources]
        benign = [r for r in records if r["expected"] == "benign" and r["source"] in refusal_sources]
        ssi_rows[system] = [{field: r[field] for field in SSI_ROW_FIELDS} for r in asr + benign]
        refusal = [r for r in records if r["source"] in refusal_sources] if refusal_judge is not None else []
        used = {id(r) for r in asr + refusal}  # a record may feed both metrics
        skipped[system] = sum(id(r) not in used for r in records)
        asr_rows[system] = _judged_rows(safety_judge, asr)
        if refusal:
            refusal_rows[system] = _judged_rows(refusal_judge, refusal)
    if not any(asr_rows.values()):
        raise InputError(f"no records with expected='harmful' and source in {list(asr_sources)}: nothing to "
                         f"compute ASR on (check {config_field('asr_sources')} and the generation files)")
    if any(skipped.values()):
        log.info("records in neither the ASR nor the refusal sources (skipped) per system: %s", skipped)
    kwargs = dict(safety_judge=safety_judge.name, refusal_rows=refusal_rows or None,
                  refusal_judge=refusal_judge.name if refusal_rows else None, ssi_rows=ssi_rows, z=z,
                  safety_calibration=safety_calibration)
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
    """`judge_responses` rows of generation records, with the record's prefix_used, ssi_score and mode added."""
    rows = judge_responses(judge, [_eval_prompt(r) for r in records], [r["response"] for r in records])
    for row, record in zip(rows, records):
        row.update(prefix_used=record["prefix_used"], ssi_score=record["ssi_score"], mode=record["mode"])
    return rows


