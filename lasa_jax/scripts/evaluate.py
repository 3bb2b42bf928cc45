"""Judge generations and write the systems-side-by-side report (configs/evaluate.py, lasa_jax/evaluate/stage.py).

    python -m lasa_jax.scripts.evaluate --config=configs/evaluate.py --workdir=DIR \
        --config.baseline_generations=B.jsonl --config.prefix_only_generations=P.jsonl \
        --config.lasa_generations=L.jsonl --config.data_root=../shared/data

With --config.data_root holding polyrefuse_completions/, the default safety judge is the calibrated n-gram judge;
without it, the refusal-phrase heuristic. The report states which judge ran and its measured calibration.
"""
from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run
from lasa_jax.evaluate import stage
from lasa_jax.runtime import start_run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "evaluate stage config")
_WORKDIR = flags.DEFINE_string("workdir", "", "output directory (report files, judge cache)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    mesh = start_run(config, _WORKDIR.value, config_name="evaluate_config.json")
    stage.run(config, _WORKDIR.value, mesh)


if __name__ == "__main__":
    run(main)
