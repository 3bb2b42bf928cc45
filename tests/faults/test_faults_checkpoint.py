"""Broken checkpoints are named before any device memory is used: truncated / corrupt safetensors, bad indexes,
dtype and shape disagreeing with config.json, tokenizers that do not fit the model or lack a chat template."""
import gc
import json
import os
import shutil
import struct

import jax
import pytest

from lasa_jax.infra.errors import InputError
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.integrity import read_header
from lasa_jax.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def sharded_dir(tiny_hf_dirs, tmp_path_factory):
    """The tiny llama re-exported in several shards with an index (model-0000k-of-0000N.safetensors)."""
    out = tmp_path_factory.mktemp("sharded") / "model"
    save_pretrained(from_pretrained(tiny_hf_dirs["llama"]), out, max_shard_size="40KB")
    return out


@pytest.fixture
def single(tiny_hf_dirs, tmp_path):
    out = tmp_path / "single"
    shutil.copytree(tiny_hf_dirs["llama"], out)
    return out


@pytest.fixture
def sharded(sharded_dir, tmp_path):
    out = tmp_path / "sharded"
    shutil.copytree(sharded_dir, out)
    return out


def _load_fails(directory, match):
    """from_pretrained raises one InputError matching `match`, before any jax array is allocated."""
    gc.collect()  # arrays earlier tests dropped must not be freed during the call (the count would go down)
    before = {id(a) for a in jax.live_arrays()}
    with pytest.raises(InputError, match=match):
        from_pretrained(directory)
    assert not {id(a) for a in jax.live_arrays()} - before


