"""Judge generations and write the systems-side-by-side report (configs/evaluate.py, lasa_jax/evaluate/stage.py).

    python -m lasa_jax.scripts.evaluate --config=configs/evaluate.py --workdir=DIR \
        --config.baseline_generations=B.jsonl --config.prefix_only_generations=P.jsonl \
        --config.lasa_generations=L.jsonl --config.data_root=../shared/data

With --config.data_root holding polyrefuse_completions/, the default safety judge is the calibrated n-gram judge;
without it, the refusal-phrase heuristic. The report states which judge ran and its measured calibration.
"""
from lasa_jax.cli import stage_main

if __name__ == "__main__":
    stage_main("lasa_jax.evaluate.stage", config_help="evaluate stage config", default_config="configs/evaluate.py",
               workdir_help="output directory (report files, judge cache)", config_name="evaluate_config.json")
