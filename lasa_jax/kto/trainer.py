"""Latent KTO training run (METHOD.md §5 with the fixes of §9): `train_kto(config or settings, workdir, mesh)`.

Pipeline:
  rows (`data.format`; polyrefuse_completions of the run's model family by default, `completion_models`) ->
  held-out guard (`lasa_jax.data.heldout.guard_inputs`: rows holding a MultiJail / XSTest / OR-Bench-hard-test /
  OKTest prompt are dropped) -> + benign rows (`data.benign`: the base model's cached answers to PolyRefuse
  harmless-train prompts, `lasa_jax.kto.benign`) -> latent labels (`labels.mode`: "paper" source-based proxy, or
  "ssi": the SSI's prediction on each prompt, scored with the frozen base model) -> token-level examples
  (`tokenize_rows`: the conditional prefix after the assistant header iff unsafe; over-long completions
  tail-truncated without end-of-turn) -> class weights (`balance_class_weights`: TRL's range check,
  `train.balance_weights`) -> fixed-shape global batches (`iterate_kto_batches`:
  seeded shuffle per epoch, KL rows paired by a derangement) -> each batch trimmed to its sequence-length bucket
  (`lasa_jax.kto.buckets`, `train.length_buckets`) -> jit-compiled steps (`kto_step.train_step`, looped by
  `lasa_jax.kto.loop`) -> orbax checkpoints -> Hugging Face export of the policy.

Modules: data preparation `kto_data`, settings and validation `kto_settings`, the reference table
`reference_table`, run identity `run_identity`, the loop `kto_loop`, SIGTERM `preemption`; the stage contract
(`lasa_jax.stage`) is `lasa_jax.kto.stage`. Names used to live here and are re-exported.

Models (all HF directories of one architecture). `model_path` is the base model: tokenizer and the trunk the SSI
scores prompts with (`labels.mode` "ssi": the SSI was trained on it). The policy starts from `init_from` (e.g. an SFT
checkpoint), else from `model_path`. The frozen reference is `reference.path`, by default the initial policy
(`init_from` if set, else `model_path`; TRL's default), so that every reward starts at 0; it is loaded in
`reference.dtype` and computes in the policy's compute dtype, so that reference and policy agree at step 0 up to
float rounding. Policy and reference are sharded on the mesh by the logical-axis rules (FSDP by default).
`reference.mode` ("auto", the default: "precomputed" wherever possible, `lasa_jax.memory_plan.resolve_reference_mode`):
  "online": the reference runs inside every step (about 6 forward-equivalents per row, ANCHORS.md);
  "precomputed": before training, one pass along the run's own deterministic batch sequence computes the
    reference log-probs of every policy row (once per row) and of every KL row the run will use (keyed by
    (row, partner row), since KL pairs are drawn per batch), stores them in `<workdir>/reference_logps.npz` and
    frees the reference; steps then read them from the table. Same numbers as online up to float reassociation
    (tests/train/test_kto_train.py: losses, rewards and exported weights agree to rel 1e-3).

Resume. Checkpoints live in `<workdir>/checkpoints` (`lasa_jax.kto.checkpoint`): params, optimizer state, step, RNG key
and the data position. A rerun with the same workdir restores the newest complete checkpoint onto the same
shardings and continues with exactly the batches that followed it. The result is bit-identical to an uninterrupted
run when the kernels are deterministic: TPU by default; CPU with XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
(with multi-threaded Eigen, repeated CPU runs differed in the last bits); GPU with --xla_gpu_deterministic_ops=true.
The checkpoint records the run's identity (fingerprints of the base model, the initial policy and the reference,
architecture, data fingerprint (tokens, labels, prefix), seed, batch, sequence length, optimizer and loss
hyperparameters, dtypes); resuming with a different identity is a ValueError listing the differences. Reference
mode, remat, chunking, length buckets, logging and checkpoint settings may change between runs (checkpoints
written before the module split carry the same identity and resume).

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
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
from flax import nnx

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import atomic_write_json
from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import DataPosition, KTOBatch, batches_per_epoch, iterate_kto_batches
from lasa_jax.kto.checkpoint import Checkpointer, check_run_identity
from lasa_jax.kto.data import (
    DATA_FORMATS,
    LABEL_MODES,
    completion_models,
    data_fingerprint,
    label_rows,
    load_rows,
    parse_unsafe_probs,
    prepare_examples,
)
from lasa_jax.kto.examples import KTOExample
from lasa_jax.kto.loop import LoopSpec, NonFiniteLossError, TrainLoop
from lasa_jax.kto.reference_table import ReferenceTable
from lasa_jax.kto.run_identity import ModelDirs, check_architecture, run_identity
from lasa_jax.kto.settings import REFERENCE_MODES, KTOSettings, check_mesh, read_settings
from lasa_jax.memory_plan import resolve_reference_mode
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import Decoder, abstract_decoder, param_shardings
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.loading import load_tokenizer
from lasa_jax.stage import as_settings

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_DIR", "REFERENCE_TABLE_FILE", "DATA_SUMMARY_FILE", "RUN_SUMMARY_FILE",
           "EXPORT_DIR", "DATA_FORMATS", "LABEL_MODES", "REFERENCE_MODES", "NonFiniteLossError", "TrainResult",
           "ReferenceTable", "ModelDirs", "KTOSettings", "completion_models", "data_fingerprint", "label_rows",
           "load_rows", "parse_unsafe_probs", "prepare_examples", "run_identity", "train_kto"]


CHECKPOINT_DIR = "checkpoints"
REFERENCE_TABLE_FILE = "reference_logps.npz"
DATA_SUMMARY_FILE = "data_summary.json"
RUN_SUMMARY_FILE = "run_summary.json"
EXPORT_DIR = "hf_export"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """status "completed" (all steps done, policy exported) or "preempted" (SIGTERM, checkpoint saved)."""

    status: str
    step: int
    total_steps: int
    resumed_from: int | None
    export_dir: str | None


class FrozenModels:
    """Frozen models of a run (SSI trunk, reference) by directory, each loaded at most once, checked against the
    policy's architecture; `clear()` drops them."""

    def __init__(self, settings: KTOSettings, policy_config: ModelConfig, mesh):
        self.settings, self.policy_config, self.mesh = settings, policy_config, mesh
        self.models: dict[str, Decoder] = {}

    def get(self, directory: str, field: str) -> Decoder:
        if directory not in self.models:
            s, c = self.settings, self.settings.config
            model = from_pretrained(directory, dtype=s.reference_dtype, mesh=self.mesh, compute_dtype=s.compute_dtype,
                                    scan_layers=c.scan_layers, attention_backend=s.attention_backend)
            check_architecture(model.config, self.policy_config, field, directory)
            self.models[directory] = model
        return self.models[directory]

    def drop(self, directory: str) -> None:
        self.models.pop(directory, None)

    def clear(self) -> None:
        self.models.clear()


