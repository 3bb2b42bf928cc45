"""launch/*.sh in --dry-run mode: the printed gcloud commands, argument quoting, and usage errors."""
import pathlib
import shlex
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"


def _run(script, *args):
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=30)


def _commands(result):
    """Printed commands ("+ " then shell-quoted argv) -> list of argv lists."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("+ ") for line in lines), result.stdout
    return [shlex.split(line[2:]) for line in lines]


def test_create_tpu_dry_run():
    (argv,) = _commands(_run("create_tpu.sh", "lasa-v5p", "--zone", "us-east5-a", "--accelerator-type", "v5p-8",
                             "--version", "v2-alpha-tpuv5", "--spot", "--dry-run"))
    assert argv == ["gcloud", "compute", "tpus", "tpu-vm", "create", "lasa-v5p", "--zone=us-east5-a",
                    "--accelerator-type=v5p-8", "--version=v2-alpha-tpuv5", "--spot"]
    (argv,) = _commands(_run("create_tpu.sh", "t", "--dry-run", "--zone", "z", "--accelerator-type", "v5p-16",
                             "--version", "r", "--project", "my-proj"))
    assert "--spot" not in argv and "--project=my-proj" in argv and "--accelerator-type=v5p-16" in argv


def test_setup_tpu_dry_run_copies_and_installs():
    listing, copy, scp, ssh = _commands(_run("setup_tpu.sh", "lasa-v5p", "--zone", "europe-west4-b", "--repo-dir",
                                    "work dir", "--dry-run"))
    assert listing[:2] == ["bash", "-c"] and "ls-files -z --cached --others --exclude-standard" in listing[2]
    assert copy[0] == "tar" and str(LAUNCH.parent) in copy and copy[-2:] == ["-czf", "/tmp/lasa-jax-src.tar.gz"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lasa-v5p"]
    assert "--worker=all" in ssh and "--zone=europe-west4-b" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
    assert "tar -xzf /tmp/lasa-jax-src.tar.gz -C work\\ dir" in remote
    assert "python3.11 -m venv .venv" in remote and ".venv/bin/pip install -q -e '.[tpu]'" in remote
    (ssh,) = _commands(_run("setup_tpu.sh", "n", "--zone", "z", "--git-url", "https://example.com/lasa.git",
                            "--git-ref", "v0.1", "--dry-run"))
    remote = next(a for a in ssh if a.startswith("--command="))
    assert "git clone https://example.com/lasa.git lasa-jax && git -C lasa-jax checkout v0.1" in remote


def test_run_pod_dry_run_quotes_arguments():
    args = ["--workdir=gs://bucket/run 1", "--note=it's $HOME; rm -rf /", "--config.lr=5e-7"]
    (argv,) = _commands(_run("run_pod.sh", "lasa-v5p", "--zone", "us-central2-b", "--dry-run", "--",
                             "lasa_jax.scripts.train_kto", *args))
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lasa-v5p"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv
    remote = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    # the remote shell sees exactly: cd DIR && .venv/bin/python -m MODULE ARGS (each argument intact)
    assert shlex.split(remote) == ["cd", "lasa-jax", "&&", ".venv/bin/python", "-m", "lasa_jax.scripts.train_kto",
                                   *args]


@pytest.mark.parametrize("script, args", [
    ("create_tpu.sh", ["n", "--zone", "z", "--version", "r", "--dry-run"]),  # no accelerator type
    ("create_tpu.sh", ["--zone", "z", "--accelerator-type", "v5p-8", "--version", "r", "--dry-run"]),  # no NAME
    ("create_tpu.sh", ["n", "--zone"]),  # option without value
    ("create_tpu.sh", ["n", "--zone", "z", "--accelerator-type", "a", "--version", "r", "--bogus"]),
    ("setup_tpu.sh", ["n", "--dry-run"]),  # no zone
    ("setup_tpu.sh", ["n", "--zone", "z", "--git-ref", "main", "--dry-run"]),  # ref without url
    ("run_pod.sh", ["n", "--zone", "z", "--dry-run"]),  # no module
    ("run_pod.sh", ["n", "--zone", "z", "--dry-run", "--", "not a module"]),
    ("run_pod.sh", ["--zone", "z", "--dry-run", "--", "lasa_jax.x"]),  # no NAME
])
def test_bad_arguments_exit_2_with_usage(script, args):
    result = _run(script, *args)
    assert result.returncode == 2 and "usage:" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("script", ["create_tpu.sh", "setup_tpu.sh", "run_pod.sh"])
def test_help_prints_the_header_comment(script):
    result = _run(script, "--help")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"Usage: {script} NAME --zone ZONE") for line in lines)
    assert "set -euo" not in result.stdout and not any(line.startswith("#") for line in lines)
