"""The Latent KTO training run: `train_kto(settings, workdir, mesh)` trains (or resumes) the policy and exports it.

Pipeline:
  rows (`data.format`; polyrefuse_completions of the run's model family by default) -> held-out guard
  (`lasa_jax.data.heldout.guard_inputs`: rows holding a MultiJail / XSTest / OR-Bench-hard-test / OKTest prompt are
  dropped) -> + benign rows (`data.benign`: the base model's cached answers to PolyRefuse harmless-train prompts,
  `lasa_jax.kto.benign`) -> latent labels (`labels.mode`: "paper" source-based proxy, or "ssi": the SSI's
  prediction on each prompt, scored with the frozen base model) -> token-level examples (the conditional prefix
  after the assistant header iff unsafe; over-long completions tail-truncated without end-of-turn) -> class weights
  (TRL's range check, `train.balance_weights`) -> fixed-shape global batches (seeded shuffle per epoch, KL rows
  paired by a derangement, `lasa_jax.kto.batches`) -> each batch trimmed to its sequence-length bucket
  (`lasa_jax.kto.buckets`) -> jit-compiled steps (`lasa_jax.kto.step`, looped by `lasa_jax.kto.loop`) -> orbax
  checkpoints -> Hugging Face export of the policy.

Models: `lasa_jax.kto.run_models` (base model, initial policy, reference; one architecture). Policy and reference
are sharded on the mesh by the logical-axis rules (FSDP by default). The reference computes in the policy's compute
dtype, so that reference and policy agree at step 0 up to float rounding. `reference.mode` ("auto", the default:
"precomputed" wherever possible, `lasa_jax.memory_plan.resolve_reference_mode`):
  "online": the reference runs inside every step (about 6 forward-equivalents per row instead of 4);
  "precomputed": before training, one pass along the run's own deterministic batch sequence computes the
    reference log-probs of every policy row (once per row) and of every KL row the run will use
    (`lasa_jax.kto.reference_table`, `<workdir>/reference_logps.npz`) and frees the reference; steps then read
    them from the table. Same numbers as online up to float reassociation (losses, rewards and exported weights
    agree to rel 1e-3).

Resume. Checkpoints live in `<workdir>/checkpoints` (`lasa_jax.kto.checkpoint`): params, optimizer state, step, RNG
key and the data position. A rerun with the same workdir restores the newest complete checkpoint onto the same
shardings and continues with exactly the batches that followed it. The result is bit-identical to an uninterrupted
run when the kernels are deterministic: TPU by default; CPU with XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
(with multi-threaded Eigen, repeated CPU runs differed in the last bits); GPU with --xla_gpu_deterministic_ops=true.
The checkpoint records the run's identity (`lasa_jax.kto.run_identity`); resuming with a different identity is an
InputError listing the differences.

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
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flax import nnx

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.infra.storage import atomic_write_json
from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import DataPosition, KTOBatch, batches_per_epoch, iterate_kto_batches
from lasa_jax.kto.checkpoint import Checkpointer, check_run_identity
from lasa_jax.kto.data import prepare_examples
from lasa_jax.kto.examples import KTOExample
from lasa_jax.kto.loop import LoopSpec, TrainLoop
from lasa_jax.kto.reference_table import ReferenceTable
from lasa_jax.kto.run_identity import reference_table_identity, run_identity
from lasa_jax.kto.run_models import FrozenModels, ModelDirs, load_policy, policy_model_config
from lasa_jax.kto.settings import KTOSettings, check_mesh
from lasa_jax.memory_plan import resolve_reference_mode
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import abstract_decoder, param_shardings
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.loading import load_tokenizer

log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class RunData:
    """The prepared data of a run: examples, the summary written to data_summary.json, the batch plan."""

    examples: list[KTOExample]
    summary: dict[str, Any]
    per_epoch: int
    total_steps: int
    pad_id: int

    def batches(self, settings: KTOSettings, start: DataPosition) -> Iterator[tuple[KTOBatch, DataPosition]]:
        t = settings.train
        return iterate_kto_batches(self.examples, batch_size=t.batch_size, seq_len=settings.data.max_length,
                                   pad_id=self.pad_id, seed=settings.seed, start=start,
                                   num_epochs=None if t.num_steps > 0 else t.num_epochs, drop_last=t.drop_last)


def prepare_run_data(settings: KTOSettings, workdir: str, tokenizer, policy_config: ModelConfig,
                     frozen: FrozenModels, model_dirs: ModelDirs) -> RunData:
    """`prepare_examples` (SSI labels score prompts on the base model; it is kept only if it is also the
    reference), the number of steps, data_summary.json."""
    t = settings.train
    examples, summary = prepare_examples(settings, tokenizer, lambda: frozen.get(model_dirs.base, "model_path"))
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
    """The optimizer of the run (`train` settings, the run's number of steps) and the step's static settings (the
    class weights `prepare_examples` chose)."""
    t = settings.train
    optimizer_config = kto_step.OptimizerConfig(
        learning_rate=t.learning_rate, total_steps=data.total_steps, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, max_grad_norm=t.max_grad_norm)
    weights = data.summary["weights"]
    step_config = kto_step.KTOStepConfig(beta=t.beta, desirable_weight=weights["desirable_weight"],
                                         undesirable_weight=weights["undesirable_weight"],
                                         grad_accum_steps=t.grad_accum_steps, logits_chunk_size=t.logits_chunk_size)
    return optimizer_config, step_config


def load_reference(settings: KTOSettings, workdir: str, mode: str, ref_config: ModelConfig, mesh, data: RunData,
                   identity: Mapping[str, Any], reference: Callable[[], Any]) -> tuple[Any, ReferenceTable | None]:
    """(reference params, None) online, or (None, the precomputed table: loaded when it belongs to this run, else
    computed along the run's batch sequence and saved). `reference()` loads the reference model's params."""
    if mode == "online":
        return reference(), None
    chunk_size = settings.train.logits_chunk_size
    table_identity = reference_table_identity(identity, chunk_size)
    table_path = os.path.join(workdir, REFERENCE_TABLE_FILE)
    table = ReferenceTable.load(table_path, table_identity)
    if table is None:
        batches = (b for b, _ in data.batches(settings, DataPosition()))
        table = ReferenceTable.compute(reference(), ref_config, mesh, batches, data.total_steps, chunk_size,
                                       progress=settings.progress_bar, buckets=settings.train.length_buckets)
        table.save(table_path, table_identity)
    return None, table


def initial_state(settings: KTOSettings, checkpointer: Checkpointer, resumed_from: int | None, optimizer,
                  abstract_params, shardings, model_dirs: ModelDirs, policy_config: ModelConfig,
                  mesh) -> tuple[Any, DataPosition]:
    """(state, data position): restored onto its shardings, or initialised from init_from / model_path."""
    if resumed_from is not None:
        state, meta = checkpointer.restore(resumed_from, kto_step.abstract_state(optimizer, abstract_params,
                                                                                 shardings))
        position = DataPosition.from_dict(meta["data_position"])
        log.info("resumed from checkpoint step %d (data position %s)", resumed_from, position)
        return state, position
    policy = load_policy(settings, model_dirs, policy_config, mesh)
    state = kto_step.init_train_state(policy.params(), optimizer, settings.seed, shardings, donate_params=True)
    return state, DataPosition()


def export_policy(settings: KTOSettings, workdir: str, policy_config: ModelConfig, params: Any, mesh,
                  model_dir: str) -> str:
    """Save the policy as a Hugging Face directory (`export.path` or <workdir>/hf_export); returns it."""
    export_dir = settings.export.path or os.path.join(workdir, EXPORT_DIR)
    graphdef, state = nnx.split(abstract_decoder(policy_config, mesh))
    model = nnx.merge(graphdef, state)
    model.set_params(params)
    model.source_path = model_dir
    save_pretrained(model, export_dir, dtype=settings.export_dtype, overwrite=True, tokenizer_source=model_dir)
    log.info("exported the policy to %s", export_dir)
    return export_dir


def write_run_summary(workdir: str, result: TrainResult, data_summary: Mapping[str, Any]) -> None:
    """run_summary.json: the `TrainResult` and the data counts and class weights of the run (process 0 only)."""
    if not is_writer():
        return
    counts = {key: data_summary[key] for key in ("examples", "desirable", "undesirable", "weights")}
    counts["tokenize"] = {key: data_summary["tokenize"][key] for key in ("by_class", "by_source", "by_language")}
    atomic_write_json(os.path.join(workdir, RUN_SUMMARY_FILE), {**dataclasses.asdict(result), "data": counts})


def train_kto(settings: KTOSettings, workdir: str, mesh) -> TrainResult:
    """Train (or resume) the Latent KTO run of `settings` (`lasa_jax.kto.settings.read_settings`) in `workdir` on
    `mesh`."""
    check_mesh(settings, mesh)
    model_dirs = ModelDirs.from_settings(settings)
    config = policy_model_config(settings, model_dirs)
    ref_config = config.replace(param_dtype=settings.reference_dtype, remat_policy="none")
    frozen = FrozenModels(settings, config, mesh)
    tokenizer = load_tokenizer(model_dirs.base, require_chat_template=True)
    data = prepare_run_data(settings, workdir, tokenizer, config, frozen, model_dirs)
    t = settings.train
    mode = resolve_reference_mode(settings.reference.mode, total_steps=data.total_steps, batch_size=t.batch_size)
    optimizer_config, step_config = step_configs(settings, data)
    identity = run_identity(settings, model_dirs, config, data.summary, optimizer_config)
    optimizer = kto_step.make_optimizer(optimizer_config)
    abstract_model = abstract_decoder(config, mesh)
    abstract_params = abstract_model.params()
    shardings = kto_step.state_shardings(optimizer, abstract_params, param_shardings(abstract_model, mesh), mesh)
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=settings.checkpoint.max_to_keep,
                                async_save=settings.checkpoint.async_save)
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
                                        model_dirs, config, mesh)
        online = mode == "online"
        step_fn = kto_step.make_train_step(policy_config=config, ref_config=ref_config if online else None,
                                           optimizer_config=optimizer_config, step_config=step_config, mesh=mesh,
                                           shardings=shardings)
        spec = LoopSpec(start_step=int(resumed_from or 0), total_steps=data.total_steps,
                        num_examples=len(data.examples), identity=identity, policy_config=config,
                        online_reference=online, log_every_steps=t.log_every_steps,
                        checkpoint_every_steps=settings.checkpoint.every_steps, buckets=t.length_buckets,
                        peak_flops_per_device=t.peak_flops_per_device, tensorboard=settings.tensorboard,
                        progress_bar=settings.progress_bar)
        loop = TrainLoop(spec, workdir, mesh, step_fn, checkpointer, table=table, ref_params=ref_params)
        status, state, step = loop.run(state, data.batches(settings, position))
        checkpointer.wait_until_finished()
        export_dir = None
        if status == "completed" and settings.export.enabled:
            export_dir = export_policy(settings, workdir, config, state["params"], mesh, model_dirs.base)
    finally:
        checkpointer.close()
    result = TrainResult(status, step, data.total_steps, resumed_from, export_dir)
    write_run_summary(workdir, result, data.summary)
    return result