@dataclasses.dataclass(frozen=True)
class RunData:
    """The prepared data of a run: examples, the summary written to data_summary.json, the batch plan."""

    examples: list[KTOExample]
    summary: dict[str, Any]
    per_epoch: int
    total_steps: int
    pad_id: int

    def batches(self, settings: KTOSettings, start: DataPosition) -> Iterator[tuple[KTOBatch, DataPosition]]:
        c, t = settings.config, settings.config.train
        return iterate_kto_batches(self.examples, batch_size=t.batch_size, seq_len=c.data.max_length,
                                   pad_id=self.pad_id, seed=c.seed, start=start,
                                   num_epochs=None if t.num_steps > 0 else t.num_epochs, drop_last=t.drop_last)


def prepare_run_data(settings: KTOSettings, workdir: str, tokenizer, policy_config: ModelConfig,
                     frozen: FrozenModels, model_dirs: ModelDirs) -> RunData:
    """`prepare_examples` (SSI labels score prompts on the base model; it is kept only if it is also the
    reference), the number of steps, data_summary.json."""
    t = settings.config.train
    examples, summary = prepare_examples(settings.config, tokenizer, lambda: frozen.get(model_dirs.base,
                                                                                        "model_path"))
    if model_dirs.base != model_dirs.reference:
        frozen.drop(model_dirs.base)
    per_epoch = batches_per_epoch(len(examples), t.batch_size, t.drop_last)
    if per_epoch == 0:
        raise InputError(f"{len(examples)} training examples give no batch of {config_field('train.batch_size')}="
                         f"{t.batch_size}")
    total_steps = t.num_steps if t.num_steps > 0 else t.num_epochs * per_epoch
    pad_id = policy_config.pad_token_id if policy_config.pad_token_id is not None else (tokenizer.pad_token_id or 0)
    summary.update(batches_per_epoch=per_epoch, total_steps=total_steps)
    if is_writer():
        storage.makedirs(workdir)
        atomic_write_json(os.path.join(workdir, DATA_SUMMARY_FILE), summary)
    counts = summary["tokenize"]
    log.info("KTO data: %d examples of %d rows (truncated: %s; dropped as too long: %s), %d batches per epoch, "
             "%d steps", len(examples), counts["rows"],
             {label: c["truncated"] for label, c in counts["by_class"].items()},
             {label: c["dropped_too_long"] for label, c in counts["by_class"].items()}, per_epoch, total_steps)
    return RunData(examples, summary, per_epoch, total_steps, pad_id)


