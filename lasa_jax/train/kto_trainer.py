"""Latent KTO training run (METHOD.md §5 with the fixes of §9): `train_kto(config, workdir, mesh)`.

Pipeline:
  rows (`data.format`; polyrefuse_completions of the run's model family by default, `completion_models`) ->
  held-out guard (`lasa_jax.data.heldout.guard_inputs`: rows holding a MultiJail / XSTest / OR-Bench-hard-test /
  OKTest prompt are dropped) -> + benign rows (`data.benign`: the base model's cached answers to PolyRefuse
  harmless-train prompts, `lasa_jax.data.benign`) -> latent labels (`labels.mode`: "paper" source-based proxy, or
  "ssi": the SSI's prediction on each prompt, scored with the frozen base model) -> token-level examples
  (`tokenize_rows`: the conditional prefix after the assistant header iff unsafe; over-long completions
  tail-truncated without end-of-turn) -> class weights (`balance_class_weights`: TRL's range check,
  `train.balance_weights`) -> fixed-shape global batches (`iterate_kto_batches`:
  seeded shuffle per epoch, KL rows paired by a derangement) -> jit-compiled steps (`kto_step.train_step`) ->
  orbax checkpoints -> Hugging Face export of the policy.

Models (all HF directories of one architecture). `model_path` is the base model: tokenizer and the trunk the SSI
scores prompts with (`labels.mode` "ssi": the SSI was trained on it). The policy starts from `init_from` (e.g. an SFT
checkpoint), else from `model_path`. The frozen reference is `reference.path`, by default the initial policy
(`init_from` if set, else `model_path`; TRL's default), so that every reward starts at 0; it is loaded in
`reference.dtype` and computes in the policy's compute dtype, so that reference and policy agree at step 0 up to
float rounding. Policy and reference are sharded on the mesh by the logical-axis rules (FSDP by default).
`reference.mode`:
  "online": the reference runs inside every step (about 6 forward-equivalents per row, ANCHORS.md);
  "precomputed": before training, one pass along the run's own deterministic batch sequence computes the
    reference log-probs of every policy row (once per row) and of every KL row the run will use (keyed by
    (row, partner row), since KL pairs are drawn per batch), stores them in `<workdir>/reference_logps.npz` and
    frees the reference; steps then read them from the table. Same numbers as online up to float reassociation.

Resume. Checkpoints live in `<workdir>/checkpoints` (`lasa_jax.checkpoint`): params, optimizer state, step, RNG key
and the data position. A rerun with the same workdir restores the newest complete checkpoint onto the same
shardings and continues with exactly the batches that followed it. The result is bit-identical to an uninterrupted
run when the kernels are deterministic: TPU by default; CPU with XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
(with multi-threaded Eigen, repeated CPU runs differed in the last bits); GPU with --xla_gpu_deterministic_ops=true.
The checkpoint records the run's identity (fingerprints of the base model, the initial policy and the reference,
architecture, data fingerprint (tokens, labels, prefix), seed, batch, sequence length, optimizer and loss
hyperparameters, dtypes); resuming with a different identity is a ValueError listing the differences. Reference
mode, remat, chunking, logging and checkpoint settings may change between runs.

Stops. SIGTERM: the current step finishes, a checkpoint is saved, `TrainResult.status` is "preempted" (the script
exits with `EXIT_PREEMPTED` = 75, EX_TEMPFAIL: rerun to resume). A NaN/inf loss or gradient norm raises
`NonFiniteLossError` naming the step; the bad state is never saved, the last good checkpoint stays.

Workdir files: config.json (`start_run`), data_summary.json (`prepare_examples`' summary: kept / truncated /
dropped per class, source and language, guard drops, benign rows, weights), metrics.jsonl + tensorboard/
(`MetricWriter`), checkpoints/, reference_logps.npz (precomputed mode), hf_export/ (or `export.path`),
run_summary.json (the result, with the data counts and the weights used).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from lasa_jax import io_utils
from lasa_jax.checkpoint import Checkpointer, check_run_identity
from lasa_jax.config import ModelConfig
from lasa_jax.data.heldout import guard_inputs
from lasa_jax.data.preference import (
    DataPosition,
    KTOBatch,
    KTOExample,
    PreferenceRow,
    assign_latent_labels,
    balance_class_weights,
    batches_per_epoch,
    convert_polyrefuse_completions,
    family_completion_models,
    iterate_kto_batches,
    load_paired_preference_json,
    load_unpaired_jsonl,
    tokenize_rows,
)
from lasa_jax.errors import InputError
from lasa_jax.io_utils import atomic_path, atomic_write_json, read_json
from lasa_jax.models import from_pretrained, model_fingerprint, save_pretrained
from lasa_jax.models.decoder import Decoder, abstract_decoder, param_shardings
from lasa_jax.models.hf import resolve_model_path
from lasa_jax.presets import device_peak_flops
from lasa_jax.runtime import comma_list, is_writer, load_tokenizer, template_kwargs
from lasa_jax.sharding import put_batch, to_host
from lasa_jax.train import kto_step
from lasa_jax.train.metric_writer import MetricWriter

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75
DATA_FORMATS = ("paired_json", "unpaired_jsonl", "polyrefuse_completions")
LABEL_MODES = ("paper", "ssi")
REFERENCE_MODES = ("online", "precomputed")
CHECKPOINT_DIR = "checkpoints"
REFERENCE_TABLE_FILE = "reference_logps.npz"
DATA_SUMMARY_FILE = "data_summary.json"
RUN_SUMMARY_FILE = "run_summary.json"
EXPORT_DIR = "hf_export"


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm of update `step` was NaN/inf; the run stopped without saving that state."""

    def __init__(self, step: int, last_checkpoint_step: int | None, metrics: Mapping[str, float]):
        self.step = step
        self.last_checkpoint_step = last_checkpoint_step
        super().__init__(f"non-finite KTO loss at step {step} (loss={metrics.get('loss')}, grad_norm="
                         f"{metrics.get('grad_norm')}); training stopped. Last good checkpoint: "
                         f"{'none' if last_checkpoint_step is None else f'step {last_checkpoint_step}'}")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """status "completed" (all steps done, policy exported) or "preempted" (SIGTERM, checkpoint saved)."""

    status: str
    step: int
    total_steps: int
    resumed_from: int | None
    export_dir: str | None


