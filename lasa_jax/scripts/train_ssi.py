"""Stage 2 (Interpret): train the Safety Semantic Interpreter on the bottleneck layer's features.

    python -m lasa_jax.scripts.train_ssi --config=configs/ssi.py --config.model_path=DIR \
        --config.residual_index=K --config.data.root=../shared/data --workdir=DIR

--config.residual_index=-1 (the default) reads k* from --config.locate_workdir's bottleneck.json.
Output: <workdir>/config.json (the resolved run config) and the SSI artifact <workdir>/ssi/.
"""
from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run
from lasa_jax.runtime import start_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage 2 config file (configs/ssi.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.ssi import stage

    config = _CONFIG.value
    mesh = start_run(config, _WORKDIR.value)
    stage.run(config, _WORKDIR.value, mesh=mesh)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    run(main)
