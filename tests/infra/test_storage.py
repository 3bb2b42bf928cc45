"""The path layer (lasa_jax.infra.storage) on a local directory and on a non-local URL (fsspec's in-process memory://
filesystem, registered with etils.epath by storage), orbax checkpoints at such a URL, and the tiny demo pipeline
run with --workdir=memory://... (nothing written locally, every artifact at the URL, the export reloadable)."""
import json
import os
import uuid

import numpy as np
import pytest

from lasa_jax.infra import storage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["local", "memory"])
def base(request, tmp_path):
    """A fresh directory: a local temporary one, or a unique memory:// URL (removed afterwards)."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    url = f"memory://lasa-test-{uuid.uuid4().hex}"
    yield url
    storage.rmtree(url)


def test_url_detection_and_epath_paths():
    assert storage.is_url("gs://bucket/run") and storage.is_url("memory://x")
    assert not storage.is_url("/tmp/run") and not storage.is_url("relative/run")
    path = storage.as_path("memory://a/b") / "c.json"
    assert os.fspath(path) == "memory://a/b/c.json" and path.name == "c.json"
    assert os.fspath(path.parent) == "memory://a/b"
    assert os.fspath(storage.as_path("gs://bucket/x") / "y") == "gs://bucket/x/y"
    import pathlib
    assert isinstance(storage.to_path("/tmp/x"), pathlib.Path)  # local paths keep their type


def test_round_trip_listing_and_removal(base):
    storage.makedirs(base)
    storage.atomic_write_json(os.path.join(base, "a", "x.json"), {"k": [1, "ü"]})
    storage.atomic_write_text(os.path.join(base, "b.txt"), "héllo\n")
    assert storage.read_json(os.path.join(base, "a", "x.json")) == {"k": [1, "ü"]}
    assert storage.read_text(os.path.join(base, "b.txt")) == "héllo\n"
    assert storage.read_bytes(os.path.join(base, "b.txt")) == "héllo\n".encode()
    assert storage.listdir(base) == ["a", "b.txt"]
    assert storage.isdir(os.path.join(base, "a")) and not storage.isfile(os.path.join(base, "a"))
    assert storage.isfile(os.path.join(base, "b.txt")) and not storage.isdir(os.path.join(base, "b.txt"))
    digest = storage.sha256_file(os.path.join(base, "b.txt"))
    import hashlib
    assert digest == hashlib.sha256("héllo\n".encode()).hexdigest()
    with pytest.raises(FileNotFoundError, match="the thing not found"):
        storage.read_json(os.path.join(base, "missing.json"), "the thing")
    storage.remove(os.path.join(base, "b.txt"))
    storage.remove(os.path.join(base, "b.txt"))  # absent: no error
    assert storage.listdir(base) == ["a"]
    storage.rmtree(base)
    assert not storage.exists(base) and not storage.exists(os.path.join(base, "a", "x.json"))
    storage.rmtree(base)  # absent: no error


def test_atomic_replace_keeps_the_old_file_when_the_writer_fails(base):
    path = os.path.join(base, "sub", "report.json")
    storage.atomic_write_json(path, {"v": 1})
    storage.atomic_write_json(path, {"v": 2})
    assert storage.read_json(path) == {"v": 2}
    with pytest.raises(RuntimeError, match="boom"):
        with storage.atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write('{"v": 3')  # half written
            raise RuntimeError("boom")
    assert storage.read_json(path) == {"v": 2}
    assert storage.listdir(os.path.join(base, "sub")) == ["report.json"]  # no temporary left at the final place


def test_jsonl_append_truncate_and_iteration(base):
    path = os.path.join(base, "gen", "generations.jsonl")
    storage.append_durably(path, b'{"i": 1}\n')
    storage.append_durably(path, b'{"i": 2}\n{"i": 3')  # torn last line of a killed writer
    data = storage.read_bytes(path)
    storage.truncate(path, data.rfind(b"\n") + 1)
    assert [row for _, row in storage.iter_jsonl(path)] == [{"i": 1}, {"i": 2}]
    with storage.open_append(path) as f:  # MetricWriter's handle
        f.write(json.dumps({"i": 4}) + "\n")
        f.flush()
        assert [row["i"] for _, row in storage.iter_jsonl(path)] == [1, 2, 4]
        f.write(json.dumps({"i": 5}) + "\n")
    assert [row["i"] for _, row in storage.iter_jsonl(path)] == [1, 2, 4, 5]
    storage.write_jsonl(path, [{"a": "ü"}])
    assert list(storage.iter_jsonl(path)) == [(1, {"a": "ü"})]
    if storage.is_url(base):
        storage.append_durably(path, b'{"torn": ')
        storage.append_after_complete_lines(path, b'{"b": 1}\n')  # the judge cache's append at a URL
        assert [row for _, row in storage.iter_jsonl(path)] == [{"a": "ü"}, {"b": 1}]


def test_atomic_directory_copy_tree_and_local_copy(base, tmp_path):
    target = os.path.join(base, "export")
    with storage.atomic_directory(target) as tmp:
        os.makedirs(os.path.join(tmp, "nested"))
        with open(os.path.join(tmp, "nested", "w.bin"), "wb") as f:
            f.write(b"\x00\x01")
        with open(os.path.join(tmp, "old.txt"), "w") as f:
            f.write("old")
    with pytest.raises(FileExistsError):
        with storage.atomic_directory(target):
            pass
    with storage.atomic_directory(target, overwrite=True) as tmp:
        with open(os.path.join(tmp, "new.txt"), "w") as f:
            f.write("new")
    assert storage.listdir(target) == ["new.txt"]  # the old tree is replaced, not merged
    storage.copy_tree(target, os.path.join(base, "copy"))
    assert storage.read_text(os.path.join(base, "copy", "new.txt")) == "new"
    with storage.local_copy(target) as local:
        assert not storage.is_url(local) and os.listdir(local) == ["new.txt"]
    np.savez(str(tmp_path / "a.npz"), x=np.arange(3))
    storage.copy_file(str(tmp_path / "a.npz"), os.path.join(base, "a.npz"))
    with np.load(storage.for_reading(os.path.join(base, "a.npz"))) as data:
        assert data["x"].tolist() == [0, 1, 2]


def test_checkpoints_at_a_url_orbax_cannot_write_go_through_a_mirror():
    import jax.numpy as jnp

    from lasa_jax.kto.checkpoint import MIRROR_COMPLETE, Checkpointer, orbax_writes

    assert orbax_writes("/tmp/x") and orbax_writes("gs://bucket/x") and not orbax_writes("memory://x")
    url = f"memory://lasa-test-{uuid.uuid4().hex}/checkpoints"
    state = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(7)}
    try:
        with Checkpointer(url, max_to_keep=2) as checkpointer:
            for step in (1, 2, 3):
                assert checkpointer.save(step, {"w": state["w"] + step, "n": state["n"]}, {"step": step})
        assert storage.listdir(url) == ["2", "3"]  # max_to_keep applies at the URL
        assert MIRROR_COMPLETE in storage.listdir(f"{url}/3")
        storage.copy_tree(f"{url}/3", f"{url}/4")  # a copy without its completion marker: not a checkpoint
        storage.remove(f"{url}/4/{MIRROR_COMPLETE}")
        with Checkpointer(url) as checkpointer:
            assert checkpointer.all_steps() == [2, 3]
            restored, meta = checkpointer.restore(3, state)
            assert meta == {"step": 3}
            np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(6.0).reshape(2, 3) + 3)
    finally:
        storage.rmtree(url.rsplit("/", 1)[0])


@pytest.mark.slow
def test_demo_pipeline_runs_on_a_memory_url_workdir(tmp_path, monkeypatch):
    """The tiny demo with --workdir=memory://...: every stage finishes, nothing is written under the working
    directory (the gs:// bug wrote a local folder named "gs:"), and the export reloads from the URL."""
    from absl import flags

    from lasa_jax.infra.trees import flatten
    from lasa_jax.models.hf import from_pretrained
    from lasa_jax.pipeline import STAGES
    from lasa_jax.scripts import demo

    monkeypatch.chdir(tmp_path)
    workdir = f"memory://lasa-demo-{uuid.uuid4().hex}/run"
    flags.FLAGS(["demo", f"--config={ROOT}/configs/demo_tiny.py", f"--workdir={workdir}"])
    try:
        config = demo._CONFIG.value
        config.kto.train.num_steps, config.kto.checkpoint.every_steps, config.kto.train.warmup_steps = 4, 2, 1
        demo.main(["demo"])
        assert os.listdir(tmp_path) == []
        for stage in STAGES:
            done = storage.read_json(f"{workdir}/{stage}/stage_done.json")
            assert done["run_id"], stage
        assert "Semantic bottleneck" in storage.read_text(f"{workdir}/report.md")
        assert storage.read_json(f"{workdir}/evaluate/report.json")["comparison"]
        assert storage.isfile(f"{workdir}/ssi/ssi/params.safetensors")
        assert [row for _, row in storage.iter_jsonl(f"{workdir}/kto/metrics.jsonl")][-1]["step"] == 4
        assert storage.listdir(f"{workdir}/kto/checkpoints") == ["2", "4"]
        summary = storage.read_json(f"{workdir}/kto/run_summary.json")
        export = f"{workdir}/kto/hf_export"
        assert summary["status"] == "completed" and summary["export_dir"] == export
        assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(storage.listdir(export))
        local = str(tmp_path.parent / f"{tmp_path.name}-export")
        storage.copy_tree(export, local)
        from_url, from_local = from_pretrained(export), from_pretrained(local)
        assert from_url.source_path == export and from_url.fingerprint == from_local.fingerprint
        url_params, local_params = flatten(from_url.params()), flatten(from_local.params())
        assert url_params.keys() == local_params.keys()
        for name, value in url_params.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(local_params[name]), err_msg=name)
        generations = [row for _, row in storage.iter_jsonl(f"{workdir}/generate_lasa/generations.jsonl")]
        assert generations and all(row["mode"] for row in generations)
    finally:
        flags.FLAGS.unparse_flags()
        storage.rmtree(workdir.rsplit("/", 1)[0])
