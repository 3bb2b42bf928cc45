"""Score a safety judge against WildGuard-labelled responses: calibration.json + calibration.md in --workdir.

    python -m lasa_jax.scripts.calibrate_judge --config=configs/calibrate_judge.py --workdir=runs/calibration \
        --config.data_root=../shared/data --config.judge.safety=heuristic --config.split=odd
"""
from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run, start_run
from lasa_jax.evaluate.calibrate_judge import run_calibration

_CONFIG = config_flags.DEFINE_config_file("config", "configs/calibrate_judge.py", "judge calibration config")
_WORKDIR = flags.DEFINE_string("workdir", "", "output directory (calibration.json, calibration.md)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    mesh = start_run(config, _WORKDIR.value, config_name="calibrate_judge_config.json")
    run_calibration(config, _WORKDIR.value, mesh)


if __name__ == "__main__":
    run(main)
