"""Stage 1 (Locate): find the semantic bottleneck layer of a model.

    python -m lasa_jax.scripts.locate --config=configs/locate.py --config.model_path=DIR \
        --config.data.root=../shared/data --workdir=DIR

Output in <workdir>: config.json (the resolved run config), bottleneck.json, layers.csv, bottleneck_layers.png,
tsne_layer<k>.png, activations.npz and activations.json (reused by a rerun with the same inputs). See
lasa_jax/locate.py.
"""
from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run
from lasa_jax.runtime import start_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage 1 config file (configs/locate.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.locate import run_locate

    config = _CONFIG.value
    mesh = start_run(config, _WORKDIR.value)
    run_locate(config, _WORKDIR.value, mesh=mesh)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    run(main)
