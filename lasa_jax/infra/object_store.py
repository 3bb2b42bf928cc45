"""Files at URLs (gs://, s3://, memory://, ...) for `lasa_jax.infra.storage`, through `etils.epath`: one put per object.

Object stores make an object visible only once its upload is complete, but have no rename and no append. So every
write here stores a final object in one put: `put` stores bytes, `append` and `truncate` rewrite the whole object,
`upload_tree` stores a local directory file by file (not atomic: a killed upload leaves part of the tree, so callers
write their completion marker last). Stage code never calls this module: it calls storage, which sends URLs here.

`memory://` is fsspec's in-process filesystem (it lives as long as the Python process; for tests). epath knows
gs://, s3://, az:// and hf:// only, so `as_path` registers memory:// with it: `epath.Path("memory://...")` works
then for any library taking epath paths (orbax's metadata files; its arrays go through tensorstore, which takes
local paths and gs:// only, see `lasa_jax.kto.checkpoint`).
"""
from __future__ import annotations

import io
import os
import pathlib
import shutil
from typing import IO

_MEMORY = "memory://"


def as_path(url: str | os.PathLike):
    """`url` (or a local path) as an `etils.epath.Path`."""
    from etils import epath

    _register_memory_scheme()
    return epath.Path(os.fspath(url))


def _register_memory_scheme() -> None:
    """Teach epath fsspec's "memory://" filesystem, held as the parts ("/", "memory", ...) the way epath holds
    gs:// paths. Idempotent."""
    from etils.epath import backend, gpath, register

    if _MEMORY in register._URI_PREFIXES_TO_CLS:
        return

    class _Backend(backend._FileSystemSpecBackend):
        def fs(self, path):
            import fsspec

            return fsspec.filesystem("memory")

    memory_backend = _Backend()

    @register.register_path_cls(_MEMORY)
    class MemoryPath(gpath.PosixGPath):
        """memory://a/b as an epath path (fsspec's in-process filesystem)."""

        def __new__(cls, *parts):
            full = "/".join(os.fspath(p) for p in parts)
            if full.startswith(_MEMORY):
                full = "/memory/" + full[len(_MEMORY):].lstrip("/")
            return pathlib.PurePosixPath.__new__(cls, full)

        @property
        def _uri_scheme(self):
            return "memory" if self.parts[:2] == ("/", "memory") else None

        @property
        def _backend(self):
            return memory_backend if self._uri_scheme else backend.os_backend


def parent(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0]


def exists(url: str) -> bool:
    return as_path(url).exists()


def is_dir(url: str) -> bool:
    return as_path(url).is_dir()


def is_file(url: str) -> bool:
    path = as_path(url)
    return path.exists() and not path.is_dir()


def listdir(url: str) -> list[str]:
    return sorted(p.name for p in as_path(url).iterdir())


def makedirs(url: str) -> None:
    """Object stores have no directories: a no-op beyond what the store records."""
    as_path(url).mkdir(parents=True, exist_ok=True)


def remove(url: str) -> None:
    as_path(url).unlink(missing_ok=True)


def rmtree(url: str) -> None:
    path = as_path(url)
    if path.exists():
        path.rmtree(missing_ok=True)


def open_url(url: str, mode: str = "r", encoding: str = "utf-8") -> IO:
    """A file object for `url`; text modes decode/encode with `encoding` (epath itself opens text as UTF-8)."""
    handle = as_path(url).open(mode if "b" in mode else mode + "b")
    return handle if "b" in mode else io.TextIOWrapper(handle, encoding=encoding)


def read_bytes(url: str) -> bytes:
    with open_url(url, "rb") as f:
        return f.read()


def put(url: str, data: bytes) -> None:
    """Store `data` as the object `url` in one put."""
    if "://" in parent(url):
        makedirs(parent(url))
    as_path(url).write_bytes(data)


def append(url: str, data: bytes, drop_torn_tail: bool = False) -> None:
    """Rewrite `url` (created if missing) as its content + `data`; `drop_torn_tail` first cuts a last line without
    newline (left by a killed writer)."""
    old = read_bytes(url) if exists(url) else b""
    put(url, (old[:old.rfind(b"\n") + 1] if drop_torn_tail else old) + data)


def truncate(url: str, size: int) -> None:
    put(url, read_bytes(url)[:size])


def copy_file(source: str, destination: str) -> None:
    """Copy one file; either side may be a URL."""
    opener = (lambda p, m: open_url(p, m) if "://" in p else open(p, m))
    if "://" in destination and "://" in parent(destination):
        makedirs(parent(destination))
    with opener(source, "rb") as fin, opener(destination, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


class Appender(io.TextIOBase):
    """A text file open for appending at a URL: each `flush` (and `close`) rewrites the object in one put."""

    def __init__(self, url: str):
        self.url, self._pending = url, []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending.append(text)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            data, self._pending = "".join(self._pending).encode("utf-8"), []
            append(self.url, data)

    def close(self) -> None:
        self.flush()
        super().close()
