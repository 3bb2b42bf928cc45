"""Stage 2 (Interpret): train the Safety Semantic Interpreter on the bottleneck layer's features.

    python -m lasa_jax.scripts.train_ssi --config=configs/ssi.py --config.model_path=DIR \
        --config.residual_index=K --config.data.root=../shared/data --workdir=DIR

--config.residual_index=-1 (the default) reads k* from --config.locate_workdir's bottleneck.json.
Output: <workdir>/config.json (the resolved run config) and the SSI artifact <workdir>/ssi/.
"""
from lasa_jax.cli import stage_main

if __name__ == "__main__":
    stage_main("lasa_jax.ssi.stage", config_help="Stage 2 config file (configs/ssi.py).")