def _header(file):
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(file, header, data):
    raw = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_truncated_safetensors_names_file_and_first_missing_tensor(single):
    file = single / "model.safetensors"
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(size // 2)
    _load_fails(single, r"model\.safetensors: tensor .*: truncated file: .* interrupted copy")


def test_safetensors_cut_inside_its_header(single):
    file = single / "model.safetensors"
    with open(file, "r+b") as f:
        f.truncate(40)
    _load_fails(single, r"model\.safetensors: truncated or corrupt safetensors file: the header claims \d+ bytes, "
                        r"but the file has 40 bytes")


def test_safetensors_shorter_than_its_length_field(single):
    (single / "model.safetensors").write_bytes(b"\x01\x02\x03")
    _load_fails(single, r"model\.safetensors: truncated safetensors file: expected at least 8 bytes .* got 3")


def test_safetensors_with_garbage_header(single):
    (single / "model.safetensors").write_bytes(struct.pack("<Q", 16) + b"\xff" * 16 + b"\0" * 64)
    _load_fails(single, r"model\.safetensors: corrupt safetensors header: expected a JSON object")


def test_safetensors_offsets_disagreeing_with_shape(single):
    file = single / "model.safetensors"
    header, data = _header(file)
    header["model.norm.weight"]["data_offsets"][1] -= 4
    _write(file, header, data)
    _load_fails(single, r"tensor model\.norm\.weight: F32 \(64,\) needs 256 bytes, but its data_offsets .* span 252")


def test_safetensors_unsupported_dtype(single):
    file = single / "model.safetensors"
    header, data = _header(file)
    header["model.norm.weight"]["dtype"] = "F8_E9"
    _write(file, header, data)
    _load_fails(single, r"tensor model\.norm\.weight: unsupported dtype 'F8_E9'")


def test_integer_weight_tensor(single):
    file = single / "model.safetensors"
    header, data = _header(file)
    header["model.norm.weight"]["dtype"] = "I32"
    _write(file, header, data)
    _load_fails(single, r"tensor model\.norm\.weight is I32; expected a floating dtype")


def test_weights_in_a_dtype_other_than_config_declares(single):
    config = json.loads((single / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (single / "config.json").write_text(json.dumps(config))
    _load_fails(single, r"tensor .* is stored as float32, but .*config\.json declares dtype 'bfloat16'")


def test_tensor_shape_disagreeing_with_config(single):
    config = json.loads((single / "config.json").read_text())
    config["intermediate_size"] = 96
    (single / "config.json").write_text(json.dumps(config))
    _load_fails(single, r"(?s)checkpoint does not match its config\.json .*wrong shape.*mlp\.down_proj\.weight: file "
                        r"\(64, 160\), expected \(64, 96\)")


def test_index_naming_a_missing_shard(sharded):
    shards = sorted(p for p in os.listdir(sharded) if p.startswith("model-"))
    assert len(shards) >= 3
    os.remove(sharded / shards[1])
    _load_fails(sharded, rf"model\.safetensors\.index\.json: shard {shards[1]} \(holding e\.g\. .*\) does not exist")


def test_index_naming_a_tensor_twice(sharded):
    index = sharded / "model.safetensors.index.json"
    text = index.read_text()
    first = json.loads(text)["weight_map"]
    name, shard = next(iter(first.items()))
    index.write_text(text.replace('"weight_map": {', f'"weight_map": {{\n    "{name}": "{shard}",', 1))
    _load_fails(sharded, rf"index\.json: weight_map names tensor\(s\) \['{name}'\] more than once")


def test_index_mapping_a_tensor_to_the_wrong_shard(sharded):
    index = sharded / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    shards = sorted(set(data["weight_map"].values()))
    values = list(data["weight_map"].values())
    source = next(s for s in shards if values.count(s) >= 2)  # a shard still listed after the edit
    name = next(k for k, v in data["weight_map"].items() if v == source)
    target = next(s for s in shards if s != source)
    data["weight_map"][name] = target
    index.write_text(json.dumps(data))
    _load_fails(sharded, rf"index\.json: maps tensor {name} to {target}, but it is in {source}")


def test_index_that_is_not_json(sharded):
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {')
    _load_fails(sharded, r"model\.safetensors\.index\.json: not valid JSON")


def test_tensor_stored_in_two_shards(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    a_header, _ = _header(sharded / shards[0])
    b_header, b_data = _header(sharded / shards[1])
    name = next(k for k in a_header if k != "__metadata__")
    entry = dict(a_header[name])
    size = entry["data_offsets"][1] - entry["data_offsets"][0]
    entry["data_offsets"] = [len(b_data), len(b_data) + size]
    b_header[name] = entry
    _write(sharded / shards[1], b_header, b_data + b"\0" * size)
    _load_fails(sharded, rf"tensor {name} is stored twice, in {shards[0]} and {shards[1]}")


def test_read_header_accepts_valid_files(sharded):
    """The checks accept what safetensors itself wrote (every shard of an export, every tensor)."""
    from safetensors import safe_open

    for shard in sorted(p for p in os.listdir(sharded) if p.endswith(".safetensors")):
        tensors, _ = read_header(sharded / shard)
        with safe_open(str(sharded / shard), "np") as f:
            assert sorted(f.keys()) == sorted(tensors)
            for name in f.keys():
                assert tuple(f.get_slice(name).get_shape()) == tensors[name]["shape"]


def test_tokenizer_with_ids_beyond_the_embedding(single):
    config = json.loads((single / "config.json").read_text())
    config["vocab_size"] = 300  # the tokenizer has 400 ids
    (single / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"tokenizer id 399 .* does not fit the model's embedding: config\.json "
                                         r"vocab_size is 300 \(expected every id < 300"):
        load_tokenizer(str(single))


def test_tokenizer_without_chat_template_where_one_is_needed(single):
    config = json.loads((single / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (single / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("chat_template.jinja", "chat_template.json"):
        if (single / name).exists():
            os.remove(single / name)
    assert load_tokenizer(str(single)) is not None  # fine where no chat prompt is rendered
    with pytest.raises(InputError, match=r"single: the tokenizer has no chat_template \(expected one in "):
        load_tokenizer(str(single), require_chat_template=True)


def test_pickle_only_checkpoint_and_file_as_model_path(single):
    os.remove(single / "model.safetensors")
    (single / "pytorch_model.bin").write_bytes(b"not unpickled")
    _load_fails(single, r"only pickle checkpoints found \(pytorch_model\.bin\); lasa_jax never unpickles")
    _load_fails(single / "config.json", r"config\.json: expected a Hugging Face model directory, got a file")