# ----------------------------------------------------------------------------------------------- data
def load_rows(data: ml_collections.ConfigDict,
              model_type: str | None = None) -> tuple[list[PreferenceRow], dict[str, Any]]:
    """Rows of `data.path` (comma-separated paths are concatenated) read as `data.format`, and loader counts.

    polyrefuse_completions: the model folders come from `data.polyrefuse.models` (`completion_models`: "auto"
    selects the family of `model_type`, the base model's config.json model_type).
    """
    if data.format not in DATA_FORMATS:
        raise InputError(f"--config.data.format must be one of {DATA_FORMATS}, got {data.format!r}")
    paths = [p.strip() for p in str(data.path).split(",") if p.strip()]
    if not paths:
        raise InputError("--config.data.path is required (a preference file, or the PolyRefuse completions root)")
    rows: list[PreferenceRow] = []
    counts: dict[str, Any] = {}
    for path in paths:
        if data.format == "paired_json":
            loaded = load_paired_preference_json(path)
        elif data.format == "unpaired_jsonl":
            loaded = load_unpaired_jsonl(path)
        else:
            pr = data.polyrefuse
            models, why = completion_models(pr.models, path, model_type)
            loaded, counts[path] = convert_polyrefuse_completions(
                path, models=models, languages=comma_list(pr.languages) or None,
                modes=comma_list(pr.modes), source=pr.source)
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
                    "(set --config.data.polyrefuse.models to choose)", model_type, root)
        return None, f"auto: no folder for model_type {model_type!r}, every model folder"
    return family, f"auto: the family of model_type {model_type!r}"


def _model_type(model_dir: str) -> str:
    """config.json's model_type of a local HF directory ("" when absent)."""
    return str(read_json(os.path.join(model_dir, "config.json"), "model config").get("model_type", ""))


def parse_unsafe_probs(spec: str) -> dict[str, float]:
    """"safety=0.5,ultrafeedback=0" -> {"safety": 0.5, "ultrafeedback": 0.0} (`labels.unsafe_prob_by_source`)."""
    probs = {}
    for item in comma_list(spec):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            probs[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"--config.labels.unsafe_prob_by_source: expected 'source=prob,...', got {spec!r}") \
                from None
    return probs


