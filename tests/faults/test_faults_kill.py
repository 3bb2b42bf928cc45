"""kill -9 anywhere, then rerun: each stage's script on a tiny random model is killed with SIGKILL at a random
point, the same command is rerun, and its outputs must equal those of an uninterrupted run (bit-identical: every
stage is deterministic on CPU), while every file at a final path right after the kill parses completely (nothing
half-written is ever read as complete). One seed per stage by default; more seeds are marked slow. KTO's kill -9
test is tests/kto/test_trainer.py::test_sigterm_then_kill9_then_rerun_gives_bit_identical_parameters."""
import json
import os
import shutil
import sys

import pytest

from tests.faults.faults_util import REPO, assert_complete, assert_same_tree, kill_after, kill_points, run, script

DEMO_PROMPTS = REPO / "lasa_jax" / "demo_data" / "prompts.jsonl"
DEMO_LANGUAGES = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
SLOW_SEEDS = [pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2)]
SEEDS = [0, *SLOW_SEEDS]


class Stage:
    """One stage command run in `<base>/run`; the uninterrupted reference is moved to `<base>/reference`, so both
    runs see the same paths (paths recorded in outputs compare equal)."""

    def __init__(self, base, command, ignore=()):
        self.base, self.command, self.ignore = base, command, ignore
        self.workdir, self.reference = base / "run", base / "reference"
        proc = run(command(self.workdir))
        self.wall_s = proc.wall_s
        shutil.move(self.workdir, self.reference)

    def kill_then_rerun(self, seed):
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        delay = kill_points(self.wall_s, [seed])[0]
        code = kill_after(self.command(self.workdir), delay)
        if self.workdir.exists():
            assert_complete(self.workdir)
        run(self.command(self.workdir))
        assert_same_tree(self.reference, self.workdir, self.ignore)
        return code


def _locate(model_dir):
    return lambda workdir: script(
        "locate", "--config=configs/locate.py", f"--config.model_path={model_dir}", f"--workdir={workdir}",
        "--config.dtype=float32", "--config.data.source=jsonl", f"--config.data.path={DEMO_PROMPTS}",
        "--config.data.splits=('train',)", "--config.data.max_groups_per_source=6", "--config.progress=False",
        "--config.selection.num_bootstrap=20", "--config.report.tsne_layers=1", "--config.report.tsne_max_iter=250")


def _ssi(model_dir):
    return lambda workdir: script(
        "train_ssi", "--config=configs/ssi.py", f"--config.model_path={model_dir}", f"--workdir={workdir}",
        "--config.dtype=float32", "--config.residual_index=2", "--config.data.source=jsonl",
        f"--config.data.jsonl_path={DEMO_PROMPTS}", "--config.data.jsonl_splits=('train',)",
        "--config.data.include_flores=False", "--config.data.eval_multijail=False",
        f"--config.data.train_languages={DEMO_LANGUAGES!r}", "--config.data.test_languages=()",
        "--config.threshold.rule=accuracy", "--config.train.num_epochs=8")


def _generate(model_dir, prompts):
    return lambda workdir: script(
        "generate", "--config=configs/generate.py", f"--workdir={workdir}", "--config.mode=baseline",
        f"--config.model_path={model_dir}", "--config.dtype=float32", f"--config.eval_sets=jsonl:{prompts}",
        "--config.decoding.max_new_tokens=8", "--config.decoding.batch_size=4", "--config.chunk_size=4",
        "--config.progress=False")


def _evaluate(model_dir, generations):
    return lambda workdir: script(
        "evaluate", "--config=configs/evaluate.py", f"--workdir={workdir}", "--config.dtype=float32",
        f"--config.baseline_generations={generations}", f"--config.lasa_generations={generations}",
        "--config.asr_sources=demo", "--config.refusal_sources=demo", "--config.judge.safety=rubric",
        "--config.judge.refusal=rubric", f"--config.judge.model_path={model_dir}", "--config.judge.batch_size=4",
        "--config.judge.max_new_tokens=4", "--config.judge.cache_batch_size=4", "--config.progress=False")


EXPORT = ("import sys\nfrom lasa_jax.models import from_pretrained, save_pretrained\n"
          "source, out = sys.argv[1:]\n"
          "save_pretrained(from_pretrained(source), out, max_shard_size='20KB', overwrite=True)\n")


def _export(model_dir):
    return lambda workdir: [sys.executable, "-c", EXPORT, str(model_dir), str(workdir / "hf_export")]


