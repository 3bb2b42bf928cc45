"""lasa_jax.memory_plan: the KTO plan against XLA's own buffer sizes, and the pipeline refusing a preset early."""
import importlib.util
import os
import time

import jax
import jax.numpy as jnp
import pytest

from lasa_jax.infra.errors import InputError
from lasa_jax.memory_check import check_pipeline, suggest_generation, suggest_kto
from lasa_jax.memory_plan import generation_plan, kto_plan, mesh_sizes
from lasa_jax.models.config import ModelConfig
from lasa_jax.presets import PAPER_MODELS
from lasa_jax.testing import TINY_CONFIGS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# a small Llama whose parameters (not only activations) are a real share of the step's memory
SMALL_LLAMA = dict(TINY_CONFIGS["llama"], vocab_size=4096, hidden_size=256, intermediate_size=768,
                   num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4)
# the plan's per-device total must lie within this factor of XLA's argument + output + temp - aliased bytes
# (measured on CPU, 8 devices: KTO 0.83-1.57 over remat none/full, online/precomputed, float32/bfloat16 compute;
# generation 0.65-0.89 at batch 16-64)
XLA_FACTOR = 2.0


def _load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(f"memplan_configs_{name}", os.path.join(ROOT, "configs",
                                                                                         f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def _xla_memory(config: ModelConfig, batch_size: int, length: int, step_config, online: bool):
    """XLA's per-device `memory_analysis()` of the compiled, 8-way FSDP `kto_step` train step (nothing is run)."""
    from lasa_jax.kto import step as kto_step
    from lasa_jax.models.decoder import abstract_decoder, param_shardings
    from lasa_jax.sharding import batch_sharding, make_mesh

    mesh = make_mesh(data=1, fsdp=-1, tensor=1)
    model = abstract_decoder(config, mesh)
    params, shardings = model.params(), param_shardings(model, mesh)
    optimizer_config = kto_step.OptimizerConfig(total_steps=10)
    state_shardings = kto_step.state_shardings(kto_step.make_optimizer(optimizer_config), params, shardings, mesh)
    state = kto_step.abstract_state(kto_step.make_optimizer(optimizer_config), params, state_shardings)
    step = kto_step.make_train_step(policy_config=config, ref_config=config if online else None,
                                    optimizer_config=optimizer_config, step_config=step_config, mesh=mesh,
                                    shardings=state_shardings)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, shape))

    batch = {k: spec((batch_size, length), jnp.int32) for k in kto_step.POLICY_ROW_KEYS + kto_step.KL_ROW_KEYS}
    batch.update(is_desirable=spec((batch_size,), jnp.bool_), valid=spec((batch_size,), jnp.bool_))
    reference = None
    if online:
        reference = jax.tree.map(lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings)
    else:
        batch.update(ref_logps=spec((batch_size,), jnp.float32), kl_ref_logps=spec((batch_size,), jnp.float32))
    return step.lower(state, batch, reference).compile().memory_analysis()


@pytest.mark.slow  # one XLA compile of the whole step each: 30-75 s on the shared 2-core machine
@pytest.mark.parametrize("remat, online, grad_accum, compute", [("full", True, 1, "float32"),
                                                                ("none", False, 2, "bfloat16")])
def test_kto_plan_matches_xla_memory_analysis(remat, online, grad_accum, compute):
    from lasa_jax.kto.step import KTOStepConfig

    assert len(jax.devices()) == 8
    config = ModelConfig.from_hf_dict(SMALL_LLAMA, param_dtype="float32", compute_dtype=compute, remat_policy=remat)
    batch_size, length, chunk = 16, 64, 32
    m = _xla_memory(config, batch_size, length, KTOStepConfig(grad_accum_steps=grad_accum, logits_chunk_size=chunk),
                    online)
    xla = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    plan = kto_plan(config, "cpu", mesh=dict(data=1, fsdp=8, tensor=1), batch_size=batch_size,
                    grad_accum_steps=grad_accum, max_length=length, param_dtype="float32", compute_dtype=compute,
                    reference_mode="online" if online else "precomputed", reference_dtype="float32",
                    remat_policy=remat, logits_chunk_size=chunk)
    assert 1 / XLA_FACTOR <= plan.total / xla <= XLA_FACTOR, (plan.describe(), xla)
    # the state terms are exact: XLA's arguments are the parameters, AdamW moments and reference as sharded (plus
    # the batch: a few KiB); norm scales are replicated, every matrix is 8-way FSDP
    state = sum(plan.parts[k] for k in ("parameters", "optimizer state (AdamW mu, nu)", "reference"))
    assert state == pytest.approx(m.argument_size_in_bytes, rel=0.01)
    norms = (2 * config.num_layers + 1) * config.hidden_size
    assert plan.parts["parameters"] == (config.num_params() - norms) * 4 / 8 + norms * 4