def label_rows(rows: Sequence[PreferenceRow], config: ml_collections.ConfigDict,
               base_model: Callable[[], Decoder]) -> list[PreferenceRow]:
    """Latent labels by `labels.mode`. "ssi" scores each distinct prompt text with the SSI on `base_model()` (the
    frozen `model_path` model the SSI was trained on, neither the initial policy nor the reference)."""
    labels = config.labels
    if labels.mode not in LABEL_MODES:
        raise InputError(f"--config.labels.mode must be one of {LABEL_MODES}, got {labels.mode!r}")
    if labels.mode == "paper":
        return assign_latent_labels(rows, "paper", unsafe_prob_by_source=parse_unsafe_probs(
            labels.unsafe_prob_by_source), default_prob=labels.default_prob, seed=labels.seed)
    if not labels.ssi_dir:
        raise InputError("--config.labels.ssi_dir is required with labels.mode='ssi' (a trained SSI directory)")
    from lasa_jax.ssi import SSIScorer, load_ssi

    model = base_model()
    shards = model.mesh.shape["data"] * model.mesh.shape["fsdp"] if model.mesh is not None else 1
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


# ----------------------------------------------------------------------------------------------- reference table
class ReferenceTable:
    """Precomputed reference log-probs: policy rows by row index, KL rows by (row index, partner row index)."""

    def __init__(self, policy: dict[int, float], kl: dict[tuple[int, int], float]):
        self.policy = policy
        self.kl = kl

    @classmethod
    def compute(cls, ref_params: Any, ref_config: ModelConfig, mesh, batches: Iterator[KTOBatch], num_batches: int,
                chunk_size: int, progress: bool = True) -> ReferenceTable:
        """Run the reference over the KL rows of every batch and the policy rows of batches with unseen rows."""
        policy: dict[int, float] = {}
        kl: dict[tuple[int, int], float] = {}
        bar = None
        if progress and is_writer():
            from tqdm import tqdm

            bar = tqdm(total=num_batches, desc="reference log-probs", unit="batch", dynamic_ncols=True)
        for _ in range(num_batches):
            batch = next(batches)
            valid = np.flatnonzero(batch.valid)
            rows = batch.row_index
            if any(int(rows[i]) not in policy for i in valid):
                logps = cls._logps(ref_params, ref_config, mesh, chunk_size, batch.input_ids,
                                   batch.attention_mask, batch.loss_mask)
                for i in valid:
                    policy.setdefault(int(rows[i]), float(logps[i]))
            logps = cls._logps(ref_params, ref_config, mesh, chunk_size, batch.kl_input_ids,
                               batch.kl_attention_mask, batch.kl_loss_mask)
            for i in valid:
                kl[(int(rows[i]), int(rows[batch.kl_partner[i]]))] = float(logps[i])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return cls(policy, kl)

    @staticmethod
    def _logps(ref_params, ref_config, mesh, chunk_size, *host_arrays) -> np.ndarray:
        arrays = put_batch(mesh, *host_arrays)
        return to_host(kto_step.batch_logps(ref_params, ref_config, *arrays, mesh=mesh, chunk_size=chunk_size))

    def lookup(self, batch: KTOBatch) -> dict[str, np.ndarray]:
        """(B,) float32 `ref_logps` and `kl_ref_logps` for a batch (0 on padding rows)."""
        ref = np.zeros(len(batch.valid), np.float32)
        kl_ref = np.zeros(len(batch.valid), np.float32)
        rows = batch.row_index
        for i in np.flatnonzero(batch.valid):
            ref[i] = self.policy[int(rows[i])]
            kl_ref[i] = self.kl[(int(rows[i]), int(rows[batch.kl_partner[i]]))]
        return {"ref_logps": ref, "kl_ref_logps": kl_ref}

    def save(self, path: str, identity: Mapping[str, Any]) -> None:
        """Write the table and the identity of the run it belongs to (.npz, atomic, process 0 only)."""
        if not is_writer():
            return
        policy_rows = np.array(sorted(self.policy), np.int64)
        kl_pairs = np.array(sorted(self.kl), np.int64).reshape(-1, 2)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, identity=np.array(json.dumps(identity, sort_keys=True)), policy_rows=policy_rows,
                         policy_logps=np.array([self.policy[int(r)] for r in policy_rows], np.float32),
                         kl_pairs=kl_pairs,
                         kl_logps=np.array([self.kl[(int(a), int(b))] for a, b in kl_pairs], np.float32))

    @classmethod
    def load(cls, path: str, identity: Mapping[str, Any]) -> ReferenceTable | None:
        """The table at `path` if it exists and belongs to a run with this identity, else None."""
        if not io_utils.isfile(path):
            return None
        with np.load(io_utils.for_reading(path), allow_pickle=False) as data:
            if str(data["identity"]) != json.dumps(identity, sort_keys=True):
                log.warning("%s belongs to another configuration; recomputing the reference log-probs", path)
                return None
            policy = dict(zip(data["policy_rows"].tolist(), data["policy_logps"].astype(np.float32).tolist()))
            kl = {(int(a), int(b)): float(v) for (a, b), v in zip(data["kl_pairs"], data["kl_logps"])}
        return cls(policy, kl)


