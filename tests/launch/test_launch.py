"""launch/*.sh in --dry-run mode: the printed gcloud commands, argument quoting, and usage errors; run_pod.sh's
detached job, --status and --stop scripts executed locally by bash (a stand-in for one worker)."""
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import time

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[2] / "launch"


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


def test_run_pod_foreground_dry_run_quotes_arguments():
    args = ["--workdir=gs://bucket/run 1", "--note=it's $HOME; rm -rf /", "--config.lr=5e-7"]
    (argv,) = _commands(_run("run_pod.sh", "lasa-v5p", "--zone", "us-central2-b", "--foreground", "--dry-run", "--",
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
    ("run_pod.sh", ["n", "--zone", "z", "--status", "--dry-run", "--", "lasa_jax.x"]),  # status takes no module
    ("run_pod.sh", ["n", "--zone", "z", "--attach", "--worker", "first", "--dry-run"]),
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


ECHO_MODULE = """import json, sys, time
for a in sys.argv[1:]:
    if a.startswith("--sleep="):
        time.sleep(float(a[len("--sleep="):]))
print(json.dumps(sys.argv[1:]), flush=True)
"""


def _remote(*args):
    """The --command a run_pod.sh --dry-run would send to every worker, and the gcloud argv."""
    (argv,) = _commands(_run("run_pod.sh", "lasa-v5p", "--zone", "z", "--dry-run", *args))
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "lasa-v5p"]
    return next(a for a in argv if a.startswith("--command="))[len("--command="):], argv


@pytest.fixture
def worker(tmp_path):
    """A stand-in worker: a HOME, and a repo dir whose .venv/bin/python is this interpreter, holding a module that
    prints its arguments (after an optional --sleep=SECONDS)."""
    home, repo = tmp_path / "home", tmp_path / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    home.mkdir()
    os.symlink(sys.executable, repo / ".venv" / "bin" / "python")
    (repo / "echo_args.py").write_text(ECHO_MODULE)

    def run_remote(command):
        env = dict(os.environ, HOME=str(home))
        return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, env=env, cwd=home)

    return home, repo, run_remote


def _wait_for(path, timeout=20.0):
    end = time.time() + timeout
    while not path.exists() and time.time() < end:
        time.sleep(0.1)
    assert path.exists(), f"{path} never appeared"
    return path.read_text().strip()


def test_run_pod_detaches_the_job_with_a_per_worker_log_and_status(worker):
    home, repo, run_remote = worker
    args = ["--workdir=runs/wd 1", "--note=it's $HOME; rm -rf /"]
    command, argv = _remote("--repo-dir", str(repo), "--", "echo_args", *args)
    assert "--worker=all" in argv and "setsid nohup bash -c" in command
    started = run_remote(command)
    assert started.returncode == 0, started.stderr
    state = home / "lasa-jax-pod"
    log = repo / "runs" / "wd 1" / "logs" / f"worker-{socket.gethostname()}.log"  # in the (relative) workdir
    assert _wait_for(state / "job.rc") == "0"  # the job's exit status, written when it ended
    assert json.loads(log.read_text()) == args  # every argument reached the module intact
    assert (state / "job.log_path").read_text().strip() == str(log) and (state / "job.pid").read_text().strip()
    status_command, status_argv = _remote("--status")
    assert "--worker=all" in status_argv
    status = run_remote(status_command)
    assert status.returncode == 0 and f"exited with status 0; log {log}" in status.stdout
    assert json.dumps(args) in status.stdout  # the log's last lines


def test_run_pod_refuses_a_second_start_and_stops_the_running_job(worker):
    home, repo, run_remote = worker
    command, _ = _remote("--repo-dir", str(repo), "--", "echo_args", "--workdir=gs://bucket/run", "--sleep=60")
    assert run_remote(command).returncode == 0
    state = home / "lasa-jax-pod"
    pid = int(_wait_for(state / "job.pid"))
    # a gs:// workdir: the log goes to the local state directory
    assert (state / "job.log_path").read_text().strip() == str(state / "logs" / f"worker-{socket.gethostname()}.log")
    again = run_remote(command)
    assert again.returncode == 1 and f"a job is already running (pid {pid})" in again.stderr
    assert f"running (pid {pid})" in run_remote(_remote("--status")[0]).stdout
    stop = run_remote(_remote("--stop")[0])
    assert stop.returncode == 0 and f"sent SIGTERM to job {pid}" in stop.stdout
    end = time.time() + 20
    while time.time() < end and subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0:
        time.sleep(0.1)
    status = run_remote(_remote("--status")[0]).stdout
    assert "running (pid" not in status and "exited with status 143" in status  # 128 + SIGTERM


def test_run_pod_attach_follows_one_workers_log():
    command, argv = _remote("--attach", "--worker", "3", "--project", "p")
    assert "--worker=3" in argv and "--worker=all" not in argv and "--project=p" in argv
    assert command.endswith('tail -n 100 -F "$(cat "$s/job.log_path")"')
    command, argv = _remote("--attach")
    assert "--worker=0" in argv


def test_run_pod_log_dir_option(worker):
    home, repo, run_remote = worker
    command, _ = _remote("--repo-dir", str(repo), "--log-dir", str(home / "my logs"), "--", "echo_args", "x")
    assert run_remote(command).returncode == 0
    assert _wait_for(home / "lasa-jax-pod" / "job.rc") == "0"
    assert json.loads((home / "my logs" / f"worker-{socket.gethostname()}.log").read_text()) == ["x"]
