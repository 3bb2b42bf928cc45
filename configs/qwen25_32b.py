"""LASA on Qwen/Qwen2.5-32B-Instruct (paper bottleneck layer by default; see configs/pipeline.py).

    python -m lasa_jax.scripts.pipeline --config=configs/qwen25_32b.py:v5p-64 --config.model_path=LOCAL_DIR \
        --config.data_root=SHARED_DATA --workdir=runs/qwen25_32b

Argument: a preset of lasa_jax/presets.py (v4-8, v5e-8, v5p-8, v4-64, v5p-64, cpu); default v5p-64, where the KTO
step needs ~32 GiB per chip by lasa_jax.memory_plan (v5p-8: ~181 GiB; v4-64: ~32 GiB of 28.8 usable; the pipeline
refuses those presets before the first stage and names a setting that fits).
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "lasa_configs_pipeline", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py"))
_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pipeline)


def get_config(arg: str = "v5p-64"):
    return _pipeline.build("qwen25_32b", arg or "v5p-64")