# ----------------------------------------------------------------------------------------------- helpers
class _PreemptionSignal:
    """Context manager: SIGTERM sets `received` instead of killing the process (main thread only; the handler only
    sets the flag, the training loop acts on it)."""

    def __init__(self):
        self.received = False
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True

    def __enter__(self) -> _PreemptionSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)

    def any_process(self) -> bool:
        """Whether any process received SIGTERM (all processes must save the same step together)."""
        if jax.process_count() == 1:
            return self.received
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.int32(self.received))))


def _decoder_from_params(config: ModelConfig, params: Any, mesh, source_path: str) -> Decoder:
    """A `Decoder` holding `params` (for `save_pretrained`)."""
    graphdef, state = nnx.split(abstract_decoder(config, mesh))
    model = nnx.merge(graphdef, state)
    model.set_params(params)
    model.source_path = source_path
    return model


def _validate(config: ml_collections.ConfigDict, mesh) -> None:
    t = config.train
    if config.reference.mode not in REFERENCE_MODES:
        raise InputError(f"--config.reference.mode must be one of {REFERENCE_MODES}, got {config.reference.mode!r}")
    if t.batch_size < 2:
        raise InputError(f"--config.train.batch_size must be >= 2 (KL rows need a partner), got {t.batch_size}")
    if t.grad_accum_steps < 1 or t.batch_size % t.grad_accum_steps:
        raise InputError(f"--config.train.batch_size ({t.batch_size}) must be a multiple of "
                         f"--config.train.grad_accum_steps ({t.grad_accum_steps})")
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (t.batch_size // t.grad_accum_steps) % shards:
        raise InputError(f"the micro-batch (--config.train.batch_size / grad_accum_steps = "
                         f"{t.batch_size // t.grad_accum_steps}) must be a multiple of the mesh's data x fsdp = "
                         f"{shards} devices")
    if t.num_steps < 0 or (t.num_steps == 0 and t.num_epochs < 1):
        raise InputError(f"need --config.train.num_steps > 0 or --config.train.num_epochs >= 1, got "
                         f"num_steps={t.num_steps}, num_epochs={t.num_epochs}")
    if t.log_every_steps < 1:
        raise InputError(f"--config.train.log_every_steps must be >= 1, got {t.log_every_steps}")
    if not config.model_path:
        raise InputError("--config.model_path is required (the base model: a local Hugging Face directory)")


def _batch_stats(batch: KTOBatch, position: DataPosition, num_examples: int, policy_config: ModelConfig,
                 online_reference: bool) -> dict[str, float]:
    valid = batch.valid
    policy_lengths = batch.attention_mask.sum(axis=1)[valid]
    kl_lengths = batch.kl_attention_mask.sum(axis=1)[valid]
    useful, total = kto_step.step_flops(policy_config, policy_lengths, kl_lengths, online_reference)
    return {"tokens": float(policy_lengths.sum()), "flops_policy": useful, "flops_total": total,
            "kl_truncated": float(batch.num_kl_truncated), "kl_same_group": float(batch.num_kl_same_group),
            "epoch": position.epoch + position.index / num_examples}


# ----------------------------------------------------------------------------------------------- the run
def prepare_examples(config: ml_collections.ConfigDict, tokenizer,
                     base_model: Callable[[], Decoder]) -> tuple[list[KTOExample], dict[str, Any]]:
    """Rows -> held-out guard -> + benign rows -> latent labels -> token-level examples -> class weights.

    Returns (examples, summary): "load", "held_out", "benign", "tokenize" (kept / truncated / no_end_of_turn /
    dropped per class, source and language), "examples", "desirable", "undesirable", "weights"
    (`balance_class_weights`: the weights the run uses) and "data_fingerprint".
    """
    data = config.data
    model_dir = resolve_model_path(config.model_path)
    rows, load_counts = load_rows(data, _model_type(model_dir))
    guarded, held_out = guard_inputs({"rows": rows}, data.get("root", ""), "KTO data",
                                     allow_missing=bool(data.get("allow_missing_held_out", False)))
    rows = guarded["rows"]
    rows, benign = _with_benign_rows(rows, config, tokenizer, base_model, model_dir)
    rows = label_rows(rows, config, base_model)
    examples, token_counts = tokenize_rows(
        rows, tokenizer, prefix=config.prefix, max_length=data.max_length,
        max_prompt_length=data.max_prompt_length or None, template_kwargs=template_kwargs(config),
        truncate_completions=bool(data.get("truncate_completions", True)))
    num_desirable = sum(e.desirable for e in examples)
    t = config.train
    weights = balance_class_weights(num_desirable, len(examples) - num_desirable, t.desirable_weight,
                                    t.undesirable_weight, t.get("balance_weights", ""))
    summary = {"load": load_counts, "held_out": held_out, "benign": benign, "tokenize": token_counts,
               "examples": len(examples), "desirable": num_desirable,
               "undesirable": len(examples) - num_desirable, "weights": weights,
               "data_fingerprint": data_fingerprint(examples)}
    _log_data_summary(summary)
    return examples, summary


def _with_benign_rows(rows: list[PreferenceRow], config: ml_collections.ConfigDict, tokenizer,
                      base_model: Callable[[], Decoder], model_dir: str) -> tuple[list[PreferenceRow], dict]:
    """rows + benign rows making `data.benign.share` of them (`lasa_jax.data.benign`), held-out guarded."""
    from lasa_jax.assets import cache_dir
    from lasa_jax.data import benign as benign_data

    spec = config.data.benign
    wanted = benign_data.num_benign_rows(len(rows), float(spec.share))
    if wanted == 0:
        return rows, {"share": float(spec.share), "used": 0}
    if not config.data.get("root", ""):
        raise InputError("--config.data.benign.share > 0 needs --config.data.root (PolyRefuse harmless-train "
                         "prompts); set --config.data.benign.share=0 to train without benign rows")
    languages = comma_list(spec.languages) or sorted({r.language for r in rows if r.language})
    prompts = benign_data.benign_prompts(config.data.root, languages, min(wanted, int(spec.max_prompts)))
    generated, counts = benign_data.generate_benign_rows(
        base_model(), tokenizer, prompts, model_fingerprint=model_fingerprint(model_dir),
        cache_dir=spec.cache_dir or os.path.join(cache_dir(), "kto_benign"), max_new_tokens=int(spec.max_new_tokens),
        batch_size=int(spec.batch_size), template_kwargs=template_kwargs(config), progress=config.progress_bar)
    guarded, counts["held_out"] = guard_inputs({"benign": generated}, config.data.root, "KTO benign rows",
                                               allow_missing=bool(config.data.get("allow_missing_held_out", False)))
    mixed, mix = benign_data.mix_benign_rows(rows, guarded["benign"], float(spec.share))
    return mixed, {"share": float(spec.share), "languages": languages, **counts, **mix}


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


@dataclasses.dataclass(frozen=True)
class ModelDirs:
    """Resolved local HF directories of a run: base (`model_path`: tokenizer, SSI trunk), policy_init (`init_from`
    or base) and reference (`reference.path` or policy_init)."""

    base: str
    policy_init: str
    reference: str
    reference_flag: str  # the setting the reference directory comes from, for error messages

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ModelDirs:
        base = _resolve_flag("model_path", config.model_path)
        policy_init = _resolve_flag("init_from", config.init_from) if config.init_from else base
        if config.reference.path:
            return cls(base, policy_init, _resolve_flag("reference.path", config.reference.path), "reference.path")
        return cls(base, policy_init, policy_init, "init_from" if config.init_from else "model_path")


def _resolve_flag(flag: str, value: str) -> str:
    """`resolve_model_path(value)` with errors naming --config.<flag>."""
    try:
        return resolve_model_path(value)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"--config.{flag}: {e}") from None