@pytest.mark.slow  # four compiles of a one-block step: ~10 s each here
@pytest.mark.parametrize("tied", [False, True])
def test_embedding_and_lm_head_term_follows_xla(tied):
    """What the vocabulary costs, isolated: XLA's per-device bytes grow with V as the plan's do (lookup on the
    sharded table, whole-table gradient, gathered LM head; tied: ~3 tables, untied: ~2; measured 0.94-1.03)."""
    from lasa_jax.kto.step import KTOStepConfig

    totals = []
    for vocab in (16384, 131072):
        config = ModelConfig.from_hf_dict(dict(SMALL_LLAMA, vocab_size=vocab, num_hidden_layers=1,
                                               tie_word_embeddings=tied), param_dtype="float32",
                                          compute_dtype="float32", remat_policy="full")
        m = _xla_memory(config, 8, 64, KTOStepConfig(grad_accum_steps=1, logits_chunk_size=8), False)
        plan = kto_plan(config, "cpu", mesh=dict(data=1, fsdp=8, tensor=1), batch_size=8, grad_accum_steps=1,
                        max_length=64, param_dtype="float32", compute_dtype="float32", reference_mode="precomputed",
                        remat_policy="full", logits_chunk_size=8)
        totals.append((plan.total, m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                       - m.alias_size_in_bytes))
    (plan_small, xla_small), (plan_large, xla_large) = totals
    assert (plan_large - plan_small) / (xla_large - xla_small) == pytest.approx(1.0, abs=0.15)


def test_parameters_counted_as_sharded_by_the_rules_table():
    # a hidden size the mesh does not divide leaves every matrix replicated (logical_to_spec drops the axis)
    odd = ModelConfig.from_hf_dict(dict(SMALL_LLAMA, hidden_size=250, num_attention_heads=5, num_key_value_heads=5))
    even = ModelConfig.from_hf_dict(SMALL_LLAMA)
    kwargs = dict(mesh=dict(data=1, fsdp=8, tensor=1), batch_size=8, grad_accum_steps=1, max_length=16)
    assert kto_plan(odd, "cpu", **kwargs).parts["parameters"] == pytest.approx(odd.num_params() * 4)
    norms = (2 * even.num_layers + 1) * even.hidden_size  # ("layers", "norm") / ("norm",): never sharded
    assert kto_plan(even, "cpu", **kwargs).parts["parameters"] == (even.num_params() - norms) * 4 / 8 + norms * 4
    assert mesh_sizes(dict(data=2, fsdp=-1, tensor=1), 32) == dict(data=2, fsdp=16, tensor=1)
    with pytest.raises(InputError, match="config field mesh: .* does not split the preset's 4 devices"):
        mesh_sizes(dict(data=8, fsdp=-1, tensor=1), 4)


