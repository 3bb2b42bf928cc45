"""Stage 3 (Inject): Latent KTO fine-tuning of the base model with the conditional prefix.

    python -m lasa_jax.scripts.train_kto --config=configs/kto.py --config.model_path=BASE_DIR \
        --config.data.path=PAIRS.json --workdir=DIR

Rerunning the same command resumes from the newest checkpoint in DIR/checkpoints. Exit codes: 0 finished (policy
exported to DIR/hf_export), 75 stopped by SIGTERM after saving a checkpoint (rerun to resume), 1 error (e.g. a
NaN loss: the message names the step and the last good checkpoint).
"""
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run
from lasa_jax.runtime import start_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage 3 config file (configs/kto.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, export); reused to resume.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.train.kto_trainer import EXIT_PREEMPTED, train_kto

    config = _CONFIG.value
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every checkpoint file operation at INFO
    mesh = start_run(config, _WORKDIR.value)
    result = train_kto(config, _WORKDIR.value, mesh)
    if result.status == "preempted":
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    run(main)
