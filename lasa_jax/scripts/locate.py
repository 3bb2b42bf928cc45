"""Stage 1 (Locate): find the semantic bottleneck layer of a model.

    python -m lasa_jax.scripts.locate --config=configs/locate.py --config.model_path=DIR \
        --config.data.root=../shared/data --workdir=DIR

Output in <workdir>: config.json (the resolved run config), bottleneck.json, layers.csv, bottleneck_layers.png,
tsne_layer<k>.png, activations.npz and activations.json (reused by a rerun with the same inputs). See
lasa_jax/locate/stage.py.
"""
from lasa_jax.cli import stage_main

if __name__ == "__main__":
    stage_main("lasa_jax.locate.stage", config_help="Stage 1 config file (configs/locate.py).")