def _check_architecture(model_config: ModelConfig, policy_config: ModelConfig, flag: str, directory: str) -> None:
    """ValueError unless the model loaded from --config.<flag> has the architecture of --config.model_path."""
    if model_config.to_hf_dict() != policy_config.to_hf_dict():
        raise InputError(f"--config.{flag}={directory}: architecture differs from --config.model_path (policy, "
                         "reference and base model must share one architecture and tokenizer)")


def run_identity(config: ml_collections.ConfigDict, model_dirs: ModelDirs, policy_config: ModelConfig,
                 data_summary: Mapping[str, Any], optimizer_config: kto_step.OptimizerConfig) -> dict[str, Any]:
    """What a checkpoint must share with a run that resumes it (module docstring). Weights are identified by
    fingerprint, not path: "policy_init" is "model_path" without `init_from`; "reference" is always the reference
    weights' fingerprint (whichever directory they come from)."""
    t = config.train
    return {
        "model": {"fingerprint": model_fingerprint(model_dirs.base), "architecture": policy_config.to_hf_dict()},
        "policy_init": model_fingerprint(model_dirs.policy_init) if config.init_from else "model_path",
        "reference": model_fingerprint(model_dirs.reference),
        "data": {"fingerprint": data_summary["data_fingerprint"], "examples": data_summary["examples"]},
        "seed": config.seed,
        "dtypes": {"params": policy_config.param_dtype, "compute": policy_config.compute_dtype,
                   "reference": config.reference.dtype or config.dtype},
        "batch": {"batch_size": t.batch_size, "grad_accum_steps": t.grad_accum_steps,
                  "seq_len": config.data.max_length, "drop_last": t.drop_last,
                  "total_steps": optimizer_config.total_steps},
        "optimizer": dataclasses.asdict(optimizer_config),
        "loss": {"beta": t.beta, "desirable_weight": data_summary["weights"]["desirable_weight"],
                 "undesirable_weight": data_summary["weights"]["undesirable_weight"]},
    }