def step_configs(settings: KTOSettings, data: RunData) -> tuple[kto_step.OptimizerConfig, kto_step.KTOStepConfig]:
    t = settings.config.train
    optimizer_config = kto_step.OptimizerConfig(
        learning_rate=t.learning_rate, total_steps=data.total_steps, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, max_grad_norm=t.max_grad_norm)
    weights = data.summary["weights"]
    step_config = kto_step.KTOStepConfig(beta=t.beta, desirable_weight=weights["desirable_weight"],
                                         undesirable_weight=weights["undesirable_weight"],
                                         grad_accum_steps=t.grad_accum_steps, logits_chunk_size=t.logits_chunk_size)
    return optimizer_config, step_config


def load_reference(settings: KTOSettings, workdir: str, mode: str, ref_config: ModelConfig, mesh, data: RunData,
                   identity: Mapping[str, Any], reference: Any) -> tuple[Any, ReferenceTable | None]:
    """(reference params, None) online, or (None, the precomputed table: loaded when it belongs to this run, else
    computed along the run's batch sequence and saved). `reference()` loads the reference model's params."""
    t = settings.config.train
    if mode == "online":
        return reference(), None
    table_identity = {key: identity[key] for key in ("model", "reference", "data", "seed", "dtypes", "batch")}
    table_identity["logits_chunk_size"] = t.logits_chunk_size
    table_path = os.path.join(workdir, REFERENCE_TABLE_FILE)
    table = ReferenceTable.load(table_path, table_identity)
    if table is None:
        table = ReferenceTable.compute(reference(), ref_config, mesh,
                                       (b for b, _ in data.batches(settings, DataPosition())), data.total_steps,
                                       t.logits_chunk_size, progress=settings.config.progress_bar,
                                       buckets=settings.buckets)
        table.save(table_path, table_identity)
    return None, table


def initial_state(settings: KTOSettings, checkpointer: Checkpointer, resumed_from: int | None, optimizer,
                  abstract_params, shardings, model_dirs: ModelDirs, policy_config: ModelConfig,
                  mesh) -> tuple[Any, DataPosition]:
    """(state, data position): restored onto its shardings, or initialised from init_from / model_path."""
    c = settings.config
    if resumed_from is not None:
        state, meta = checkpointer.restore(resumed_from, kto_step.abstract_state(optimizer, abstract_params,
                                                                                 shardings))
        position = DataPosition.from_dict(meta["data_position"])
        log.info("resumed from checkpoint step %d (data position %s)", resumed_from, position)
        return state, position
    policy = from_pretrained(model_dirs.policy_init, dtype=c.dtype, mesh=mesh, compute_dtype=settings.compute_dtype,
                             scan_layers=c.scan_layers, remat_policy=c.remat_policy,
                             attention_backend=settings.attention_backend)
    check_architecture(policy.config, policy_config, "init_from", model_dirs.policy_init)
    state = kto_step.init_train_state(policy.params(), optimizer, c.seed, shardings, donate_params=True)
    return state, DataPosition()


def export_policy(settings: KTOSettings, workdir: str, policy_config: ModelConfig, params: Any, mesh,
                  model_dir: str) -> str:
    """Save the policy as a Hugging Face directory (`export.path` or <workdir>/hf_export); returns it."""
    c = settings.config
    export_dir = c.export.path or os.path.join(workdir, EXPORT_DIR)
    graphdef, state = nnx.split(abstract_decoder(policy_config, mesh))
    model = nnx.merge(graphdef, state)
    model.set_params(params)
    model.source_path = model_dir
    save_pretrained(model, export_dir, dtype=c.export.dtype or c.dtype, overwrite=True, tokenizer_source=model_dir)
    log.info("exported the policy to %s", export_dir)
    return export_dir


