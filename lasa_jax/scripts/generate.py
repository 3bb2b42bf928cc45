"""LASA / prefix-only / baseline generation over evaluation prompts (configs/generate.py, lasa_jax/generate/stage.py).

    python -m lasa_jax.scripts.generate --config=configs/generate.py --workdir=DIR --config.mode=lasa \
        --config.model_path=ALIGNED --config.base_model_path=BASE --config.ssi_dir=SSI_DIR
"""
from lasa_jax.cli import stage_main

if __name__ == "__main__":
    stage_main("lasa_jax.generate.stage", config_help="generate stage config", default_config="configs/generate.py",
               workdir_help="output directory", config_name="generate_config.json")