def train_kto(config: ml_collections.ConfigDict, workdir: str, mesh) -> TrainResult:
    """Train (or resume) the Latent KTO run described by `config` (configs/kto.py) in `workdir` on `mesh`."""
    _validate(config, mesh)
    t = config.train
    online = config.reference.mode == "online"
    model_dirs = ModelDirs.from_config(config)
    model_dir = model_dirs.base
    compute_dtype = config.compute_dtype or config.dtype
    reference_dtype = config.reference.dtype or config.dtype
    policy_config = ModelConfig.from_pretrained(model_dir, param_dtype=config.dtype, compute_dtype=compute_dtype,
                                                scan_layers=config.scan_layers, remat_policy=config.remat_policy)
    ref_config = policy_config.replace(param_dtype=reference_dtype, remat_policy="none")
    frozen: dict[str, Decoder] = {}  # frozen models (SSI trunk, reference) by directory, each loaded at most once

    def frozen_model(directory: str, flag: str) -> Decoder:
        if directory not in frozen:
            model = from_pretrained(directory, dtype=reference_dtype, mesh=mesh, compute_dtype=compute_dtype,
                                    scan_layers=config.scan_layers)
            _check_architecture(model.config, policy_config, flag, directory)
            frozen[directory] = model
        return frozen[directory]

    # data (SSI labels score prompts on the base model; it is kept only if it is also the reference)
    tokenizer = load_tokenizer(model_dir, require_chat_template=True)
    examples, data_summary = prepare_examples(config, tokenizer, lambda: frozen_model(model_dir, "model_path"))
    if model_dir != model_dirs.reference:
        frozen.pop(model_dir, None)
    per_epoch = batches_per_epoch(len(examples), t.batch_size, t.drop_last)
    if per_epoch == 0:
        raise InputError(f"{len(examples)} training examples give no batch of --config.train.batch_size="
                         f"{t.batch_size}")
    total_steps = t.num_steps if t.num_steps > 0 else t.num_epochs * per_epoch
    pad_id = policy_config.pad_token_id if policy_config.pad_token_id is not None else (tokenizer.pad_token_id or 0)
    data_summary.update(batches_per_epoch=per_epoch, total_steps=total_steps)
    if is_writer():
        io_utils.makedirs(workdir)
        atomic_write_json(os.path.join(workdir, DATA_SUMMARY_FILE), data_summary)
    tokenize_counts = data_summary["tokenize"]
    log.info("KTO data: %d examples of %d rows (truncated: %s; dropped as too long: %s), %d batches per epoch, "
             "%d steps", len(examples), tokenize_counts["rows"],
             {label: c["truncated"] for label, c in tokenize_counts["by_class"].items()},
             {label: c["dropped_too_long"] for label, c in tokenize_counts["by_class"].items()}, per_epoch,
             total_steps)

    def batches(start: DataPosition) -> Iterator[tuple[KTOBatch, DataPosition]]:
        return iterate_kto_batches(examples, batch_size=t.batch_size, seq_len=config.data.max_length,
                                   pad_id=pad_id, seed=config.seed, start=start,
                                   num_epochs=None if t.num_steps > 0 else t.num_epochs, drop_last=t.drop_last)

    # optimizer, identity, shardings
    optimizer_config = kto_step.OptimizerConfig(
        learning_rate=t.learning_rate, total_steps=total_steps, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, max_grad_norm=t.max_grad_norm)
    weights = data_summary["weights"]
    step_config = kto_step.KTOStepConfig(beta=t.beta, desirable_weight=weights["desirable_weight"],
                                         undesirable_weight=weights["undesirable_weight"],
                                         grad_accum_steps=t.grad_accum_steps, logits_chunk_size=t.logits_chunk_size)
    identity = run_identity(config, model_dirs, policy_config, data_summary, optimizer_config)
    optimizer = kto_step.make_optimizer(optimizer_config)
    abstract_model = abstract_decoder(policy_config, mesh)
    abstract_params = abstract_model.params()
    shardings = kto_step.state_shardings(optimizer, abstract_params, param_shardings(abstract_model, mesh), mesh)
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=config.checkpoint.max_to_keep,
                                async_save=config.checkpoint.async_save)
    try:
        resumed_from = checkpointer.latest_step()
        if resumed_from is not None:
            check_run_identity(checkpointer.restore_meta(resumed_from).get("identity", {}), identity,
                               f"checkpoint {checkpointer.directory}/{resumed_from}")

        # reference: its parameters (online), or the precomputed table (then the reference model is dropped)
        ref_params, table = None, None
        def reference_params():
            return frozen_model(model_dirs.reference, model_dirs.reference_flag).params()

        if online:
            ref_params = reference_params()
        else:
            table_identity = {key: identity[key] for key in ("model", "reference", "data", "seed", "dtypes", "batch")}
            table_identity["logits_chunk_size"] = t.logits_chunk_size
            table_path = os.path.join(workdir, REFERENCE_TABLE_FILE)
            table = ReferenceTable.load(table_path, table_identity)
            if table is None:
                table = ReferenceTable.compute(reference_params(), ref_config, mesh,
                                               (b for b, _ in batches(DataPosition())), total_steps,
                                               t.logits_chunk_size, progress=config.progress_bar)
                table.save(table_path, table_identity)
        frozen.clear()

        # policy state: restored onto its shardings, or initialised from init_from / model_path
        if resumed_from is not None:
            state, meta = checkpointer.restore(resumed_from, kto_step.abstract_state(optimizer, abstract_params,
                                                                                     shardings))
            position = DataPosition.from_dict(meta["data_position"])
            log.info("resumed from checkpoint step %d (data position %s)", resumed_from, position)
        else:
            policy = from_pretrained(model_dirs.policy_init, dtype=config.dtype, mesh=mesh,
                                     compute_dtype=compute_dtype, scan_layers=config.scan_layers,
                                     remat_policy=config.remat_policy)
            _check_architecture(policy.config, policy_config, "init_from", model_dirs.policy_init)
            state = kto_step.init_train_state(policy.params(), optimizer, config.seed, shardings,
                                              donate_params=True)
            del policy
            position = DataPosition()

        step_fn = kto_step.make_train_step(policy_config=policy_config, ref_config=ref_config if online else None,
                                           optimizer_config=optimizer_config, step_config=step_config, mesh=mesh,
                                           shardings=shardings)
        status, state, step = _loop(config, workdir, mesh, step_fn, state, ref_params, table, checkpointer,
                                    batches(position), identity=identity, start_step=int(resumed_from or 0),
                                    total_steps=total_steps, num_examples=len(examples),
                                    policy_config=policy_config, online=online)
        checkpointer.wait_until_finished()
        export_dir = None
        if status == "completed" and config.export.enabled:
            export_dir = config.export.path or os.path.join(workdir, EXPORT_DIR)
            save_pretrained(_decoder_from_params(policy_config, state["params"], mesh, model_dir), export_dir,
                            dtype=config.export.dtype or config.dtype, overwrite=True, tokenizer_source=model_dir)
            log.info("exported the policy to %s", export_dir)
    finally:
        checkpointer.close()
    result = TrainResult(status, step, total_steps, resumed_from, export_dir)
    if is_writer():
        data_counts = {key: data_summary[key] for key in ("examples", "desirable", "undesirable", "weights")}
        data_counts["tokenize"] = {key: tokenize_counts[key] for key in ("by_class", "by_source", "by_language")}
        atomic_write_json(os.path.join(workdir, RUN_SUMMARY_FILE), {**dataclasses.asdict(result),
                                                                    "data": data_counts})
    return result


