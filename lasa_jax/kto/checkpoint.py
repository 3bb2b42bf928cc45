"""Training checkpoints: the one orbax module of lasa_jax.

A checkpoint is one step directory `<directory>/<step>/` written by `orbax.checkpoint.CheckpointManager` with two
items:
  "state": a pytree of arrays (for KTO: params, optimizer state, step counter, RNG key), saved with
    `ocp.args.StandardSave` and restored onto an abstract target whose leaves carry the shardings to restore onto
    (`abstract_target`), so every array comes back directly on its shards;
  "meta": a JSON object (data position, run identity, anything the caller needs to resume), `ocp.args.JsonSave`.

Atomicity: orbax writes each step into `<step>.orbax-checkpoint-tmp-<timestamp>` and renames it to `<step>` only
once every item of every process is written (on GCS it writes a commit marker instead). A save interrupted at any
point (kill -9, lost host) leaves no `<step>` directory: `latest_step` never returns it, and the leftover temporary
directory is deleted the next time a `Checkpointer` opens the directory.

Multi-process: every process constructs the `Checkpointer` and calls `save` / `restore` with its own shards; orbax
coordinates the writes (process 0 writes the JSON and finalises the directory). Saves are asynchronous by default:
`save` returns once the arrays are copied off the accelerator, the files are written in the background, and
`wait_until_finished` (also called by `close`) blocks until the checkpoint is final.

Where: a local directory or gs:// (orbax writes arrays there itself, through tensorstore's file and gcs drivers).
Any other URL (memory://, s3://, ...: tensorstore's drivers and orbax 0.12 take absolute local paths or gs:// only)
is mirrored: orbax writes into a local temporary directory, each finished step is copied to the URL
(`storage.copy_tree`) and marked complete by a last file `MIRROR_COMPLETE`; opening the URL copies its complete
steps down first, steps orbax drops (max_to_keep) are deleted there. Mirrored saves are synchronous, and a mirror is
single-process only (each process would have its own local copy).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from lasa_jax.infra import storage
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.trees import describe_diff, flatten, shape_diff

log = logging.getLogger(__name__)

STATE_ITEM = "state"
META_ITEM = "meta"
MIRROR_COMPLETE = "LASA_MIRROR_COMPLETE"  # written last into a step copied to a mirrored URL


def orbax_writes(directory: str | os.PathLike) -> bool:
    """Whether orbax writes checkpoints at `directory` itself (local path or gs://) rather than through a mirror."""
    return not storage.is_url(directory) or os.fspath(directory).startswith("gs://")


class _Mirror:
    """A local directory for orbax standing in for `url` (module docstring)."""

    def __init__(self, url: str):
        if jax.process_count() > 1:
            raise InputError(f"{url}: orbax cannot write checkpoints there (local paths and gs:// only) and a local "
                             f"mirror is single-process; use gs:// or a shared file system for multi-process runs")
        self.url = url.rstrip("/")
        self.local = tempfile.mkdtemp(prefix="lasa-checkpoints-")
        for step in self._complete_steps():
            storage.copy_tree(f"{self.url}/{step}", os.path.join(self.local, step))

    def _complete_steps(self) -> list[str]:
        if not storage.isdir(self.url):
            return []
        return [name for name in storage.listdir(self.url)
                if name.isdigit() and storage.isfile(f"{self.url}/{name}/{MIRROR_COMPLETE}")]

    def sync(self, steps: list[int]) -> None:
        """Copy the finished `steps` missing at the URL there; delete the URL's steps not in `steps`."""
        uploaded = set(self._complete_steps())
        for step in map(str, steps):
            if step not in uploaded:
                storage.rmtree(f"{self.url}/{step}")  # a partial copy of a killed upload
                storage.copy_tree(os.path.join(self.local, step), f"{self.url}/{step}")
                storage.atomic_write_text(f"{self.url}/{step}/{MIRROR_COMPLETE}", "")
        for step in uploaded - set(map(str, steps)):
            storage.rmtree(f"{self.url}/{step}")

    def close(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)


def abstract_target(tree: Any) -> Any:
    """`jax.ShapeDtypeStruct` (shape, dtype, sharding) for every array leaf of `tree` (arrays or ShapeDtypeStructs).

    Restoring onto it places every array on the sharding it carries.
    """
    def leaf(x):
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


class Checkpointer:
    """Save and restore (state pytree, JSON meta) pairs under `directory`, keeping the last `max_to_keep` steps.

    Args:
      directory: local path or URL (gs://bucket/run/checkpoints; other URLs through a mirror, module docstring);
        created if missing.
      max_to_keep: number of most recent step directories kept (None keeps all).
      async_save: write files in a background thread (see module docstring).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise InputError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = os.fspath(directory)
        self._mirror = None if orbax_writes(self.directory) else _Mirror(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save and self._mirror is None)
        where = self._mirror.local if self._mirror is not None else self.directory
        self._manager = ocp.CheckpointManager(where, options=options, item_handlers={
            STATE_ITEM: ocp.StandardCheckpointHandler(), META_ITEM: ocp.JsonCheckpointHandler()})

    # ------------------------------------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    # ------------------------------------------------------------------------------------------------ save
    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> bool:
        """Save `state` (pytree of jax arrays) and `meta` (JSON-serialisable) as checkpoint `step`.

        Returns False (and saves nothing) when checkpoint `step` already exists. Waits for a previous asynchronous
        save to finish first. The arrays may be donated or overwritten once this returns.
        """
        step = int(step)
        if step in self._manager.all_steps():
            return False
        try:
            meta = json.loads(json.dumps(dict(meta)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint meta must be JSON-serialisable: {e}") from None
        saved = self._manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state), META_ITEM: ocp.args.JsonSave(meta)}), force=True)
        log.info("checkpoint step %d: %s", step, "writing" if saved else "skipped by orbax")
        self._sync()
        return bool(saved)

    def _sync(self) -> None:
        if self._mirror is not None:
            self._manager.wait_until_finished()
            self._mirror.sync(self.all_steps())

    def wait_until_finished(self) -> None:
        """Block until every started save is complete on disk (at a mirrored URL: copied there)."""
        self._manager.wait_until_finished()
        self._sync()

    # ------------------------------------------------------------------------------------------------ restore
    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON meta of checkpoint `step` (reads no arrays)."""
        self._check_step(step)
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[META_ITEM])

    def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint `step`.

        `target`: the state's structure with a `jax.ShapeDtypeStruct` carrying the wanted sharding at every leaf
        (see `abstract_target`; concrete arrays are accepted and only their shape/dtype/sharding are used). A
        checkpoint whose array paths, shapes or dtypes differ from `target` raises ValueError (checked from the
        checkpoint's metadata before anything is read).
        """
        self._check_step(step)
        target = abstract_target(target)
        self._check_structure(step, target)
        restored = self._manager.restore(int(step), args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardRestore(target), META_ITEM: ocp.args.JsonRestore()}))
        return restored[STATE_ITEM], dict(restored[META_ITEM])

    def _check_structure(self, step: int, target: Any) -> None:
        """ValueError naming every array whose path, shape or dtype differs between checkpoint and target (read
        from the checkpoint's metadata, before any array is loaded)."""
        saved = _leaf_specs(self._manager.item_metadata(int(step))[STATE_ITEM].tree)
        wanted = _leaf_specs(target)
        diff = shape_diff(wanted, saved, found_label="checkpoint")
        if diff:
            raise InputError(f"{self.directory}: checkpoint step {step} does not match the expected state (missing "
                             f"= expected, not in the checkpoint):\n" + describe_diff(diff, limit=20))

    def _check_step(self, step: int) -> None:
        if int(step) not in self.all_steps():
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint for step {step} "
                                    f"(available: {self.all_steps()})")

    # ------------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Wait for pending saves and release the manager's resources."""
        self.wait_until_finished()
        self._manager.close()
        if self._mirror is not None:
            self._mirror.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_run_identity(saved: Mapping[str, Any], current: Mapping[str, Any], where: str) -> None:
    """Raise ValueError listing every field whose value differs between a checkpoint's run identity and the
    current run's (both flat-or-nested JSON mappings). `where` names the checkpoint in the message."""
    saved_flat, current_flat = (flatten(json.loads(json.dumps(tree))) for tree in (saved, current))  # tuples -> lists
    differences = [f"{key}: checkpoint has {saved_flat.get(key, '<absent>')!r}, this run has "
                   f"{current_flat.get(key, '<absent>')!r}"
                   for key in sorted(set(saved_flat) | set(current_flat))
                   if saved_flat.get(key, "<absent>") != current_flat.get(key, "<absent>")]
    if differences:
        raise InputError(f"{where} was written by a different run; cannot resume it with this configuration:\n  "
                         + "\n  ".join(differences)
                         + "\nUse a new --workdir, or restore the configuration the checkpoint was written with.")


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """{"a/b/0": (shape, dtype name)} for the array leaves of a pytree or an orbax metadata tree."""
    def name(key) -> str:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                return str(getattr(key, attribute))
        return str(key)

    return {"/".join(name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
