"""Atomic file output shared by every stage: write to a temporary path in the same directory, then rename.

Nothing half-written is ever left at a final path: readers either see the old file/directory or the complete new one.
A write the file system refuses (disk full, file too large, read-only, permission) raises an OSError of the same
errno whose message names the final path; the temporary file is removed and the old file is left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lasa_jax.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_permissions(path: str | os.PathLike) -> None:
    """Give a file the permissions `open()` would (0666 minus the umask): for writers that create 0600 files."""
    os.chmod(path, 0o666 & ~_umask())


# errno values of a write the file system refused
WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def write_failed(error: BaseException, path: str | os.PathLike) -> OSError:
    """`error` (an OSError, or a library error carrying "(os error N)") as an OSError naming `path`."""
    number = getattr(error, "errno", None)
    if number is None:
        found = re.search(r"os error (\d+)", str(error))
        number = int(found.group(1)) if found else errno.EIO
    reason = os.strerror(number) if number else str(error)
    return OSError(number, reason, os.fspath(path))  # str: "[Errno N] <reason>: '<path>'"


@contextlib.contextmanager
def named_write_errors(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a refused write of the block that names no file (e.g. EFBIG from `write`) as one naming `path`."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno not in WRITE_REFUSED:
            raise  # names its file already, or is not a refused write
        raise write_failed(e, path) from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yield a temporary file path next to `path`; rename it onto `path` when the block exits without error."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with named_write_errors(path):
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp", dir=directory)
        os.close(fd)
    try:
        with named_write_errors(path):
            yield tmp
            set_default_permissions(tmp)  # mkstemp creates 0600
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_durably(path: str | os.PathLike, data: bytes) -> None:
    """Append `data` to `path` (created if missing) and fsync it: for resume files whose reader drops a cut last
    line. A refused write names `path` (module docstring)."""
    with named_write_errors(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=False) + "\n")


def _writer_alive(temporary: str, path: str) -> bool:
    """Whether the process named in an `atomic_directory` temporary name (".<name>.<pid>-<random>.tmp") still runs."""
    rest = os.path.basename(temporary)[len(os.path.basename(path)) + 2:]
    pid = rest.split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory next to `path`; it replaces `path` only once the block finishes.

    Raises FileExistsError naming `path` if it exists and `overwrite` is False. Temporary directories of `path`
    left by a writer that was killed are removed first; the temporary name carries its writer's pid, so a live
    concurrent writer on this host keeps its directory (the last rename wins).
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (or choose another output directory)")
    parent = os.path.dirname(path)
    with named_write_errors(path):
        os.makedirs(parent, exist_ok=True)
        pattern = glob.escape("." + os.path.basename(path)) + ".*.tmp*"
        for stale in glob.glob(os.path.join(glob.escape(parent), pattern)):
            if not _writer_alive(stale, path):  # left by a writer killed mid-way (never read: not final)
                shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.{os.getpid()}-", suffix=".tmp", dir=parent)
    try:
        with named_write_errors(path):
            yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- JSON readers
def require_file(path: str | os.PathLike, what: str = "file") -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed content of a JSON file (UTF-8, optional BOM). `what` names the file's role in the
    FileNotFoundError."""
    path = require_file(path, what)
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None


def iter_jsonl(path: str | os.PathLike, what: str = "JSON Lines file") -> Iterator[tuple[int, Any]]:
    """(line number, record) for every non-blank line of a JSON Lines file (UTF-8, optional BOM), in order.

    Line numbers are 1-based; callers name a record "<path>:<line number>" in their errors, as this reader does.
    The file's existence is checked when this is called (FileNotFoundError; `what` names the file's role); a line
    that is not valid JSON raises ValueError naming the file and line when it is reached.
    """
    return _jsonl_records(require_file(path, what))


def _jsonl_records(path: pathlib.Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{line_number}: not valid JSON ({e})") from None
            yield line_number, record


def write_jsonl(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    with atomic_path(path, suffix=".jsonl") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
