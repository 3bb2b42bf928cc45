"""KTO training: log-probs, schedule, the jit step (sharded, accumulated), the run (rewards, precomputed
reference, NaN stop, resume identity, SIGTERM, kill -9 bit-identical resume), SSI labels, init_from and the
reference model.

Every run trains the tiny random Llama of `tiny_hf_dirs` on the demo KTO rows. Compiled programs are shared
through a persistent compilation cache (in-process and with the subprocess runs), which does not change numerics.
"""
import dataclasses
import importlib.util
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from safetensors.numpy import load_file

from lasa_jax.data.preference.formats import load_unpaired_jsonl
from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import iterate_kto_batches
from lasa_jax.kto.checkpoint import Checkpointer
from lasa_jax.kto.data import label_rows, prepare_examples
from lasa_jax.kto.examples import tokenize_rows
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.kto.loop import NonFiniteLossError
from lasa_jax.kto.metric_writer import read_metrics
from lasa_jax.kto.trainer import CHECKPOINT_DIR, REFERENCE_TABLE_FILE, train_kto
from lasa_jax.models import logprobs
from lasa_jax.models.decoder import forward, param_shardings
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.loading import load_tokenizer
from lasa_jax.models.logprobs import completion_logps
from lasa_jax.sharding import make_mesh, put_batch
from lasa_jax.stage import EXIT_PREEMPTED

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_KTO = REPO / "lasa_jax" / "demo_data" / "kto.jsonl"
TOTAL_STEPS = 24
# The run the run-level tests share (config overrides; the script test passes them as --config.<name>=<value>).
RUN = {"dtype": "float32", "compute_dtype": "float32", "remat_policy": "none", "reference.dtype": "float32",
       "data.format": "unpaired_jsonl", "data.max_length": 256, "train.batch_size": 4,
       "train.num_steps": TOTAL_STEPS, "train.learning_rate": 2e-3, "train.warmup_steps": 2,
       "train.logits_chunk_size": 64, "train.log_every_steps": 1, "checkpoint.every_steps": 8,
       "train.peak_flops_per_device": 1e12, "export.dtype": "float32", "progress_bar": False,
        # the demo rows: no shared data (held-out guard waived, no benign rows; tests/train/test_kto_data_prep.py
        # has both)
       "data.root": "", "data.allow_missing_held_out": True, "data.benign.share": 0.0,
       # the online reference, as before the default became "auto" (precomputed): the precomputed test compares
       "reference.mode": "online"}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Persistent XLA cache for this module (identical programs compile once), restored afterwards."""
    directory = str(tmp_path_factory.mktemp("xla_cache"))
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield directory
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    jax_compilation_cache.reset_cache()  # later modules compile without it, as before


def kto_config(model_dir, **overrides):
    """configs/kto.py with RUN and `overrides` (dotted names) applied."""
    spec = importlib.util.spec_from_file_location("kto_config", REPO / "configs" / "kto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model_path = str(model_dir)
    config.data.path = str(DEMO_KTO)
    for name, value in {**RUN, **overrides}.items():
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def one_device_mesh():
    return make_mesh(devices=jax.devices()[:1])


def exported(workdir) -> dict[str, np.ndarray]:
    tensors = {}
    for file in sorted((pathlib.Path(workdir) / "hf_export").glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def assert_bit_identical(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32
        assert np.array_equal(a[name].view(np.uint32), b[name].view(np.uint32)), name


@pytest.fixture(scope="module")
def llama_dir(tiny_hf_dirs):
    return tiny_hf_dirs["llama"]


@pytest.fixture(scope="module")
def reference_run(llama_dir, tmp_path_factory):
    """The uninterrupted RUN (online reference) in process: (workdir, TrainResult)."""
    workdir = tmp_path_factory.mktemp("reference_run")
    result = train_kto(kto_config(llama_dir), str(workdir), one_device_mesh())
    return workdir, result


@pytest.fixture(scope="module")
def demo_batches(llama_dir):
    """The first batches of the RUN data (batch 4, 256 positions) as KTOBatch objects."""
    rows = assign_latent_labels(load_unpaired_jsonl(DEMO_KTO), seed=42)
    # the rows that fit whole (no tail-truncated ones): the numerics tests compare step-1 losses at float32 rounding
    examples, _ = tokenize_rows(rows, load_tokenizer(str(llama_dir)), max_length=256, truncate_completions=False)
    iterator = iterate_kto_batches(examples, batch_size=4, seq_len=256, pad_id=0, seed=42)
    return [next(iterator)[0] for _ in range(2)]


# ----------------------------------------------------------------------------------------------- numerics
def test_chunked_sequence_logps_match_full_logits_values_and_gradients(llama_dir, demo_batches):
    model = from_pretrained(llama_dir)
    batch = demo_batches[0]
    ids, mask, loss_mask = (jnp.asarray(a) for a in (batch.input_ids, batch.attention_mask, batch.loss_mask))
    chunk_sizes = (0, 7, 64, 255)

    @jax.jit
    def all_variants(params):
        def full(p):
            return completion_logps(forward(p, model.config, ids, mask).logits, ids, loss_mask)

        def chunked(p, chunk):
            return logprobs.sequence_logps(p, model.config, ids, mask, loss_mask, chunk_size=chunk)

        values = [full(params)] + [chunked(params, chunk) for chunk in chunk_sizes]
        grads = [jax.grad(lambda p: full(p).sum())(params), jax.grad(lambda p: chunked(p, 64).sum())(params)]
        return values, grads

    (expected, *variants), (grad_full, grad_chunked) = all_variants(model.params())
    assert np.all(np.asarray(expected) < 0)
    for chunk, value in zip(chunk_sizes, variants):
        np.testing.assert_allclose(np.asarray(value), np.asarray(expected), rtol=1e-5, err_msg=str(chunk))
    for g_full, g_chunk in zip(jax.tree.leaves(grad_full), jax.tree.leaves(grad_chunked)):
        np.testing.assert_allclose(np.asarray(g_chunk), np.asarray(g_full), rtol=1e-4, atol=1e-5)


def test_learning_rate_schedule_matches_transformers_cosine_with_warmup():
    from transformers import get_cosine_schedule_with_warmup

    for warmup, total in ((100, 300), (3, 10), (100, 40), (0, 5)):
        schedule = kto_step.learning_rate_schedule(kto_step.OptimizerConfig(learning_rate=1e-6, total_steps=total,
                                                                            warmup_steps=warmup))
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-6)
        hf = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=min(warmup, total), num_training_steps=total)
        for step in range(total):
            assert float(schedule(step)) == pytest.approx(hf.get_last_lr()[0], rel=1e-5, abs=1e-13), (warmup, step)
            optimizer.step()
            hf.step()


def test_weight_decay_skips_norms_and_biases(tiny_hf_dirs):
    params = from_pretrained(tiny_hf_dirs["qwen2"]).params()  # qwen2: q/k/v biases, tied embeddings
    mask = kto_step.weight_decay_mask(params)
    assert mask["embed"] and mask["layers"]["q_kernel"] and mask["layers"]["down_kernel"]
    assert not (mask["final_norm"] or mask["layers"]["attn_norm"] or mask["layers"]["mlp_norm"]
                or mask["layers"]["q_bias"] or mask["layers"]["v_bias"])
    optimizer = kto_step.make_optimizer(kto_step.OptimizerConfig(learning_rate=0.1, total_steps=2, warmup_steps=0,
                                                                 weight_decay=0.5))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zero_grads, optimizer.init(params), params)
    for decayed, update, param in zip(jax.tree.leaves(mask), jax.tree.leaves(updates), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(update), -0.1 * 0.5 * np.asarray(param) if decayed else 0.0,
                                   rtol=1e-6, atol=1e-8)


def _run_steps(model_dir, mesh, batches, grad_accum_steps, num_steps):
    """`num_steps` jitted steps of the RUN optimizer from the base model on `mesh`: [(host metrics, host params)]."""
    model = from_pretrained(model_dir, mesh=mesh)
    optimizer_config = kto_step.OptimizerConfig(learning_rate=2e-3, total_steps=TOTAL_STEPS, warmup_steps=2)
    optimizer = kto_step.make_optimizer(optimizer_config)
    shardings = kto_step.state_shardings(optimizer, model.params(), param_shardings(model, mesh), mesh)
    state = kto_step.init_train_state(model.params(), optimizer, 42, shardings)
    step = kto_step.make_train_step(policy_config=model.config, ref_config=model.config,
                                    optimizer_config=optimizer_config,
                                    step_config=kto_step.KTOStepConfig(grad_accum_steps=grad_accum_steps,
                                                                       logits_chunk_size=64),
                                    mesh=mesh, shardings=shardings)
    reference = model.params()
    out = []
    for batch in batches[:num_steps]:
        arrays = batch.device_arrays()
        state, metrics = step(state, dict(zip(arrays, put_batch(mesh, *arrays.values()))), reference)
        assert state["params"]["layers"]["q_kernel"].sharding == shardings["params"]["layers"]["q_kernel"]
        out.append((jax.device_get(metrics), jax.device_get(state["params"])))
    return out


def _assert_steps_close(got, want, rtol=2e-5, atol=2e-5):
    """Metrics within float32 noise (log-probs ~ -800 differ by ulps of 6e-5 between programs), params close."""
    for (metrics_got, params_got), (metrics_want, params_want) in zip(got, want):
        for name in ("loss", "grad_norm", "kl", "rewards/desirable", "rewards/undesirable", "logps/desirable",
                     "logps/undesirable", "margin"):
            np.testing.assert_allclose(metrics_got[name], metrics_want[name], rtol=rtol, atol=atol, err_msg=name)
        for a, b in zip(jax.tree.leaves(params_got), jax.tree.leaves(params_want)):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)


def test_sharded_step_matches_single_device(llama_dir, demo_batches):
    single = _run_steps(llama_dir, one_device_mesh(), demo_batches, 1, 2)
    sharded = _run_steps(llama_dir, make_mesh(data=2, fsdp=2, tensor=2), demo_batches, 1, 2)
    assert single[0][0]["loss"] == pytest.approx(0.5) and single[1][0]["margin"] != 0.0  # step 2: policy != reference
    _assert_steps_close(sharded, single)


def test_gradient_accumulation_matches_one_big_batch(llama_dir, demo_batches):
    """At step 1 the policy is the reference, so z0 = 0 for any micro-batching: A = 2 must give A = 1's update.
    (From step 2 on, z0 is a per-micro-batch mean, as in TRL, and A changes it.)"""
    whole = _run_steps(llama_dir, one_device_mesh(), demo_batches, 1, 1)
    accumulated = _run_steps(llama_dir, one_device_mesh(), demo_batches, 2, 1)
    assert accumulated[0][0]["kl"] == whole[0][0]["kl"] == 0.0
    _assert_steps_close(accumulated, whole)


def test_length_buckets_only_drop_padding_and_one_reference_forward_matches_two(llama_dir):
    from lasa_jax.kto.buckets import batch_length, bucket_for, length_buckets, trimmed_arrays

    assert length_buckets(512) == (64, 128, 256, 512) and length_buckets(256, "off") is None
    assert length_buckets(200, "100, 300") == (100, 200) and bucket_for(65, (64, 128, 256)) == 128
    model = from_pretrained(llama_dir)
    # the run's rows (at most 256 tokens; KL rows up to ~2x) in a 1024-position batch: trimming has padding to drop
    rows = assign_latent_labels(load_unpaired_jsonl(DEMO_KTO), seed=42)
    examples, _ = tokenize_rows(rows, load_tokenizer(str(llama_dir)), max_length=256, truncate_completions=False)
    batch = next(iterate_kto_batches(examples, batch_size=4, seq_len=1024, pad_id=0, seed=42))[0]
    buckets = length_buckets(1024, "32,64,128,256,512")
    trimmed = trimmed_arrays(batch, buckets)
    width = trimmed["input_ids"].shape[1]
    assert width == bucket_for(batch_length(batch), buckets) <= 512 and trimmed["is_desirable"].shape == (4,)
    full = {k: jnp.asarray(v) for k, v in batch.device_arrays().items()}
    short = {k: jnp.asarray(v) for k, v in trimmed.items()}
    for rows in (kto_step.POLICY_ROW_KEYS, kto_step.KL_ROW_KEYS):
        want = logprobs.batch_logps(model.params(), model.config, *(full[k] for k in rows), chunk_size=64)
        got = logprobs.batch_logps(model.params(), model.config, *(short[k] for k in rows), chunk_size=64)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    ref, kl_ref = kto_step.batch_reference_logps(model.params(), model.config, short, mesh=None, chunk_size=64)
    for value, rows in ((ref, kto_step.POLICY_ROW_KEYS), (kl_ref, kto_step.KL_ROW_KEYS)):
        want = logprobs.batch_logps(model.params(), model.config, *(short[k] for k in rows), chunk_size=64)
        np.testing.assert_allclose(np.asarray(value), np.asarray(want), rtol=1e-5)


# ----------------------------------------------------------------------------------------------- the run
def test_training_raises_desirable_and_lowers_undesirable_rewards(llama_dir, reference_run):
    workdir, result = reference_run
    assert (result.status, result.step, result.total_steps, result.resumed_from) == ("completed", TOTAL_STEPS,
                                                                                      TOTAL_STEPS, None)
    records = read_metrics(str(workdir / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, TOTAL_STEPS + 1))
    first = records[0]
    # step 1: policy = reference (up to float32 rounding of log-probs ~ -800), so rewards 0 and loss 1 - sigmoid(0)
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)
    assert first["rewards/desirable"] == pytest.approx(0.0, abs=1e-5) == first["rewards/undesirable"]
    last = records[-8:]
    desirable = np.mean([r["rewards/desirable"] for r in last])
    undesirable = np.mean([r["rewards/undesirable"] for r in last])
    assert desirable > 0.2 and undesirable < -0.2, (desirable, undesirable)
    assert np.mean([r["loss"] for r in last]) < 0.45
    schedule = kto_step.learning_rate_schedule(kto_step.OptimizerConfig(2e-3, TOTAL_STEPS, 2))
    assert [r["learning_rate"] for r in records] == pytest.approx([float(schedule(s)) for s in range(TOTAL_STEPS)])
    # throughput excludes the first step (compilation) and the step after each checkpoint save
    untimed = {r["step"] for r in records if "tokens_per_s" not in r}
    assert untimed == {1, 9, 17}
    for r in records:
        if r["step"] not in untimed:
            assert r["tokens_per_s"] > 0 and r["flops_per_s_total"] > r["flops_per_s_policy"] > 0
            assert r["mfu_policy"] == pytest.approx(r["flops_per_s_policy"] / 1e12)  # one device of 1 TFLOP/s
            assert r["mfu_total"] == pytest.approx(r["flops_per_s_total"] / 1e12)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(os.listdir(workdir / CHECKPOINT_DIR)) == ["16", "24"]  # every 8 steps, keep 2
    summary = json.loads((workdir / "data_summary.json").read_text())
    assert summary["total_steps"] == TOTAL_STEPS and summary["examples"] == summary["tokenize"]["kept"]
    by_class = summary["tokenize"]["by_class"]
    assert by_class["desirable"]["kept"] == summary["desirable"]
    assert by_class["desirable"]["kept"] + by_class["undesirable"]["kept"] == summary["examples"]
    policy, base = from_pretrained(workdir / "hf_export"), from_pretrained(llama_dir)
    assert policy.config.to_hf_dict() == base.config.to_hf_dict()
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(policy.params()),
                                                        jax.tree.leaves(base.params()))]
    assert all(changed)


def test_precomputed_reference_run_matches_online_run(llama_dir, reference_run, tmp_path):
    result = train_kto(kto_config(llama_dir, **{"reference.mode": "precomputed"}), str(tmp_path), one_device_mesh())
    assert result.status == "completed"
    with np.load(tmp_path / REFERENCE_TABLE_FILE) as table:
        assert table["kl_pairs"].shape == (TOTAL_STEPS * 4, 2)  # one KL row per row of every batch of the run
        assert np.all(table["kl_pairs"][:, 0] != table["kl_pairs"][:, 1])
    online = read_metrics(str(reference_run[0] / "metrics.jsonl"))
    precomputed = read_metrics(str(tmp_path / "metrics.jsonl"))
    for a, b in zip(precomputed, online):
        for name in ("loss", "kl", "rewards/desirable", "rewards/undesirable", "grad_norm"):
            assert a[name] == pytest.approx(b[name], rel=1e-3, abs=1e-5), (a["step"], name)
    want = exported(reference_run[0])
    for name, value in exported(tmp_path).items():
        np.testing.assert_allclose(value, want[name], rtol=1e-3, atol=1e-5, err_msg=name)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(llama_dir, tiny_hf_dirs, tmp_path):
    # lr 1e30: update 1 (finite loss) throws the weights to ~1e30, so the loss of update 2 is NaN
    config = kto_config(llama_dir, **{"train.learning_rate": 1e30, "train.warmup_steps": 0,
                                      "checkpoint.every_steps": 1, "train.num_steps": 4})
    with pytest.raises(NonFiniteLossError, match="step 2") as error:
        train_kto(config, str(tmp_path), one_device_mesh())
    assert error.value.step == 2 and error.value.last_checkpoint_step == 1
    with Checkpointer(tmp_path / CHECKPOINT_DIR) as ckpt:
        assert ckpt.all_steps() == [1]
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert records[-1]["step"] == 2 and np.isnan(records[-1]["loss"])
    assert not (tmp_path / "hf_export").exists()

    # resuming this workdir with another model, or another loss setting, is refused with the differences named
    with pytest.raises(ValueError, match="different run") as error:
        train_kto(kto_config(llama_dir, **{"train.learning_rate": 1e30, "train.warmup_steps": 0,
                                           "checkpoint.every_steps": 1, "train.num_steps": 4, "train.beta": 0.5}),
                  str(tmp_path), one_device_mesh())
    assert "loss.beta: checkpoint has 0.1, this run has 0.5" in str(error.value)
    with pytest.raises(ValueError, match="model.fingerprint"):
        train_kto(kto_config(tiny_hf_dirs["qwen2"], **{"train.learning_rate": 1e30, "train.warmup_steps": 0,
                                                       "checkpoint.every_steps": 1, "train.num_steps": 4}),
                  str(tmp_path), one_device_mesh())


@pytest.mark.slow
def test_sigterm_then_kill9_then_rerun_gives_bit_identical_parameters(llama_dir, tmp_path, compilation_cache):
    """The script, three times in one workdir: SIGTERM after the first checkpoint (exit 75 with a checkpoint of
    that step), then kill -9 after the next periodic checkpoint, then a rerun to the end. The exported policy must
    equal an uninterrupted run's (the same script, run alongside) bit for bit."""
    # Multi-threaded Eigen contractions on CPU are not bit-reproducible from one process to the next (their
    # partial sums depend on the thread schedule); single-threaded Eigen is (6/6 runs identical under load).
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false",
           "JAX_COMPILATION_CACHE_DIR": compilation_cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def command(workdir):
        return ([sys.executable, "-m", "lasa_jax.scripts.train_kto", f"--config={REPO / 'configs' / 'kto.py'}",
                 f"--config.model_path={llama_dir}", f"--config.data.path={DEMO_KTO}", f"--workdir={workdir}"]
                + [f"--config.{name}={value}" for name, value in RUN.items()])

    uninterrupted = subprocess.Popen(command(tmp_path / "uninterrupted"), cwd=REPO, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workdir = tmp_path / "run"
    checkpoints = workdir / CHECKPOINT_DIR

    def run_until_checkpoint_after(step: int, sig: int) -> tuple[int, str]:
        """Start the script, send `sig` once a checkpoint newer than `step` exists; (return code, output)."""
        with open(tmp_path / "output.log", "w") as log:
            process = subprocess.Popen(command(workdir), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.time() + 300
                while time.time() < deadline and process.poll() is None:
                    steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()] if checkpoints.is_dir() else []
                    if steps and max(steps) > step:
                        process.send_signal(sig)
                        break
                    time.sleep(0.02)
            finally:
                process.wait(timeout=120)
        return process.returncode, (tmp_path / "output.log").read_text()[-3000:]

    code, output = run_until_checkpoint_after(0, signal.SIGTERM)
    assert code == EXIT_PREEMPTED, output
    preempted = json.loads((workdir / "run_summary.json").read_text())
    assert preempted["status"] == "preempted" and 8 <= preempted["step"] < TOTAL_STEPS
    with Checkpointer(checkpoints) as ckpt:
        assert ckpt.latest_step() == preempted["step"]

    code, output = run_until_checkpoint_after(preempted["step"], signal.SIGKILL)
    assert code == -signal.SIGKILL, output
    assert not (workdir / "hf_export").exists()

    rerun = subprocess.run(command(workdir), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    summary = json.loads((workdir / "run_summary.json").read_text())
    assert summary["status"] == "completed" and preempted["step"] < summary["resumed_from"] < TOTAL_STEPS
    assert [r["step"] for r in read_metrics(str(workdir / "metrics.jsonl"))] == list(range(1, TOTAL_STEPS + 1))
    _, errors = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, errors[-3000:]
    assert_bit_identical(exported(workdir), exported(tmp_path / "uninterrupted"))


@pytest.fixture(scope="module")
def llama_ssi(llama_dir, tmp_path_factory):
    """An SSI trained on nothing, for the tiny Llama: residual 2, a linear head, the threshold at the median score
    of the first 40 demo rows' prompts. Returns (SSI directory, those rows, {prompt: harmful flag})."""
    from lasa_jax.ssi.artifact import SSI, SSIConfig, SSIScorer, save_ssi
    from lasa_jax.ssi.features import tokenization_fingerprint
    from lasa_jax.ssi.mlp import new_classifier

    base = from_pretrained(llama_dir)
    tokenizer = load_tokenizer(str(llama_dir))
    rows = load_unpaired_jsonl(DEMO_KTO)[:40]
    prompts = sorted({r.prompt for r in rows})
    ssi_config = SSIConfig(residual_index=2, threshold=0.5, d_model=base.config.hidden_size, hidden_dims=(),
                           pooling="last", chat_template=False, base_model_fingerprint=base.fingerprint,
                           train_languages=("en",), max_length=64, base_model_path=str(llama_dir),
                           base_model_num_layers=base.config.num_layers, base_model_dtype="float32",
                           tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=False, max_length=64))
    ssi = SSI(ssi_config, new_classifier(base.config.hidden_size, (), 0.0, seed=0))
    probabilities, _ = SSIScorer(base, ssi).score(prompts)
    threshold = float(np.median(probabilities))  # about half of the prompts flagged
    ssi = SSI(dataclasses.replace(ssi_config, threshold=threshold), ssi.classifier)
    ssi_dir = tmp_path_factory.mktemp("llama_ssi") / "ssi"
    save_ssi(ssi_dir, ssi)
    return ssi_dir, rows, dict(zip(prompts, probabilities > threshold))


def test_ssi_labels_come_from_the_base_model_scorer(llama_dir, llama_ssi, tmp_path):
    ssi_dir, rows, expected = llama_ssi
    assert 0 < sum(expected.values()) < len(expected)
    base = from_pretrained(llama_dir)
    config = kto_config(llama_dir, **{"labels.mode": "ssi", "labels.ssi_dir": str(ssi_dir)})
    labelled = label_rows(rows, config, lambda: base)
    assert [r.is_unsafe for r in labelled] == [int(expected[r.prompt]) for r in rows]
    with pytest.raises(ValueError, match="fingerprint"):  # the SSI refuses any model but its base model
        label_rows(rows, config, lambda: from_pretrained(_perturbed_copy(llama_dir, tmp_path)))


@pytest.fixture(scope="module")
def sft_llama_dir(llama_dir, tmp_path_factory):
    """The tiny Llama's architecture with other weights (every parameter moved by N(0, 0.02^2)): an SFT stand-in."""
    model = from_pretrained(llama_dir)
    rng = np.random.default_rng(5)
    model.set_params(jax.tree.map(lambda x: x + 0.02 * rng.standard_normal(x.shape).astype(np.float32),
                                  model.params()))
    out = tmp_path_factory.mktemp("sft_llama")
    save_pretrained(model, out, overwrite=True)
    return out


def test_init_from_sets_the_policy_and_the_default_reference(llama_dir, sft_llama_dir, llama_ssi, tmp_path):
    """init_from = another HF directory of the architecture. Step 1's policy log-probs are that model's; the default
    reference is the initial policy (rewards 0 at step 1), reference.path = model_path gives rewards
    beta * (log pi_init - log pi_base); SSI labels still score prompts on model_path (its SSI refuses other models);
    the reference is part of the run identity."""
    overrides = {"init_from": str(sft_llama_dir), "labels.mode": "ssi", "labels.ssi_dir": str(llama_ssi[0]),
                 "train.num_steps": 1, "checkpoint.every_steps": 0, "export.enabled": False,
                 "data.truncate_completions": False}  # the whole-completion rows (their first batch: see below)
    base, sft = from_pretrained(llama_dir), from_pretrained(sft_llama_dir)
    examples, _ = prepare_examples(kto_config(llama_dir, **overrides), load_tokenizer(str(llama_dir)), lambda: base)
    batch = next(iterate_kto_batches(examples, batch_size=4, seq_len=256, pad_id=0, seed=42))[0]
    classes = {"desirable": batch.valid & batch.is_desirable, "undesirable": batch.valid & ~batch.is_desirable}
    assert all(mask.any() for mask in classes.values())

    def class_means(model) -> dict[str, float]:
        arrays = (jnp.asarray(a) for a in (batch.input_ids, batch.attention_mask, batch.loss_mask))
        logps = np.asarray(logprobs.batch_logps(model.params(), model.config, *arrays, chunk_size=64))
        return {name: float(logps[mask].mean()) for name, mask in classes.items()}

    sft_logps, base_logps = class_means(sft), class_means(base)
    for workdir, reference in (("default_reference", {}), ("base_reference", {"reference.path": str(llama_dir)})):
        train_kto(kto_config(llama_dir, **overrides, **reference), str(tmp_path / workdir), one_device_mesh())
        first = read_metrics(str(tmp_path / workdir / "metrics.jsonl"))[0]
        for name in classes:
            assert first[f"logps/{name}"] == pytest.approx(sft_logps[name], rel=1e-5)
            assert abs(sft_logps[name] - base_logps[name]) > 1.0
            expected_reward = 0.0 if not reference else 0.1 * (sft_logps[name] - base_logps[name])
            assert first[f"rewards/{name}"] == pytest.approx(expected_reward, rel=1e-4, abs=1e-5), (workdir, name)
    with pytest.raises(ValueError, match="reference: checkpoint has"):  # resuming with another reference
        train_kto(kto_config(llama_dir, **overrides), str(tmp_path / "base_reference"), one_device_mesh())


def _perturbed_copy(model_dir, tmp_path) -> pathlib.Path:
    """A copy of the base model with one weight changed (another fingerprint)."""
    model = from_pretrained(model_dir)
    params = model.params()
    params["final_norm"] = params["final_norm"] * 1.5
    model.set_params(params)
    save_pretrained(model, tmp_path / "perturbed")
    return tmp_path / "perturbed"


def test_kto_stage_contract_on_a_finished_run(llama_dir, reference_run, tmp_path):
    """kto_stage.run on a finished workdir: no step, StageResult with the export; report_lines as the pipeline's."""
    import shutil

    from lasa_jax.kto import stage as kto_stage

    workdir = tmp_path / "kto"
    shutil.copytree(reference_run[0], workdir)
    settings = kto_stage.settings(kto_config(llama_dir))
    assert settings.reference_mode == "online" and settings.buckets == (64, 128, 256)
    result = kto_stage.run(settings, str(workdir), one_device_mesh())
    assert (result.stage, result.status, result.completed) == ("kto", "completed", True)
    assert result.details.step == TOTAL_STEPS and result.details.resumed_from == TOTAL_STEPS
    assert result.outputs["hf_export"] == str(workdir / "hf_export")
    assert kto_stage.report_lines(str(workdir)) == [
        f"KTO completed at step {TOTAL_STEPS} of {TOTAL_STEPS}.",
        "- [kto/metrics.jsonl](kto/metrics.jsonl), aligned model [kto/hf_export](kto/hf_export)"]
    assert kto_stage.report_lines(str(tmp_path / "none")) == [
        "- none/metrics.jsonl (missing), aligned model none/hf_export (missing)"]
    with pytest.raises(ValueError, match="config field train.batch_size must be >= 2"):
        kto_stage.settings(kto_config(llama_dir, **{"train.batch_size": 1}))