def _loop(config, workdir, mesh, step_fn, state, ref_params, table, checkpointer, batch_iter, *, identity,
          start_step, total_steps, num_examples, policy_config, online) -> tuple[str, Any, int]:
    """Run steps start_step + 1 .. total_steps. Returns (status, final state, last step).

    Metrics of step s are read after step s + 1 is dispatched (the device never waits for the host), except at
    checkpoint steps, where the step's loss is checked before its state is saved.
    """
    t = config.train
    every = config.checkpoint.every_steps
    writer = MetricWriter(workdir, start_step=start_step, total_steps=total_steps,
                          tensorboard=config.tensorboard, progress_bar=config.progress_bar)
    num_devices = mesh.devices.size
    window: list[tuple[dict, dict, float | None]] = []  # (device metrics, host stats, seconds) since the last log
    timer = {"last": None}

    peak_flops = t.peak_flops_per_device or device_peak_flops(jax.devices()[0].device_kind)

    def finish(step: int, metrics, stats) -> None:
        """Fetch step `step`'s metrics, stop on NaN, log every `log_every_steps`."""
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        seconds = None if timer["last"] is None else now - timer["last"]
        timer["last"] = now
        window.append((host, stats, seconds))
        if host["finite"] != 1.0:
            writer.write(step, host)
            checkpointer.wait_until_finished()
            raise NonFiniteLossError(step, checkpointer.latest_step(), host)
        writer.advance()
        if step % t.log_every_steps == 0 or step == total_steps or step == start_step + 1:
            writer.write(step, _window_record(window, num_devices, peak_flops))
            window.clear()

    def save(step: int, position: DataPosition) -> None:
        checkpointer.save(step, state, {"step": step, "data_position": position.to_dict(), "identity": identity,
                                        "total_steps": total_steps, "time": time.time()})
        timer["last"] = None  # the save is not part of any step's time

    pending = None
    step = start_step
    try:
        with _PreemptionSignal() as preemption:
            for step in range(start_step + 1, total_steps + 1):
                batch, position = next(batch_iter)
                arrays = batch.device_arrays()
                if table is not None:
                    arrays.update(table.lookup(batch))
                device_batch = dict(zip(arrays, put_batch(mesh, *arrays.values())))
                state, metrics = step_fn(state, device_batch, ref_params)
                if pending is not None:
                    finish(*pending)
                pending = (step, metrics, _batch_stats(batch, position, num_examples, policy_config, online))
                preempted = preemption.any_process()
                if (every > 0 and step % every == 0) or step == total_steps or preempted:
                    finish(*pending)
                    pending = None
                    save(step, position)
                if preempted:
                    log.warning("SIGTERM: saved checkpoint step %d; rerun with the same workdir to resume", step)
                    return "preempted", state, step
            if pending is not None:
                finish(*pending)
    finally:
        writer.close()
    return "completed", state, step


