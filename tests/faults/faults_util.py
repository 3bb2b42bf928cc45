"""Helpers of the fault tests (tests/test_faults_*.py): run a script, kill it with SIGKILL at a chosen point, check
that nothing at a final path is half-written, compare two run directories."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def run(cmd, timeout=600, preexec_fn=None) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=preexec_fn)
    proc.wall_s = time.perf_counter() - start
    assert proc.returncode == 0 or preexec_fn is not None, (proc.stdout + proc.stderr)[-4000:]
    return proc


def script(module: str, *args) -> list[str]:
    return [sys.executable, "-m", f"lasa_jax.scripts.{module}", *map(str, args)]


def kill_after(cmd, delay_s: float) -> int | None:
    """Start `cmd`, SIGKILL it after `delay_s` seconds; its return code (None-equivalent -9 when killed)."""
    process = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    return process.wait()


def final_files(directory) -> list[pathlib.Path]:
    """Files at final paths (no temporary `.name.*.tmp` file or directory, nothing under one)."""
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not (d.startswith(".") or d.endswith(".tmp") or "orbax-checkpoint-tmp" in d)]
        out += [pathlib.Path(root, f) for f in files if not (f.startswith(".") or f.endswith(".tmp"))]
    return sorted(out)


def assert_complete(directory) -> None:
    """Every file at a final path parses completely: JSON, JSON Lines (a `.partial` resume file may end in a cut
    line: its reader drops it), safetensors (integrity check), npz, PNG."""
    from lasa_jax.models.integrity import read_header

    for path in final_files(directory):
        name = path.name
        if name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    json.loads(line)
        elif name.endswith(".safetensors"):
            read_header(path)
        elif name.endswith(".npz"):
            with np.load(path) as data:
                for key in data.files:
                    data[key]
        elif name.endswith(".png"):
            raw = path.read_bytes()
            assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[-8:-4] == b"IEND", path
        elif name.endswith(".zip"):
            zipfile.ZipFile(path).testzip()


# JSON fields that record wall time (and any "*_seconds" / "*per_second*" field): compared by presence only
TIME_FIELDS = {"wall_seconds", "elapsed_seconds", "seconds", "created", "timestamp"}


def _is_time(key: str) -> bool:
    return key in TIME_FIELDS or key.endswith("_seconds") or "per_second" in key


def _without_times(value):
    if isinstance(value, dict):
        return {k: _is_time(k) or _without_times(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def tree_bytes(directory, ignore=()) -> dict[str, bytes]:
    """{relative path: content} of the final files under `directory`, skipping names in `ignore`; JSON files
    compare without the values of `TIME_FIELDS`, safetensors files with their header's keys sorted (the tensor
    bytes as they are)."""
    out = {}
    for path in final_files(directory):
        rel = str(path.relative_to(directory))
        if not any(part in ignore for part in pathlib.Path(rel).parts):
            out[rel] = path.read_bytes()
            if rel.endswith(".json"):
                out[rel] = json.dumps(_without_times(json.loads(out[rel])), sort_keys=True).encode()
            elif rel.endswith(".safetensors"):  # the library writes __metadata__ keys in hash order
                raw = out[rel]
                n = int.from_bytes(raw[:8], "little")
                out[rel] = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True).encode() + raw[8 + n:]
    return out


def assert_same_tree(reference, rerun, ignore=()) -> None:
    a, b = tree_bytes(reference, ignore), tree_bytes(rerun, ignore)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, different


def kill_points(reference_wall_s: float, seeds) -> list[float]:
    """A kill delay per seed, uniform over the reference run's wall time (from start-up to 95% of it)."""
    return [float(np.random.default_rng(seed).uniform(0.05, 0.95) * reference_wall_s) for seed in seeds]


def file_size_limit(max_bytes: int):
    """A preexec_fn: files the child writes may not grow beyond `max_bytes` (RLIMIT_FSIZE); SIGXFSZ is ignored so
    the write fails with EFBIG ("File too large") instead of killing the process."""
    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def last_stderr_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""
