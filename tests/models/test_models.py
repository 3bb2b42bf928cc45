"""Decoder parity with Hugging Face PyTorch, sharding, HF import/export and their errors."""
import copy
import json
import logging
import os
import shutil
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lasa_jax.infra.errors import InputError
from lasa_jax.models.blocks import rms_norm
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import forward_jit, init_decoder
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.kv_cache import init_cache
from lasa_jax.sharding import LOGICAL_AXIS_RULES, check_replicated, logical_to_spec, make_mesh
from lasa_jax.testing import build_tiny_hf_model, hf_config

FAMILIES = ("llama", "qwen2", "qwen3")
B, T = 3, 13


def padded_batch(vocab, seed=0):
    """Row 0 full, row 1 left-padded by 4, row 2 right-padded by 5."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, :4] = 0
    mask[2, T - 5:] = 0
    return ids, mask


def hf_reference(directory, ids, mask, dtype=torch.float32):
    """HF logits, hidden states and the raw (pre-norm) output of the last block, with mask-derived positions."""
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    captured = {}
    hook = model.model.layers[-1].register_forward_hook(
        lambda mod, inp, out: captured.setdefault("last", out[0] if isinstance(out, tuple) else out))
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions), output_hidden_states=True)
    hook.remove()
    return (out.logits.float().numpy(), [h.float().numpy() for h in out.hidden_states],
            captured["last"].float().numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_parity_with_hf_left_and_right_padding(tiny_hf_dirs, family):
    directory = tiny_hf_dirs[family]
    model = from_pretrained(directory, dtype="float32")
    ids, mask = padded_batch(model.config.vocab_size)
    ref_logits, ref_hidden, ref_last = hf_reference(directory, ids, mask)
    out = model(ids, attention_mask=mask, output_hidden_states=True)
    real = mask.astype(bool)
    L = model.config.num_layers
    assert len(out.hidden_states) == len(ref_hidden) == L + 1
    assert out.logits.shape == (B, T, model.config.vocab_size)
    np.testing.assert_allclose(np.asarray(out.logits)[real], ref_logits[real], atol=1e-4, rtol=1e-4)
    for k in range(L + 1):
        np.testing.assert_allclose(np.asarray(out.hidden_states[k])[real], ref_hidden[k][real], atol=1e-4, rtol=1e-4,
                                   err_msg=f"residual index {k}")
    np.testing.assert_allclose(np.asarray(out.last_block_output)[real], ref_last[real], atol=1e-4, rtol=1e-4)
    # index L is the final-norm output of the last block (HF convention)
    normed = rms_norm(out.last_block_output, model.params()["final_norm"], model.config.rms_norm_eps)
    np.testing.assert_allclose(np.asarray(normed), np.asarray(out.hidden_states[L]), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_within_documented_tolerance(tiny_hf_dirs, family):
    """bf16 (params and compute): logit error vs the fp32 HF reference at most 2x HF's own bf16 error, and below
    4% of the largest logit."""
    directory = tiny_hf_dirs[family]
    ids, mask = padded_batch(400, seed=1)
    ref32, _, _ = hf_reference(directory, ids, mask, torch.float32)
    ref16, _, _ = hf_reference(directory, ids, mask, torch.bfloat16)
    out = from_pretrained(directory, dtype="bfloat16")(ids, attention_mask=mask)
    assert out.logits.dtype == jnp.float32
    real = mask.astype(bool)
    ours_err = np.abs(np.asarray(out.logits) - ref32)[real].max()
    hf_err = np.abs(ref16 - ref32)[real].max()
    scale = np.abs(ref32).max()
    assert ours_err <= max(2 * hf_err, 1e-3) and ours_err <= 0.04 * scale, (ours_err, hf_err, scale)


def test_scan_unrolled_and_remat_policies_agree(tiny_hf_dirs):
    directory = tiny_hf_dirs["llama"]
    ids, mask = padded_batch(517)
    base = from_pretrained(directory)
    params = base.params()

    def loss(p, config):
        out = forward_jit(p, config, jnp.asarray(ids), jnp.asarray(mask))
        return jnp.sum(jax.nn.log_softmax(out.logits)[..., 0] * mask)

    ref_value, ref_grad = jax.value_and_grad(loss)(params, base.config)
    for scan in (True, False):
        for policy in ("none", "full", "minimal"):
            config = base.config.replace(scan_layers=scan, remat_policy=policy)
            value, grad = jax.value_and_grad(loss)(params, config)
            np.testing.assert_allclose(value, ref_value, rtol=1e-6)
            for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_mesh_equals_single_device(tiny_hf_dirs, family):
    directory = tiny_hf_dirs[family]
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    single = from_pretrained(directory)
    sharded = from_pretrained(directory, mesh=mesh)
    q = sharded.params()["layers"]["q_kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape[1] == q.shape[1] // 2
    ids, mask = np.tile(padded_batch(single.config.vocab_size)[0], (2, 1))[:4], np.ones((4, T), np.int64)
    mask[1, :3] = 0
    a = single(ids, attention_mask=mask, output_hidden_states=True)
    b = sharded(ids, attention_mask=mask, output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(b.logits), np.asarray(a.logits), atol=2e-5)
    np.testing.assert_allclose(np.asarray(b.hidden_states), np.asarray(a.hidden_states), atol=2e-5)


def test_truncated_trunk_runs_only_first_blocks(tiny_hf_dirs):
    model = from_pretrained(tiny_hf_dirs["qwen3"])
    ids, mask = padded_batch(409)
    full = model(ids, attention_mask=mask, output_hidden_states=True)
    for n in (0, 1, 2):
        part = model(ids, attention_mask=mask, output_hidden_states=True, num_blocks=n)
        assert part.logits is None and part.hidden_states.shape[0] == n + 1
        np.testing.assert_allclose(np.asarray(part.hidden_states), np.asarray(full.hidden_states[: n + 1]),
                                   atol=1e-6)
        np.testing.assert_allclose(np.asarray(part.last_block_output), np.asarray(full.hidden_states[n]), atol=1e-6)


def test_kv_cache_prefill_and_decode_match_full_forward(tiny_hf_dirs):
    model = from_pretrained(tiny_hf_dirs["llama"])
    ids, mask = padded_batch(517)
    mask = np.ones_like(mask)
    mask[1, :4] = 0  # left padding only: generation layout
    params, config = model.params(), model.config
    full = forward_jit(params, config, jnp.asarray(ids), jnp.asarray(mask)).logits
    prefill_len = T - 3
    cache = init_cache(config, B, T + 2)
    kv_mask = np.zeros((B, T + 2), np.int32)
    kv_mask[:, :T] = mask
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    out = forward_jit(params, config, jnp.asarray(ids[:, :prefill_len]), jnp.asarray(mask[:, :prefill_len]),
                      jnp.asarray(positions[:, :prefill_len]), cache=cache, cache_index=0, kv_mask=jnp.asarray(kv_mask))
    real = mask[:, :prefill_len].astype(bool)  # padding rows attend to nothing: their outputs are unspecified
    np.testing.assert_allclose(np.asarray(out.logits)[real], np.asarray(full[:, :prefill_len])[real], atol=1e-5)
    cache = out.cache
    for t in range(prefill_len, T):
        step = forward_jit(params, config, jnp.asarray(ids[:, t:t + 1]), jnp.ones((B, 1), jnp.int32),
                           jnp.asarray(positions[:, t:t + 1]), cache=cache, cache_index=t, kv_mask=jnp.asarray(kv_mask))
        cache = step.cache
        np.testing.assert_allclose(np.asarray(step.logits[:, 0]), np.asarray(full[:, t]), atol=1e-5)


# ----------------------------------------------------------------------------------------------- config
def test_config_reads_both_rope_spellings(tmp_path):
    new = hf_config("llama").to_dict()
    old = copy.deepcopy(new)
    rope = old.pop("rope_parameters")
    old["rope_theta"] = rope.pop("rope_theta")
    old["rope_scaling"] = rope  # transformers 4 layout: {"rope_type": "llama3", "factor": ...}
    a = ModelConfig.from_hf_dict(new)
    b = ModelConfig.from_hf_dict(old)
    assert a == b and a.rope_type == "llama3" and a.rope_theta == 500000.0 and a.rope_factor == 8.0
    old["rope_scaling"] = {"type": "llama3", **{k: v for k, v in rope.items() if k != "rope_type"}}
    assert ModelConfig.from_hf_dict(old) == a
    qwen = hf_config("qwen2").to_dict()
    qwen.pop("rope_parameters")
    qwen.update(rope_theta=1e6, rope_scaling=None)
    c = ModelConfig.from_hf_dict(qwen)
    assert c.rope_type == "default" and c.rope_theta == 1e6 and c.qkv_bias and not c.o_bias and c.tie_word_embeddings


def test_config_flags_per_family():
    q3 = ModelConfig.from_hf_dict(hf_config("qwen3").to_dict())
    assert q3.qk_norm and q3.head_dim == 24 and q3.num_groups == 2 and not q3.qkv_bias
    ll = ModelConfig.from_hf_dict(hf_config("llama", attention_bias=True).to_dict())
    assert ll.qkv_bias and ll.o_bias and not ll.qk_norm


@pytest.mark.parametrize("change, message", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope type 'yarn'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}}, "low_freq_factor"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias=true is not supported"),
    ({"use_sliding_window": True}, "use_sliding_window=true is not supported"),
    ({"rope_parameters": [10000.0]}, "rope_parameters must be an object"),
    ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads"),
])
def test_config_errors(change, message):
    hf = hf_config("llama").to_dict()
    hf.update(change)
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf_dict(hf, source="x/config.json")


# ----------------------------------------------------------------------------------------------- import / export
@pytest.mark.parametrize("family", FAMILIES)
def test_export_reloads_in_transformers_and_round_trips_bit_exact(tiny_hf_dirs, tmp_path, family):
    directory = tiny_hf_dirs[family]
    model = from_pretrained(directory, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    out_dir = tmp_path / "export"
    save_pretrained(model, out_dir, max_shard_size=40_000)
    files = sorted(os.listdir(out_dir))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and all(f"-of-{len(shards):05d}" in s for s in shards)
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")], "temporary directory left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert {oct(stat.S_IMODE((out_dir / f).stat().st_mode)) for f in files} == {oct(0o666 & ~umask)}
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    original = AutoModelForCausalLM.from_pretrained(directory).eval()
    exported = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    a, b = original.state_dict(), exported.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ids, mask = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        la = original(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
        lb = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert torch.equal(la, lb)
    assert from_pretrained(out_dir).fingerprint == model.fingerprint
    with pytest.raises(FileExistsError, match="already exists"):
        save_pretrained(model, out_dir)
    save_pretrained(model, out_dir, overwrite=True, dtype="bfloat16")
    assert json.loads((out_dir / "config.json").read_text())["dtype"] == "bfloat16"


def test_bf16_checkpoint_round_trip_and_hf_sharded_input(tmp_path):
    src = tmp_path / "src"
    build_tiny_hf_model(src, "qwen2", seed=3, dtype="bfloat16", max_shard_size="30KB")
    assert (src / "model.safetensors.index.json").exists()
    model = from_pretrained(src, dtype="bfloat16")
    assert model.params()["embed"].dtype == jnp.bfloat16
    save_pretrained(model, tmp_path / "out")
    a = AutoModelForCausalLM.from_pretrained(src).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert all(a[k].dtype == torch.bfloat16 and torch.equal(a[k], b[k]) for k in a)


def test_fingerprint_distinguishes_weights(tmp_path):
    build_tiny_hf_model(tmp_path / "a", "llama", seed=1, tokenizer=False)
    build_tiny_hf_model(tmp_path / "b", "llama", seed=2, tokenizer=False)
    fa = from_pretrained(tmp_path / "a").fingerprint
    assert fa != from_pretrained(tmp_path / "b").fingerprint and len(fa) == 24


def _copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def _rewrite_tensors(directory, edit):
    from safetensors.numpy import load_file, save_file

    file = os.path.join(directory, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_import_errors_list_every_problem(tiny_hf_dirs, tmp_path):
    bad = _copy_checkpoint(tiny_hf_dirs["llama"], tmp_path / "bad")

    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        del t["lm_head.weight"]
        t["model.layers.0.self_attn.q_proj.weight"] = t["model.layers.0.self_attn.q_proj.weight"][:-1]
        t["model.extra.weight"] = np.zeros(3, np.float32)

    _rewrite_tensors(bad, edit)
    with pytest.raises(ValueError) as e:
        from_pretrained(bad)
    text = str(e.value)
    for expected in ("missing (2)", "model.layers.1.mlp.up_proj.weight", "lm_head.weight", "unexpected (1)",
                     "model.extra.weight", "wrong shape (1)", "model.layers.0.self_attn.q_proj.weight"):
        assert expected in text, text


def test_import_refuses_pickle_and_missing_files(tiny_hf_dirs, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_hf_dirs["llama"] / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="never unpickles"):
        from_pretrained(pickled)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        from_pretrained(empty)
    shutil.copy(tiny_hf_dirs["llama"] / "config.json", empty)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        from_pretrained(tmp_path / "does-not-exist")


def test_import_errors_for_broken_shard_files(tiny_hf_dirs, tmp_path):
    indexed = _copy_checkpoint(tiny_hf_dirs["llama"], tmp_path / "indexed")
    (indexed / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(InputError, match="shard model-00001-of-00002.safetensors .* does not exist"):
        from_pretrained(indexed)
    (indexed / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(InputError, match="index.json: not valid JSON"):
        from_pretrained(indexed)
    truncated = _copy_checkpoint(tiny_hf_dirs["llama"], tmp_path / "truncated")
    (truncated / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(InputError, match="truncated safetensors file: expected at least 8 bytes"):
        from_pretrained(truncated)
    garbled = _copy_checkpoint(tiny_hf_dirs["llama"], tmp_path / "garbled")
    (garbled / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{broken header......")
    with pytest.raises(InputError, match="corrupt safetensors header"):
        from_pretrained(garbled)


def test_fingerprint_changes_when_every_weight_changes_slightly(tiny_hf_dirs, tmp_path):
    """A fine-tune (small change everywhere) gets a new fingerprint; re-saving the same weights does not."""
    changed = _copy_checkpoint(tiny_hf_dirs["llama"], tmp_path / "changed")
    original = from_pretrained(tiny_hf_dirs["llama"]).fingerprint
    _rewrite_tensors(changed, lambda t: None)
    assert from_pretrained(changed).fingerprint == original
    _rewrite_tensors(changed, lambda t: t.update({k: v + np.float32(1e-6) for k, v in t.items()}))
    assert from_pretrained(changed).fingerprint != original


def test_tied_checkpoint_with_stored_head_is_accepted(tiny_hf_dirs, tmp_path):
    tied = _copy_checkpoint(tiny_hf_dirs["qwen2"], tmp_path / "tied")
    _rewrite_tensors(tied, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
    model = from_pretrained(tied)
    assert "lm_head" not in model.params()


# ----------------------------------------------------------------------------------------------- sharding
def test_mesh_and_rules():
    mesh = make_mesh(data=2, fsdp=-1, tensor=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="needs 12 devices"):
        make_mesh(data=3, fsdp=2, tensor=2)
    # a mesh axis that does not divide the dimension is dropped for it
    assert logical_to_spec(("vocab", "embed"), (517, 64), mesh) == jax.sharding.PartitionSpec(None, "fsdp")
    assert logical_to_spec(("batch", "length"), (8, 5), mesh) == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert logical_to_spec(("batch",), (2,), mesh) == jax.sharding.PartitionSpec("data")
    with pytest.raises(KeyError, match="no entry"):
        logical_to_spec(("nonexistent",))
    # every axis named by a Decoder parameter has a rule
    model = init_decoder(ModelConfig.from_hf_dict(hf_config("qwen3").to_dict()), mesh=mesh)
    from flax import nnx
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert all(a in LOGICAL_AXIS_RULES for a in var.get_metadata()["axes"])


def test_replicated_parameter_warning(tiny_hf_dirs, caplog):
    with caplog.at_level(logging.WARNING, logger="lasa_jax.sharding"):
        flagged = check_replicated([("embed", (517, 64), jax.sharding.PartitionSpec(), 4),
                                    ("q", (64, 64), jax.sharding.PartitionSpec("fsdp"), 4)], threshold_bytes=1000)
    assert flagged == ["embed"] and "embed" in caplog.text
    mesh = make_mesh(data=1, fsdp=1, tensor=8)  # tiny dims are not divisible by 8: several replicated params
    with caplog.at_level(logging.WARNING, logger="lasa_jax.sharding"):
        from_pretrained(tiny_hf_dirs["qwen3"], mesh=mesh, replicated_warning_bytes=1)
    assert "fully replicated" in caplog.text


def test_random_init_on_mesh_is_sharded():
    config = ModelConfig.from_hf_dict(hf_config("llama").to_dict())
    model = init_decoder(config, seed=0, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    gate = model.params()["layers"]["gate_kernel"]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    out = model(np.zeros((4, 5), np.int32))
    assert np.isfinite(np.asarray(out.logits)).all()


def test_import_streams_layers_without_a_host_copy_of_stacked_parameters(tmp_path):
    """Host memory while loading stays far below one stacked parameter (numpy allocations traced)."""
    import tracemalloc

    build_tiny_hf_model(tmp_path, "llama", tokenizer=False, hidden_size=256, intermediate_size=4096,
                        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2)
    stacked_bytes = 8 * 256 * 4096 * 4  # one of gate/up/down kernels: 33.5 MB; one layer of it: 4.2 MB
    from_pretrained(tmp_path)  # compile the layer writers first: only the steady state is measured
    tracemalloc.start()
    model = from_pretrained(tmp_path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert model.params()["layers"]["gate_kernel"].shape == (8, 256, 4096)
    assert peak < stacked_bytes / 3, f"host peak {peak / 2**20:.1f} MiB"


def test_embedding_lookup_does_not_gather_the_sharded_table():
    """The (V, D) table stays split over tensor x fsdp: the compiled lookup moves ids and (B, T, D) rows only."""
    from lasa_jax.models.blocks import embed_tokens
    from lasa_jax.sharding import put_batch

    config = ModelConfig.from_hf_dict({**hf_config("llama").to_dict(), "vocab_size": 1024, "hidden_size": 64},
                                      param_dtype="float32", compute_dtype="float32")
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    params = init_decoder(config, mesh=mesh).params()
    assert params["embed"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    ids_host = np.random.default_rng(0).integers(0, 1024, (8, 16)).astype(np.int32)
    ids = put_batch(mesh, ids_host)[0]
    lookup = jax.jit(lambda p, i: embed_tokens(p, config, i, mesh))
    hlo = lookup.lower(params, ids).compile().as_text()
    float_gathers = [line for line in hlo.splitlines() if " all-gather(" in line and "= f32[" in line]
    assert not float_gathers, float_gathers
    np.testing.assert_array_equal(np.asarray(lookup(params, ids)), np.asarray(params["embed"])[ids_host])
