"""LASA / prefix-only / baseline generation over evaluation prompts (configs/generate.py, lasa_jax/generation_stage.py).

    python -m lasa_jax.scripts.generate --config=configs/generate.py --workdir=DIR --config.mode=lasa \
        --config.model_path=ALIGNED --config.base_model_path=BASE --config.ssi_dir=SSI_DIR
"""
from absl import app, flags
from ml_collections import config_flags

from lasa_jax import generation_stage
from lasa_jax.cli import run
from lasa_jax.runtime import start_run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/generate.py", "generate stage config")
_WORKDIR = flags.DEFINE_string("workdir", "", "output directory")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    mesh = start_run(config, _WORKDIR.value, config_name="generate_config.json")
    generation_stage.run(config, _WORKDIR.value, mesh)


if __name__ == "__main__":
    run(main)
