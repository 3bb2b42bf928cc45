"""The whole LASA pipeline (locate -> SSI -> KTO -> generate baseline/prefix-only/LASA -> evaluate) for one model.

    python -m lasa_jax.scripts.pipeline --config=configs/pipeline.py:llama31_8b,v5p-8 \
        --config.model_path=/models/Llama-3.1-8B-Instruct --config.data_root=/data/shared --workdir=runs/llama

The argument is "<paper model>,<preset>" (lasa_jax/presets.py: models llama31_8b, qwen25_7b, qwen25_14b,
qwen25_32b, qwen3_8b, qwen3_14b, qwen3_32b; presets v4-8, v5e-8, v5p-8, v4-64, v5p-64, cpu). Every field can be
overridden from the command line, e.g. --config.residual_index=-1 (use the located layer instead of the paper's),
--config.kto.train.num_steps=200, --config.stages=locate,ssi. The stage sub-configs are configs/<stage>.py.
Before the first stage the pipeline checks the KTO and generation memory on the preset (lasa_jax.memory_plan) and
stops with the numbers and a setting or preset that fits when they do not (e.g. a 32B model on cpu or v5p-8).
"""
import importlib.util
import os

import ml_collections

from lasa_jax.presets import PAPER_MODELS, TPU_PRESETS, CPU_PRESET
from lasa_jax.runtime import base_config

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
    c.model_path = PAPER_MODELS[model].hub_id if model else ""
    c.mesh = ml_collections.ConfigDict(dict(p.mesh))
    c.data_root = "../shared/data"   # folder with flores200_sib200/, polyrefuse/, multijail/, xstest/, ...
    # residual index of the SSI: the paper's bottleneck by default; -1 = the layer this run's Locate stage selects
    c.residual_index = PAPER_MODELS[model].bottleneck_residual_index if model else -1
    thinking = PAPER_MODELS[model].qwen3_thinking if model else None
    # chat-template variables used identically by KTO, generation and (with chat_template) SSI/Locate
    c.template_kwargs = "" if thinking is None else ('{"enable_thinking": %s}' % str(thinking).lower())
    c.stages = "locate,ssi,kto,generate_baseline,generate_prefix_only,generate_lasa,evaluate"
    c.rerun = ""                     # comma-separated stages to run again (their directories are cleared)
    # before the first stage: check | warn | off. check stops (InputError) when the KTO or generation stage does not
    # fit the preset's memory by lasa_jax.memory_plan; warn only logs it
    c.memory_plan = "check"

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
    return c


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    model, _, preset = (arg or "").partition(",")
    return build(model.strip(), preset.strip() or "cpu")
