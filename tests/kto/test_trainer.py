"""lasa_jax.kto.trainer: the run (rewards, precomputed reference, NaN stop, resume identity, SIGTERM, kill -9
bit-identical resume), init_from and the reference model.

Every run trains the tiny random Llama of `tiny_hf_dirs` on the demo KTO rows (`kto_runs.RUN`). Compiled programs are
shared through a persistent compilation cache (in-process and with the subprocess runs), which does not change
numerics.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import iterate_kto_batches
from lasa_jax.kto.checkpoint import Checkpointer
from lasa_jax.kto.data import prepare_examples
from lasa_jax.kto.loop import NonFiniteLossError
from lasa_jax.kto.metric_writer import read_metrics
from lasa_jax.kto.trainer import CHECKPOINT_DIR, REFERENCE_TABLE_FILE, train_kto
from lasa_jax.models import logprobs
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.loading import load_tokenizer
from lasa_jax.stage import EXIT_PREEMPTED
from tests.kto.kto_runs import (
    DEMO_KTO,
    REPO,
    RUN,
    TOTAL_STEPS,
    assert_bit_identical,
    exported,
    kto_settings,
    one_device_mesh,
)

pytestmark = pytest.mark.usefixtures("compilation_cache")


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
    result = train_kto(kto_settings(llama_dir, **{"reference.mode": "precomputed"}), str(tmp_path), one_device_mesh())
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
    settings = kto_settings(llama_dir, **{"train.learning_rate": 1e30, "train.warmup_steps": 0,
                                      "checkpoint.every_steps": 1, "train.num_steps": 4})
    with pytest.raises(NonFiniteLossError, match="step 2") as error:
        train_kto(settings, str(tmp_path), one_device_mesh())
    assert error.value.step == 2 and error.value.last_checkpoint_step == 1
    with Checkpointer(tmp_path / CHECKPOINT_DIR) as ckpt:
        assert ckpt.all_steps() == [1]
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert records[-1]["step"] == 2 and np.isnan(records[-1]["loss"])
    assert not (tmp_path / "hf_export").exists()

    # resuming this workdir with another model, or another loss setting, is refused with the differences named
    with pytest.raises(ValueError, match="different run") as error:
        train_kto(kto_settings(llama_dir, **{"train.learning_rate": 1e30, "train.warmup_steps": 0,
                                           "checkpoint.every_steps": 1, "train.num_steps": 4, "train.beta": 0.5}),
                  str(tmp_path), one_device_mesh())
    assert "loss.beta: checkpoint has 0.1, this run has 0.5" in str(error.value)
    with pytest.raises(ValueError, match="model.fingerprint"):
        train_kto(kto_settings(tiny_hf_dirs["qwen2"], **{"train.learning_rate": 1e30, "train.warmup_steps": 0,
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


def test_init_from_sets_the_policy_and_the_default_reference(llama_dir, sft_llama_dir, llama_ssi, tmp_path):
    """init_from = another HF directory of the architecture. Step 1's policy log-probs are that model's; the default
    reference is the initial policy (rewards 0 at step 1), reference.path = model_path gives rewards
    beta * (log pi_init - log pi_base); SSI labels still score prompts on model_path (its SSI refuses other models);
    the reference is part of the run identity."""
    overrides = {"init_from": str(sft_llama_dir), "labels.mode": "ssi", "labels.ssi_dir": str(llama_ssi[0]),
                 "train.num_steps": 1, "checkpoint.every_steps": 0, "export.enabled": False,
                 "data.truncate_completions": False}  # the whole-completion rows (their first batch: see below)
    base, sft = from_pretrained(llama_dir), from_pretrained(sft_llama_dir)
    examples, _ = prepare_examples(kto_settings(llama_dir, **overrides), load_tokenizer(str(llama_dir)), lambda: base)
    batch = next(iterate_kto_batches(examples, batch_size=4, seq_len=256, pad_id=0, seed=42))[0]
    classes = {"desirable": batch.valid & batch.is_desirable, "undesirable": batch.valid & ~batch.is_desirable}
    assert all(mask.any() for mask in classes.values())

    def class_means(model) -> dict[str, float]:
        arrays = (jnp.asarray(a) for a in (batch.input_ids, batch.attention_mask, batch.loss_mask))
        logps = np.asarray(logprobs.batch_logps(model.params(), model.config, *arrays, chunk_size=64))
        return {name: float(logps[mask].mean()) for name, mask in classes.items()}

    sft_logps, base_logps = class_means(sft), class_means(base)
    for workdir, reference in (("default_reference", {}), ("base_reference", {"reference.path": str(llama_dir)})):
        train_kto(kto_settings(llama_dir, **overrides, **reference), str(tmp_path / workdir), one_device_mesh())
        first = read_metrics(str(tmp_path / workdir / "metrics.jsonl"))[0]
        for name in classes:
            assert first[f"logps/{name}"] == pytest.approx(sft_logps[name], rel=1e-5)
            assert abs(sft_logps[name] - base_logps[name]) > 1.0
            expected_reward = 0.0 if not reference else 0.1 * (sft_logps[name] - base_logps[name])
            assert first[f"rewards/{name}"] == pytest.approx(expected_reward, rel=1e-4, abs=1e-5), (workdir, name)
    with pytest.raises(ValueError, match="reference: checkpoint has"):  # resuming with another reference
        train_kto(kto_settings(llama_dir, **overrides), str(tmp_path / "base_reference"), one_device_mesh())