@pytest.mark.parametrize("tensor, batch", [(1, 16), (1, 64), (4, 16)])
def test_generation_plan_matches_xla_memory_analysis(tensor, batch):
    """`continuous._prefill_rows` (+ `_insert`) and `_decode_block` on 8 CPU devices with `decode_params`' layout
    (replicated at tensor=1, tensor-parallel at tensor=4), float32 (XLA's CPU backend upcasts bfloat16). The plan's
    decode terms against the largest program; the FSDP weights as loaded live beside them (exact)."""
    from lasa_jax.decoding import continuous
    from lasa_jax.models.decoder import init_decoder
    from lasa_jax.sharding import make_mesh

    config = ModelConfig.from_hf_dict(SMALL_LLAMA, param_dtype="float32", compute_dtype="float32")
    mesh = make_mesh(data=1, fsdp=-1, tensor=tensor)
    model = init_decoder(config, mesh=mesh)
    params = continuous.decode_params(model, replicate_max_bytes=None if tensor == 1 else 0)
    decode_config, prompt, new = config.replace(scan_layers=False), 100, 64
    slots = continuous.PROMPT_ROUND + new
    cache, state = continuous._init_pool(decode_config, mesh, batch, slots, jnp.int32(0))
    kwargs = dict(config=decode_config, mesh=mesh, max_new_tokens=new, greedy=True)
    sampling, eos, key = (jnp.float32(1.0), jnp.float32(1.0), jnp.int32(0)), jnp.asarray([2], jnp.int32), \
        jax.random.PRNGKey(0)
    # prefill of the largest group (all B slots free, at the start): the group's own rows, then their insertion
    prompts, lengths = jnp.zeros((batch, slots - new), jnp.int32), jnp.full((batch,), 5, jnp.int32)
    keys = jnp.stack([jax.random.fold_in(key, i) for i in range(batch)])
    rows = jax.eval_shape(lambda: continuous._prefill_rows(params, prompts, lengths, keys, eos, sampling, **kwargs))
    programs = [continuous._decode_block.lower(params, cache, state, key, eos, jnp.int32(0), sampling, **kwargs),
                continuous._prefill_rows.lower(params, prompts, lengths, keys, eos, sampling, **kwargs),
                continuous._insert.lower(cache, state, *rows, lengths, jnp.arange(batch, dtype=jnp.int32),
                                         mesh=mesh)]
    xla = max(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
              for m in (p.compile().memory_analysis() for p in programs))

    def per_device(tree):
        return sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(tree))

    plan = generation_plan(config, "cpu", mesh=dict(data=1, fsdp=8 // tensor, tensor=tensor), batch_size=batch,
                           prompt_length=prompt, max_new_tokens=new, dtype="float32",
                           replicate_max_bytes=None if tensor == 1 else 0)
    layout = "replicated" if tensor == 1 else "tensor-parallel"
    assert plan.parts[f"decode weights ({layout})"] == pytest.approx(per_device(params), rel=1e-6)
    assert plan.parts["weights as loaded (FSDP)"] == pytest.approx(per_device(model.params()), rel=1e-6)
    assert plan.parts["KV cache"] == per_device(cache)
    loaded = plan.parts["weights as loaded (FSDP)"]
    assert 1 / XLA_FACTOR <= (plan.total - loaded) / xla <= XLA_FACTOR, (plan.describe(), xla)


def test_generation_plan_kv_cache_and_weights():
    config = PAPER_MODELS["llama31_8b"].model_config()
    plan = generation_plan(config, "v5p-8", batch_size=32, prompt_length=300, max_new_tokens=512)
    # L x (B/4, 384 + 512 slots, K, hd) keys and values in bfloat16 on each of 4 chips (prompt rounded up to 128)
    assert plan.parts["KV cache"] == 2 * 32 * 8 * 896 * 8 * 128 * 2
    assert plan.parts["weights as loaded (FSDP)"] == pytest.approx(config.num_params() * 2 / 4, rel=1e-3)
    # 16 GB of bfloat16 weights > REPLICATE_MAX_BYTES: the tensor-parallel layout, replicated on a tensor=1 mesh
    assert plan.parts["decode weights (replicated)"] == pytest.approx(config.num_params() * 2, rel=1e-6)
    # the prefill gathers the cache of the whole batch (4 batch shards) on every device
    assert plan.parts["working set (prefill: whole-batch cache gathered)"] >= 4 * plan.parts["KV cache"]
    assert plan.fits
    v5e = generation_plan(config, "v5e-8", batch_size=32, prompt_length=300, max_new_tokens=512)
    assert not v5e.fits and suggest_generation(config, v5e).startswith("on v5e-8: mesh.tensor=")
    tensor = generation_plan(config, "v5e-8", mesh=dict(data=1, fsdp=2, tensor=4), batch_size=32,
                             prompt_length=300, max_new_tokens=512)
    assert tensor.fits and tensor.parts["decode weights (tensor-parallel)"] < config.num_params() * 2 / 3


def test_default_presets_of_the_paper_model_configs_fit():
    for name in sorted(PAPER_MODELS):
        # a table model on the preset it is sized for (its default_preset)
        config = _load_config("pipeline", f"{name},{PAPER_MODELS[name].default_preset}")
        model_config = PAPER_MODELS[name].model_config()
        if name.endswith("32b"):
            # the decode weights replicated on a tensor=1 mesh (61 GiB) beside their stacked copy while
            # `decode_params` splits them do not fit: refused in seconds, naming the tensor axis the default uses
            assert config.mesh.tensor == PAPER_MODELS[name].default_mesh_tensor == 2
            config.mesh.tensor = 1
            with pytest.raises(InputError, match=r"generation on preset v5p-64: .*fits: on v5p-64: mesh.tensor=2 "):
                check_pipeline(config, model_config, ["kto", "generate_lasa"])
            config.mesh.tensor = 2
        plans = check_pipeline(config, model_config, ["kto", "generate_lasa"])
        assert [p.stage for p in plans] == ["KTO", "generation"] and all(p.fits for p in plans)
    assert PAPER_MODELS["qwen25_32b"].default_preset == PAPER_MODELS["qwen3_32b"].default_preset == "v5p-64"


def test_suggested_setting_fits_and_v4_8_refuses_kto_with_the_reason():
    config = PAPER_MODELS["qwen25_14b"].model_config()
    # max_length 1024: online 88.5 GiB, precomputed 81.6 (at 512 online fits with 0.4 GiB to spare)
    online = kto_plan(config, "v5p-8", batch_size=16, grad_accum_steps=1, max_length=1024, reference_mode="online")
    assert not online.fits
    assert suggest_kto(config, online).startswith("on v5p-8: kto.reference.mode=precomputed (")
    assert kto_plan(config, "v5p-8", batch_size=16, grad_accum_steps=1, max_length=1024,
                    reference_mode="precomputed").fits
    with pytest.raises(InputError, match=r"config field preset=v4-8: .*KTO on preset v4-8: [\d.]+ GiB per device of "
                                         r"28.8 usable.*preset v5p-8 .*with its defaults"):
        check_pipeline(_load_config("pipeline", "llama31_8b,v4-8"), PAPER_MODELS["llama31_8b"].model_config(), ["kto"])
    # Locate and SSI are not planned; generation on v4-8 needs a tensor axis (replicated decode weights: 15 GiB,
    # plus their stacked copy while split per layer)
    v4 = _load_config("pipeline", "llama31_8b,v4-8")
    assert check_pipeline(v4, PAPER_MODELS["llama31_8b"].model_config(), ["locate", "ssi"]) == []
    with pytest.raises(InputError, match=r"generation on preset v4-8: .*fits: on v4-8: mesh.tensor=2 "):
        check_pipeline(v4, PAPER_MODELS["llama31_8b"].model_config(), ["generate_baseline"])
    v4.mesh.tensor = 2
    assert check_pipeline(v4, PAPER_MODELS["llama31_8b"].model_config(), ["generate_baseline"])[0].fits


def test_pipeline_with_a_32b_config_stops_before_loading_weights(tmp_path):
    from lasa_jax.pipeline import run_pipeline

    config = _load_config("pipeline", "qwen25_32b")  # default preset: cpu
    assert config.preset == "cpu" and not os.path.exists(config.model_path)  # a hub id: loading would fail
    start = time.perf_counter()
    with pytest.raises(InputError) as caught:
        run_pipeline(config, str(tmp_path))
    assert time.perf_counter() - start < 60
    message = str(caught.value)
    assert message.startswith("config field preset=cpu: 32.8B-parameter model does not fit")
    kto_gib = float(message.split("KTO on preset cpu: ")[1].split(" GiB")[0])
    assert kto_gib > 600  # ~22 bytes per parameter on one device
    assert "preset v5p-64 (32 chips of 95 GiB) with its defaults" in message
    assert os.listdir(tmp_path) == []  # no stage started
    config.preset = "v5p-8"
    with pytest.raises(InputError, match="KTO on preset v5p-8: .* GiB per device of 85.5 usable"):
        run_pipeline(config, str(tmp_path))


def test_memory_plan_switch_warn_off_and_bad_value(caplog):
    from lasa_jax.pipeline import _check_memory_plan

    config = _load_config("pipeline", "qwen25_32b")
    config.memory_plan = "warn"
    with caplog.at_level("WARNING", logger="lasa_jax.pipeline"):
        _check_memory_plan(config, ["kto"])
    assert "does not fit" in caplog.text and "config field memory_plan=warn" in caplog.text
    config.memory_plan = "off"
    _check_memory_plan(config, ["kto"])
    config.memory_plan = "yes"
    with pytest.raises(InputError, match="config field memory_plan: expected check, warn or off, got 'yes'"):
        _check_memory_plan(config, ["kto"])


def test_auto_reference_mode_is_precomputed_unless_the_table_is_too_large():
    from lasa_jax.memory_plan import MAX_PRECOMPUTED_KL_ROWS, resolve_reference_mode

    assert resolve_reference_mode("auto", total_steps=1000, batch_size=16) == "precomputed"
    assert resolve_reference_mode("auto", total_steps=MAX_PRECOMPUTED_KL_ROWS, batch_size=2) == "online"
    assert resolve_reference_mode("online", total_steps=10, batch_size=2) == "online"