@pytest.fixture(scope="module")
def eval_prompts(tmp_path_factory):
    """24 held-out demo prompts (12 harmful, 12 benign) as an evaluation JSONL."""
    rows = [json.loads(line) for line in DEMO_PROMPTS.read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "eval" and r["language"] in ("en", "zh", "ar")]
    rows = sorted(rows, key=lambda r: (r["label"], r["group_id"], r["language"]))
    rows = [r for r in rows if r["label"] == 0][:12] + [r for r in rows if r["label"] == 1][:12]
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    path.write_text("".join(json.dumps({"id": f"{r['group_id']}:{r['language']}", "language": r["language"],
                                        "prompt": r["prompt"], "source": "demo",
                                        "expected": "harmful" if r["label"] else "benign"}) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def locate_stage(tiny_hf_dirs, tmp_path_factory):
    return Stage(tmp_path_factory.mktemp("kill_locate"), _locate(tiny_hf_dirs["llama"]))


@pytest.fixture(scope="module")
def ssi_stage(tiny_hf_dirs, tmp_path_factory):
    return Stage(tmp_path_factory.mktemp("kill_ssi"), _ssi(tiny_hf_dirs["llama"]))


@pytest.fixture(scope="module")
def generate_stage(tiny_hf_dirs, eval_prompts, tmp_path_factory):
    return Stage(tmp_path_factory.mktemp("kill_generate"), _generate(tiny_hf_dirs["llama"], eval_prompts))


@pytest.fixture(scope="module")
def evaluate_stage(tiny_hf_dirs, generate_stage, tmp_path_factory):
    generations = generate_stage.reference / "generations.jsonl"
    return Stage(tmp_path_factory.mktemp("kill_evaluate"), _evaluate(tiny_hf_dirs["llama"], generations),
                 ignore=("evaluation_meta.json",))  # compared below: its cache hit / miss split depends on the kill


@pytest.fixture(scope="module")
def export_stage(tiny_hf_dirs, tmp_path_factory):
    return Stage(tmp_path_factory.mktemp("kill_export"), _export(tiny_hf_dirs["llama"]))


@pytest.mark.parametrize("seed", SEEDS)
def test_locate_capture_and_selection_survive_kill9(locate_stage, seed):
    locate_stage.kill_then_rerun(seed)


@pytest.mark.parametrize("seed", SEEDS)
def test_ssi_feature_cache_and_training_survive_kill9(ssi_stage, seed):
    ssi_stage.kill_then_rerun(seed)
    assert (ssi_stage.workdir / "ssi" / "params.safetensors").is_file()


@pytest.mark.parametrize("seed", SEEDS)
def test_generation_resumes_after_kill9(generate_stage, seed):
    generate_stage.kill_then_rerun(seed)
    records = (generate_stage.workdir / "generations.jsonl").read_text().splitlines()
    assert len(records) == 24


@pytest.mark.parametrize("seed", SEEDS)
def test_evaluation_with_llm_judges_survives_kill9(evaluate_stage, seed):
    evaluate_stage.kill_then_rerun(seed)
    report = json.loads((evaluate_stage.workdir / "report.json").read_text())
    assert report["systems"] == ["baseline", "lasa"]
    metas = [json.loads((d / "evaluation_meta.json").read_text()) for d in (evaluate_stage.reference,
                                                                           evaluate_stage.workdir)]
    for meta in metas:  # the pairs judged in all (served from the verdict cache or sent to the judge)
        cache = meta.pop("judge_cache")
        meta["judged_pairs"] = cache["hits"] + cache["misses"]
    assert metas[0] == metas[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_hf_export_survives_kill9(export_stage, seed):
    export_stage.kill_then_rerun(seed)
    assert os.listdir(export_stage.workdir) == ["hf_export"]  # a killed writer's temporary directory is swept
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(export_stage.workdir / "hf_export")  # the consumer reads it


def test_generation_stops_on_a_full_disk_and_the_rerun_continues(generate_stage):
    """The resume file hits a file-size limit mid-append: one error naming it (exit 2), the finished chunks stay,
    and the rerun without the limit continues to the uninterrupted run's output."""
    from tests.faults.faults_util import file_size_limit, last_stderr_line

    workdir = generate_stage.base / "disk_full"
    partial = workdir / "generations.jsonl.partial"
    limit = (generate_stage.reference / "generations.jsonl").stat().st_size // 2
    assert limit > (generate_stage.reference / "generate_config.json").stat().st_size
    proc = run(generate_stage.command(workdir), preexec_fn=file_size_limit(limit))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last_stderr_line(proc) == f"error: [Errno 27] File too large: '{partial}'"
    assert partial.stat().st_size == limit and not (workdir / "generations.jsonl").exists()
    rerun = run(generate_stage.command(workdir))
    assert "resuming from" in rerun.stderr
    assert ((workdir / "generations.jsonl").read_bytes()
            == (generate_stage.reference / "generations.jsonl").read_bytes())


# files whose content records wall time, throughput or run identity (compared by their consumers' fields instead)
PIPELINE_VOLATILE = ("run_summary.json", "metrics.jsonl", "tensorboard", "checkpoints", "stage_done.json",
                     "report.md", "pipeline_config.json", "config.json", "data_summary.json")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_whole_pipeline_survives_kill9(tmp_path, seed):
    """The demo pipeline (every stage) killed at a random point and rerun ends with the same deterministic stage
    outputs as an uninterrupted run: k*, the SSI parameters, the exported KTO policy, both generation files and
    the evaluation report (bit-identical up to wall-time fields); every file at a final path right after the kill
    parses completely."""
    def command(workdir):
        return script("demo", "--config=configs/demo_tiny.py", f"--workdir={workdir}",
                      "--config.kto.train.num_steps=12", "--config.kto.checkpoint.every_steps=4",
                      "--config.ssi.train.num_epochs=4", "--config.locate.selection.num_bootstrap=20",
                      "--config.generate.decoding.max_new_tokens=6")

    stage = Stage(tmp_path, command, ignore=PIPELINE_VOLATILE)
    stage.kill_then_rerun(seed)
    for name in ("locate/bottleneck.json", "ssi/ssi/params.safetensors", "kto/hf_export/model.safetensors.index.json",
                 "generate_lasa/generations.jsonl", "generate_baseline/generations.jsonl", "evaluate/report.json"):
        assert (stage.workdir / name).is_file(), name  # compared with the reference by kill_then_rerun
