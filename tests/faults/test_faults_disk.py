"""Disk full / write errors: a write refused by the file system (RLIMIT_FSIZE in a subprocess, SIGXFSZ ignored so
the write fails with EFBIG) stops with one error naming the path, leaves what was already finished intact, and the
rerun after freeing space completes. The generation stage's case is in tests/faults/test_faults_kill.py."""
import json
import os
import sys

from tests.faults.faults_util import assert_same_tree, file_size_limit, final_files, last_stderr_line, run

WRITE_JSON = ("import sys\nfrom lasa_jax.cli import run\nfrom lasa_jax.infra.storage import atomic_write_json\n"
              "def main(argv):\n    atomic_write_json(sys.argv[1], {'rows': ['x' * 100] * int(sys.argv[2])})\n"
              "run(main)\n")
EXPORT = ("import sys\nfrom lasa_jax.cli import run\n"
          "from lasa_jax.models import from_pretrained, save_pretrained\n"
          "def main(argv):\n"
          "    save_pretrained(from_pretrained(sys.argv[1]), sys.argv[2], max_shard_size='20KB', overwrite=True)\n"
          "run(main)\n")


def test_atomic_json_write_on_a_full_disk_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    proc = run([sys.executable, "-c", WRITE_JSON, str(path), "10"])
    old = path.read_bytes()
    proc = run([sys.executable, "-c", WRITE_JSON, str(path), "100"], preexec_fn=file_size_limit(4096))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_stderr_line(proc) == f"error: [Errno 27] File too large: '{path}'"
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["report.json"]  # no temporary file left
    run([sys.executable, "-c", WRITE_JSON, str(path), "100"])
    assert len(json.loads(path.read_text())["rows"]) == 100


def test_hf_export_on_a_full_disk_keeps_the_previous_export(tiny_hf_dirs, tmp_path):
    """Overwriting an export whose shards no longer fit: the previous export is untouched, no temporary directory
    is left, and the rerun writes the same files as an export that never failed."""
    out = tmp_path / "hf_export"
    run([sys.executable, "-c", EXPORT, str(tiny_hf_dirs["qwen2"]), str(out)])
    previous = {p.name: p.read_bytes() for p in final_files(out)}
    proc = run([sys.executable, "-c", EXPORT, str(tiny_hf_dirs["llama"]), str(out)],
               preexec_fn=file_size_limit(8192))
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = last_stderr_line(proc)
    assert last.startswith("error: [Errno 27] File too large: '") and f"{tmp_path}/.hf_export." in last, last
    assert {p.name: p.read_bytes() for p in final_files(out)} == previous
    assert os.listdir(tmp_path) == ["hf_export"]
    run([sys.executable, "-c", EXPORT, str(tiny_hf_dirs["llama"]), str(out)])
    fresh = tmp_path / "fresh"
    run([sys.executable, "-c", EXPORT, str(tiny_hf_dirs["llama"]), str(fresh)])
    assert_same_tree(fresh, out)
