"""Judge calibration: score a safety judge against WildGuard labels (lasa_jax/evaluate/calibrate_judge.py; the
metrics and files: lasa_jax/evaluate/calibration.py).

    python -m lasa_jax.scripts.calibrate_judge --config=configs/calibrate_judge.py --workdir=runs/calibration \
        --config.data_root=../shared/data --config.judge.safety=heuristic --config.split=odd

judge.safety: calibrated (the n-gram judge trained on the even rows, the evaluation default) | heuristic |
llama_guard | rubric (the LLM judges need judge.model_path). split: odd (held-out half, report this) | even | all.
"""
from ml_collections import config_dict

from lasa_jax.infra.base_config import base_config


def get_config():
    c = base_config()
    c.data_root = "../shared/data"      # folder holding polyrefuse_completions/
    c.labelled_dir = ""                 # labelled response folder ("" = <data_root>/polyrefuse_completions)
    c.split = "odd"                     # odd | even | all (row index parity; odd = held-out half)
    c.progress = True
    c.judge = config_dict.ConfigDict(dict(
        safety="calibrated",            # calibrated | heuristic | llama_guard | rubric
        model_path="",                  # judge model for llama_guard / rubric (local HF directory)
        batch_size=8,
        max_new_tokens=32,
        template_kwargs="",             # judge chat-template variables, JSON
    ))
    return c