def _window_record(window, num_devices: int, peak_flops_per_device: float | None) -> dict[str, float | None]:
    """Mean of each device metric over the window; throughput over its timed steps."""
    record: dict[str, float | None] = {}
    for name in window[0][0]:
        if name != "finite":
            record[name] = float(np.mean([host[name] for host, _, _ in window]))
    record["learning_rate"] = window[-1][0]["learning_rate"]
    record["epoch"] = window[-1][1]["epoch"]
    record["kl_rows_truncated"] = float(sum(stats["kl_truncated"] for _, stats, _ in window))
    record["kl_rows_same_group"] = float(sum(stats["kl_same_group"] for _, stats, _ in window))
    timed = [(stats, seconds) for _, stats, seconds in window if seconds is not None]
    if timed:
        seconds = sum(s for _, s in timed)
        record["step_time_s"] = seconds / len(timed)
        record["tokens_per_s"] = sum(stats["tokens"] for stats, _ in timed) / seconds
        for kind in ("policy", "total"):
            flops_per_s = sum(stats[f"flops_{kind}"] for stats, _ in timed) / seconds
            record[f"flops_per_s_{kind}"] = flops_per_s
            record[f"mfu_{kind}"] = kto_step.model_flops_utilisation(flops_per_s, peak_flops_per_device, num_devices)
    return record
