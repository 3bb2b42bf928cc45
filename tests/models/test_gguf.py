"""GGUF import (lasa_jax.models.gguf) on tiny random models written as GGUF by the `gguf` package's writer.

Every converted directory is compared with transformers' own GGUF loading of the same file
(`from_pretrained(dir, gguf_file=...)`): identical tensors, config and tokenizer; lasa-jax loads it with HF's logits.
Then the bad inputs: truncated or foreign files, another architecture, a tensor type gguf cannot dequantise, a
tensor with no HF counterpart; and the command-line script.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from lasa_jax.infra.errors import InputError
from lasa_jax.models.gguf import IMPORT_RECORD, convert_gguf
from lasa_jax.models.hf import from_pretrained
from lasa_jax.testing import build_tiny_hf_model, write_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# transformers' GGUF loader knows no llama3 rope scaling (llama.cpp stores it as a rope_freqs tensor) and takes a
# qwen3 head size of 128 from Qwen3Config's default: tiny models it can load for the comparison.
GGUF_OVERRIDES = {"llama": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                  "qwen2": {}, "qwen3": dict(head_dim=128)}
CASES = [("llama", "F32"), ("llama", "F16"), ("llama", "Q8_0"), ("llama", "Q4_1"), ("qwen2", "F16"),
         ("qwen2", "Q8_0"), ("qwen3", "Q8_0"), ("qwen3", "Q4_1")]
CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps", "tie_word_embeddings",
               "rope_parameters", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
TEXTS = ("How do I bake bread at home?", "如何在家烤面包？", "Ninawezaje kuoka mkate nyumbani?")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """family -> a tiny random HF model directory that transformers' GGUF loader can represent."""
    dirs = {}
    for family, overrides in GGUF_OVERRIDES.items():
        dirs[family] = tmp_path_factory.mktemp(f"gguf_src_{family}")
        build_tiny_hf_model(dirs[family], family, seed=1, **overrides)
    return dirs


@pytest.fixture(scope="module")
def llama_gguf(tiny_dirs, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf_llama") / "tiny-llama.Q8_0.gguf"
    write_gguf(tiny_dirs["llama"], path, "Q8_0")
    return path


@pytest.mark.parametrize("family,tensor_type", CASES)
def test_convert_equals_transformers_gguf_loading(tiny_dirs, tmp_path, family, tensor_type):
    gguf_path = tmp_path / f"tiny.{tensor_type}.gguf"
    write_gguf(tiny_dirs[family], gguf_path, tensor_type)
    out = convert_gguf(gguf_path, tmp_path / "hf")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_path.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    ours, theirs = converted.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    for key in CONFIG_KEYS:
        assert getattr(converted.config, key, None) == getattr(reference.config, key, None), key
    if tensor_type == "F32":  # lossless: the original weights come back (llama q/k permutation undone)
        original = AutoModelForCausalLM.from_pretrained(tiny_dirs[family]).state_dict()
        for name in ours:
            assert torch.equal(ours[name], original[name]), name
    record = json.loads((out / IMPORT_RECORD).read_text())
    assert record["gguf_file"] == gguf_path.name and record["dtype"] == "float32"

    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_path.name)
    assert Tokenizer.from_file(str(out / "tokenizer.json")).to_str() == gguf_tokenizer.backend_tokenizer.to_str()
    # (transformers reloads any qwen2 directory as Qwen2Tokenizer, with its own NFC normalizer and split regex)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == gguf_tokenizer.chat_template is not None
    messages = [{"role": "user", "content": TEXTS[1]}]
    assert (tokenizer.apply_chat_template(messages, add_generation_prompt=True) ==
            gguf_tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    for text in TEXTS:
        assert tokenizer(text).input_ids == gguf_tokenizer(text).input_ids

    model = from_pretrained(out)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = converted(input_ids=torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(ids).logits), expected, atol=1e-4, rtol=1e-4)


def test_bfloat16_output(llama_gguf, tmp_path):
    out = convert_gguf(llama_gguf, tmp_path / "hf", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_conversion_needs_no_torch(llama_gguf, tmp_path):
    """The converter runs with torch unimportable and writes the same directory."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from lasa_jax.models.gguf import convert_gguf\n"
            f"convert_gguf({str(llama_gguf)!r}, {str(tmp_path / 'no_torch')!r})\n"
            "assert sys.modules['torch'] is None\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    convert_gguf(llama_gguf, tmp_path / "with_torch")
    a, b = load_file(tmp_path / "no_torch" / "model.safetensors"), load_file(tmp_path / "with_torch" /
                                                                           "model.safetensors")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    for name in ("config.json", "tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "no_torch" / name).read_text() == (tmp_path / "with_torch" / name).read_text()


@pytest.mark.parametrize("keep", [0, 10, 200, 5000, "half", -1])
def test_truncated_or_foreign_file_is_one_error_naming_it(llama_gguf, tmp_path, keep):
    data = llama_gguf.read_bytes()
    cut = {"half": len(data) // 2}.get(keep, keep)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:cut] if cut else os.urandom(4096))  # 0: not a GGUF at all
    with pytest.raises(InputError, match="bad.gguf") as info:
        convert_gguf(bad, tmp_path / "out")
    assert "truncated" in str(info.value) or "not a readable GGUF" in str(info.value)
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["bad.gguf"]


def test_unsupported_architecture(tiny_dirs, tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf(tiny_dirs["llama"], path, "F16", architecture="gpt2")
    with pytest.raises(InputError, match=r"gpt2\.gguf: general\.architecture: expected one of .*'llama'.*got 'gpt2'"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tensor_type_gguf_cannot_dequantise(tiny_dirs, tmp_path):
    path = tmp_path / "q8_1.gguf"
    write_gguf(tiny_dirs["llama"], path, "Q8_0", raw_types={"blk.1.ffn_up.weight": "Q8_1"})
    with pytest.raises(InputError, match=r"q8_1\.gguf: tensor blk\.1\.ffn_up\.weight has type Q8_1"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tensor_without_hf_counterpart(tiny_dirs, tmp_path):
    path = tmp_path / "rope_freqs.gguf"
    write_gguf(tiny_dirs["llama"], path, "F16", extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(InputError, match=r"rope_freqs\.gguf: tensor rope_freqs\.weight .*no counterpart"):
        convert_gguf(path, tmp_path / "out")


def test_existing_output_and_bad_dtype(llama_gguf, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        convert_gguf(llama_gguf, tmp_path / "out")
    with pytest.raises(InputError, match="dtype: expected one of"):
        convert_gguf(llama_gguf, tmp_path / "other", dtype="float16")
    convert_gguf(llama_gguf, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def run_script(*args):
    return subprocess.run([sys.executable, "-m", "lasa_jax.scripts.import_gguf", *args], check=False,
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


def test_import_gguf_script(llama_gguf, tmp_path):
    done = run_script(f"--gguf={llama_gguf}", f"--output_dir={tmp_path / 'hf'}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "hf")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.num_hidden_layers == 3
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(llama_gguf.read_bytes()[:3000])
    failed = run_script(f"--gguf={truncated}", f"--output_dir={tmp_path / 'cut'}")
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cut.gguf" in errors[0]
    assert not (tmp_path / "cut").exists()
