"""Stage 3 (Inject): Latent KTO fine-tuning of the base model with the conditional prefix.

    python -m lasa_jax.scripts.train_kto --config=configs/kto.py --config.model_path=BASE_DIR \
        --config.data.path=PAIRS.json --workdir=DIR

Rerunning the same command resumes from the newest checkpoint in DIR/checkpoints. Exit codes: 0 finished (policy
exported to DIR/hf_export), 75 stopped by SIGTERM after saving a checkpoint (rerun to resume), 1 error (e.g. a
NaN loss: the message names the step and the last good checkpoint).
"""

from lasa_jax.cli import stage_main

if __name__ == "__main__":
    stage_main("lasa_jax.kto.stage", config_help="Stage 3 config file (configs/kto.py).",
               workdir_help="Run directory (checkpoints, metrics, export); reused to resume.",
               quiet_absl=True)
