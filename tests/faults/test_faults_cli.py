"""The scripts' error reporting (lasa_jax.cli.run): user errors end stderr with one `error: <message>` line and
exit with status 2; unexpected failures keep their traceback; LASA_JAX_DEBUG=1 / --verbosity=1 show tracebacks for all.
Every case runs a real script in a subprocess."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_PROMPTS = REPO / "lasa_jax" / "demo_data" / "prompts.jsonl"


def _script(module, *args, env_extra=None, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", f"lasa_jax.scripts.{module}", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _last_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = _last_line(proc)
    assert last.startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def _locate_args(model_dir, workdir):
    return ["--config=configs/locate.py", f"--config.model_path={model_dir}", f"--workdir={workdir}",
            "--config.data.source=jsonl", f"--config.data.path={DEMO_PROMPTS}", "--config.data.splits=('train',)",
            "--config.data.max_groups_per_source=0", "--config.progress=False", "--config.report.tsne_layers="]


@pytest.fixture
def truncated_model(tiny_hf_dirs, tmp_path):
    out = tmp_path / "truncated"
    shutil.copytree(tiny_hf_dirs["llama"], out)
    file = out / "model.safetensors"
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size - 1000)
    return out


def test_truncated_checkpoint_is_one_error_line_with_exit_2(truncated_model, tmp_path):
    proc = _script("locate", *_locate_args(truncated_model, tmp_path / "run"))
    _user_error(proc, f"{truncated_model / 'model.safetensors'}: tensor ", "truncated file")


def test_debug_switches_show_the_traceback(truncated_model, tmp_path):
    for env_extra, extra in (({"LASA_JAX_DEBUG": "1"}, []), ({}, ["--verbosity=1"])):
        proc = _script("locate", *_locate_args(truncated_model, tmp_path / "run"), *extra, env_extra=env_extra)
        assert proc.returncode == 1 and "Traceback" in proc.stderr, proc.stderr[-2000:]
        assert "InputError" in proc.stderr and "truncated file" in proc.stderr


def test_missing_model_directory(tmp_path):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text('{"id": "a", "language": "en", "prompt": "Hi", "expected": "benign", "source": "demo"}\n')
    proc = _script("generate", "--config=configs/generate.py", f"--workdir={tmp_path / 'run'}",
                   "--config.mode=baseline", f"--config.model_path={tmp_path / 'no_such_model'}",
                   f"--config.eval_sets=jsonl:{prompts}")
    _user_error(proc, "no_such_model")


def test_evaluation_file_with_a_bad_record(tmp_path):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text('{"language": "en", "prompt": "Hi"}\n')
    proc = _script("generate", "--config=configs/generate.py", f"--workdir={tmp_path / 'run'}",
                   "--config.mode=baseline", f"--config.model_path={tmp_path}", f"--config.eval_sets=jsonl:{prompts}")
    _user_error(proc, f"{prompts}:1: field 'id' must be a non-empty string, got None")


def test_mesh_that_does_not_fit_the_devices(tiny_hf_dirs, tmp_path):
    proc = _script("locate", *_locate_args(tiny_hf_dirs["llama"], tmp_path / "run"), "--config.mesh.fsdp=3")
    _user_error(proc, "mesh data=1 fsdp=3 tensor=1 needs 3 devices, have 8")


def test_bad_kto_config_field(tiny_hf_dirs, tmp_path):
    proc = _script("train_kto", "--config=configs/kto.py", f"--config.model_path={tiny_hf_dirs['llama']}",
                   "--config.data.format=parquet", f"--config.data.path={DEMO_PROMPTS}", f"--workdir={tmp_path}")
    _user_error(proc, "config field data.format must be one of", "'parquet'")


def test_output_that_may_not_be_written(tiny_hf_dirs, tmp_path):
    """A read-only run directory: the write error names the path."""
    workdir = tmp_path / "readonly"
    workdir.mkdir()
    workdir.chmod(0o555)
    try:
        if os.access(workdir, os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        proc = _script("locate", *_locate_args(tiny_hf_dirs["llama"], workdir))
    finally:
        workdir.chmod(0o755)
    _user_error(proc, str(workdir))


def test_unexpected_failure_keeps_its_traceback(tmp_path):
    code = ("from lasa_jax.cli import run\n"
            "def main(argv):\n    raise RuntimeError('an unexpected bug')\n"
            "run(main)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: an unexpected bug" in proc.stderr


def test_multi_line_message_ends_with_its_first_line(tiny_hf_dirs, tmp_path):
    import json

    model = tmp_path / "model"
    shutil.copytree(tiny_hf_dirs["llama"], model)
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 96
    (model / "config.json").write_text(json.dumps(config))
    proc = _script("locate", *_locate_args(model, tmp_path / "run"))
    _user_error(proc, f"{model}: checkpoint does not match its config.json (llama, 3 layers) (details above)")
    assert "model.layers.0.mlp.down_proj.weight: file (64, 160), expected (64, 96)" in proc.stderr
