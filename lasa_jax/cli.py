"""The command-line entry of every script in lasa_jax/scripts: the start of a run and errors that read like errors.

    from lasa_jax.cli import run, start_run
    def main(argv):
        mesh = start_run(config, workdir)   # multi-host start-up, asset paths, workdir + config.json, the mesh
        ...
    if __name__ == "__main__":
        run(main)                           # instead of absl's app.run(main)

A stage script is one `stage_main(module, ...)` call (flags --config and --workdir, then `start_run` and the stage's
`run`).

A user error (bad input, config or data: `lasa_jax.infra.errors.InputError`; a named input that does not exist
(FileNotFoundError, NotADirectoryError); an output that exists and may not be replaced (FileExistsError); a write
refused by the file system: disk full, file too large, read-only, permission denied) prints its message on stderr
as the last line, `error: <message>`, and exits with status 2. A multi-line message prints its detail lines first
and its first line last. Anything else is an unexpected failure and keeps absl's traceback. `LASA_JAX_DEBUG=1` or
`--verbosity=1` (absl's flag, also `-v 1`) shows the traceback of user errors too.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
from absl import app, flags

from lasa_jax.infra import storage
from lasa_jax.infra.distributed import is_writer, maybe_initialize_distributed
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import WRITE_REFUSED, atomic_write_json
from lasa_jax.infra.xla_cache import enable_compilation_cache

EXIT_USER_ERROR = 2
DEBUG_ENV = "LASA_JAX_DEBUG"


def is_user_error(error: BaseException) -> bool:
    """True for the errors `run` prints as one `error:` line (module docstring)."""
    if isinstance(error, (InputError, FileNotFoundError, NotADirectoryError, FileExistsError)):
        return True
    return isinstance(error, OSError) and error.errno in WRITE_REFUSED


def error_lines(error: BaseException) -> list[str]:
    """The lines `run` prints for a user error: detail lines first, then `error: <first line>` last."""
    text = str(error).strip() or type(error).__name__
    first, *details = text.splitlines()
    if details:
        first = first.rstrip(":") + " (details above)"
    return [line for line in details if line.strip()] + [f"error: {first}"]


def debug_requested() -> bool:
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        return True
    try:
        return flags.FLAGS["verbosity"].value >= 1
    except (KeyError, flags.UnparsedFlagAccessError):
        return False


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)` with user errors reported as `error: <message>` and exit status 2."""
    def guarded(argv):
        try:
            return main(argv)
        except Exception as error:
            if not is_user_error(error) or debug_requested():
                raise
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            print("\n".join(error_lines(error)), file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    app.run(guarded)


def stage_main(stage_module: str, *, config_help: str, default_config: str | None = None,
               workdir_help: str = "Output directory.", config_name: str = "config.json",
               exit_codes: Mapping[str, int] | None = None, quiet_absl: bool = False) -> None:
    """The whole body of a stage script (lasa_jax/scripts/<stage>.py): define `--config` (a config file) and
    `--workdir`, then `start_run` and the stage module's `run(config, workdir, mesh)` (lasa_jax.stage) under `run`.

    `default_config` None makes both flags required. `exit_codes` maps a `StageResult.status` other than
    "completed" to the exit status of the script (default {"preempted": lasa_jax.stage.EXIT_PREEMPTED}, 75).
    `quiet_absl` raises absl's log level to WARNING (orbax logs every checkpoint file operation at INFO).
    """
    from ml_collections import config_flags

    from lasa_jax.stage import EXIT_PREEMPTED

    exit_codes = {"preempted": EXIT_PREEMPTED} if exit_codes is None else exit_codes

    config_flag = config_flags.DEFINE_config_file("config", default_config, config_help)
    workdir_flag = flags.DEFINE_string("workdir", None if default_config is None else "", workdir_help)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        stage = importlib.import_module(stage_module)
        config = config_flag.value
        if quiet_absl:
            logging.getLogger("absl").setLevel(logging.WARNING)
        mesh = start_run(config, workdir_flag.value, config_name=config_name)
        result = stage.run(config, workdir_flag.value, mesh)
        if result.status in exit_codes:
            sys.exit(exit_codes[result.status])

    if default_config is None:
        flags.mark_flags_as_required(["config", "workdir"])
    run(main)


# ----------------------------------------------------------------------------------------------- start of a run



def mesh_from_config(mesh_config) -> Any:
    from lasa_jax.sharding import make_mesh

    return make_mesh(data=int(mesh_config.data), fsdp=int(mesh_config.fsdp), tensor=int(mesh_config.tensor))


def start_run(config: ml_collections.ConfigDict, workdir: str, config_name: str = "config.json"):
    """Initialise multi-host if needed, resolve "asset:<name>" model paths (the lasa-jax cache, fetched once),
    create `workdir`, write the resolved config there (process 0), build the mesh.

    Returns the mesh.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    maybe_initialize_distributed(config.get("distributed", "auto"))
    enable_compilation_cache(config.get("compilation_cache", ""))  # before any jit; lasa_jax.infra.xla_cache
    if not workdir:
        raise InputError("--workdir is required")
    _resolve_asset_paths(config)
    if is_writer():
        storage.makedirs(workdir)  # local directory or URL (gs://...): storage
        atomic_write_json(os.path.join(workdir, config_name), json.loads(config.to_json_best_effort()))
    return mesh_from_config(config.mesh)


def _resolve_asset_paths(config: ml_collections.ConfigDict) -> None:
    """Replace "asset:<name>" in the model-path fields of a stage config by the cached directory."""
    from lasa_jax.models.assets import asset_name, resolve_asset_path

    for field in ("model_path", "base_model_path", "tokenizer_path", "init_from"):
        value = config.get(field)
        if isinstance(value, str) and asset_name(value) is not None:
            with config.unlocked():
                config[field] = resolve_asset_path(value)