def write_run_summary(workdir: str, result: TrainResult, data_summary: Mapping[str, Any]) -> None:
    if not is_writer():
        return
    counts = {key: data_summary[key] for key in ("examples", "desirable", "undesirable", "weights")}
    counts["tokenize"] = {key: data_summary["tokenize"][key] for key in ("by_class", "by_source", "by_language")}
    atomic_write_json(os.path.join(workdir, RUN_SUMMARY_FILE), {**dataclasses.asdict(result), "data": counts})


def train_kto(config: ml_collections.ConfigDict | KTOSettings, workdir: str, mesh) -> TrainResult:
    """Train (or resume) the Latent KTO run described by `config` (configs/kto.py) in `workdir` on `mesh`."""
    settings = as_settings(config, KTOSettings, read_settings)
    check_mesh(settings, mesh)
    c = settings.config
    model_dirs = ModelDirs.from_config(c)
    policy_config = ModelConfig.from_pretrained(model_dirs.base, param_dtype=c.dtype,
                                                compute_dtype=settings.compute_dtype, scan_layers=c.scan_layers,
                                                remat_policy=c.remat_policy)
    ref_config = policy_config.replace(param_dtype=settings.reference_dtype, remat_policy="none")
    frozen = FrozenModels(settings, policy_config, mesh)
    tokenizer = load_tokenizer(model_dirs.base, require_chat_template=True)
    data = prepare_run_data(settings, workdir, tokenizer, policy_config, frozen, model_dirs)
    mode = resolve_reference_mode(settings.reference_mode, total_steps=data.total_steps,
                                  batch_size=c.train.batch_size)
    optimizer_config, step_config = step_configs(settings, data)
    identity = run_identity(c, model_dirs, policy_config, data.summary, optimizer_config)
    optimizer = kto_step.make_optimizer(optimizer_config)
    abstract_model = abstract_decoder(policy_config, mesh)
    abstract_params = abstract_model.params()
    shardings = kto_step.state_shardings(optimizer, abstract_params, param_shardings(abstract_model, mesh), mesh)
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=c.checkpoint.max_to_keep,
                                async_save=c.checkpoint.async_save)
    try:
        resumed_from = checkpointer.latest_step()
        if resumed_from is not None:
            check_run_identity(checkpointer.restore_meta(resumed_from).get("identity", {}), identity,
                               f"checkpoint {checkpointer.directory}/{resumed_from}")
        ref_params, table = load_reference(
            settings, workdir, mode, ref_config, mesh, data, identity,
            lambda: frozen.get(model_dirs.reference, model_dirs.reference_flag).params())
        frozen.clear()
        state, position = initial_state(settings, checkpointer, resumed_from, optimizer, abstract_params, shardings,
                                        model_dirs, policy_config, mesh)
        online = mode == "online"
        step_fn = kto_step.make_train_step(policy_config=policy_config, ref_config=ref_config if online else None,
                                           optimizer_config=optimizer_config, step_config=step_config, mesh=mesh,
                                           shardings=shardings)
        spec = LoopSpec(start_step=int(resumed_from or 0), total_steps=data.total_steps,
                        num_examples=len(data.examples), identity=identity, policy_config=policy_config,
                        online_reference=online, log_every_steps=c.train.log_every_steps,
                        checkpoint_every_steps=c.checkpoint.every_steps, buckets=settings.buckets,
                        peak_flops_per_device=c.train.peak_flops_per_device, tensorboard=c.tensorboard,
                        progress_bar=c.progress_bar)
        loop = TrainLoop(spec, workdir, mesh, step_fn, checkpointer, table=table, ref_params=ref_params)
        status, state, step = loop.run(state, data.batches(settings, position))
        checkpointer.wait_until_finished()
        export_dir = None
        if status == "completed" and c.export.enabled:
            export_dir = export_policy(settings, workdir, policy_config, state["params"], mesh, model_dirs.base)
    finally:
        checkpointer.close()
    result = TrainResult(status, step, data.total_steps, resumed_from, export_dir)
    write_run_summary(workdir, result, data.summary)
    return result
