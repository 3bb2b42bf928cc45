"""The one path layer of lasa_jax: every file a stage reads or writes, on a local disk or at a URL (gs://, memory://).

Paths are strings (or os.PathLike). A URL is "<scheme>://..." (`is_url`); URLs go to `lasa_jax.infra.object_store`
(`etils.epath`: fsspec, or TensorFlow's gfile where installed; memory:// for tests), local paths through `os`
exactly as before. Every public function here takes either.

Atomic writes. Local: write to a temporary path in the same directory, then rename; nothing half-written is ever
left at a final path, readers see the old file/directory or the complete new one. URL: the file is written locally
and stored with one put of the final object (an object store shows an object only once it is complete, so a reader
never sees half a file); `append_durably` and `truncate` rewrite the whole object (stores have no append). A directory
(`atomic_directory`) is built locally, then its files are uploaded one by one after the old tree is removed: object
stores have no directory rename, so a killed upload can leave a partial tree. Stages therefore write their
completion marker (e.g. the pipeline's stage_done.json) after their outputs; the marker is the commit point.

Errors. A local write the file system refuses (disk full, file too large, read-only, permission) raises an OSError
of the same errno whose message names the final path; the temporary file is removed and the old file is left as
it was.

Size: ~420 lines, over the 350 aim, as the one module every stage's file I/O goes through (the issue asks for one
path layer); how URLs are stored is in `lasa_jax.infra.object_store`.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from lasa_jax.infra import object_store as url_store
from lasa_jax.infra.errors import InputError


# ----------------------------------------------------------------------------------------------- paths and URLs
def is_url(path: str | os.PathLike) -> bool:
    """Whether `path` is a URL ("<scheme>://..."), i.e. not a local path."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike):
    """`path` as an `etils.epath.Path` (local or URL; memory:// included): for libraries that take epath paths."""
    return url_store.as_path(path)


def to_path(path: str | os.PathLike):
    """A path object for `path`: `pathlib.Path` when local (as before), `etils.epath.Path` for a URL (same methods:
    `/`, exists, is_file, read_text, mkdir, unlink, iterdir). For stage code that builds paths with `/`."""
    return as_path(path) if is_url(path) else pathlib.Path(path)


def for_reading(path: str | os.PathLike):
    """`path` itself when local, else an in-memory file of its bytes: for readers that take either (np.load,
    PIL)."""
    return io.BytesIO(read_bytes(path)) if is_url(path) else path


def absolute(path: str | os.PathLike) -> str:
    """`os.path.abspath(path)` for a local path; a URL as is."""
    return os.fspath(path) if is_url(path) else os.path.abspath(path)


def makedirs(path: str | os.PathLike) -> None:
    """Create directory `path` and its parents (no-op if it exists)."""
    if is_url(path):
        url_store.makedirs(os.fspath(path))
    else:
        os.makedirs(path, exist_ok=True)


def exists(path: str | os.PathLike) -> bool:
    return url_store.exists(os.fspath(path)) if is_url(path) else os.path.exists(path)


def isfile(path: str | os.PathLike) -> bool:
    return url_store.is_file(os.fspath(path)) if is_url(path) else os.path.isfile(path)


def isdir(path: str | os.PathLike) -> bool:
    return url_store.is_dir(os.fspath(path)) if is_url(path) else os.path.isdir(path)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) of the entries of directory `path`, sorted."""
    return url_store.listdir(os.fspath(path)) if is_url(path) else sorted(os.listdir(path))


def remove(path: str | os.PathLike) -> None:
    """Delete file `path` (no error if it does not exist)."""
    if is_url(path):
        url_store.remove(os.fspath(path))
    elif os.path.lexists(path):
        os.remove(path)


def rmtree(path: str | os.PathLike) -> None:
    """Delete directory `path` with everything in it (no error if it does not exist)."""
    if is_url(path):
        url_store.rmtree(os.fspath(path))
    else:
        shutil.rmtree(path, ignore_errors=True)


def open_file(path: str | os.PathLike, mode: str = "r", encoding: str = "utf-8") -> IO:
    """`open(path, mode)` for local paths and URLs; text modes use `encoding` (read "utf-8-sig" to drop a BOM)."""
    if is_url(path):
        return url_store.open_url(os.fspath(path), mode, encoding)
    return open(path, mode) if "b" in mode else open(path, mode, encoding=encoding)


def read_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    with open_file(path, "r", encoding=encoding) as f:
        return f.read()


def read_bytes(path: str | os.PathLike) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def copy_file(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy one file (local or URL, either way); `shutil.copyfile` between local paths."""
    if is_url(source) or is_url(destination):
        url_store.copy_file(os.fspath(source), os.fspath(destination))
    else:
        shutil.copyfile(source, destination)


def copy_tree(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy every file under directory `source` to the same relative path under `destination` (local or URL,
    either way), creating directories as needed; existing files are overwritten, others left alone."""
    source, destination = os.fspath(source), os.fspath(destination)
    makedirs(destination)
    for name in listdir(source):
        src, dst = _join(source, name), _join(destination, name)
        if isdir(src):
            copy_tree(src, dst)
        else:
            copy_file(src, dst)


def _join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name if is_url(directory) else os.path.join(directory, name)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
    """A local directory holding the tree at `path`: `path` itself when local, else a temporary download (removed
    when the block exits). For libraries that read local files only (transformers, safetensors)."""
    if not is_url(path):
        yield os.fspath(path)
        return
    if not isdir(path):
        raise FileNotFoundError(f"{os.fspath(path)}: directory not found")
    with tempfile.TemporaryDirectory(prefix="lasa-download-") as tmp:
        copy_tree(path, tmp)
        yield tmp


# ----------------------------------------------------------------------------------------------- atomic output
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
    if is_url(path):
        with _url_atomic_path(path, suffix) as tmp:
            yield tmp
        return
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


@contextlib.contextmanager
def _url_atomic_path(url: str, suffix: str) -> Iterator[str]:
    """A local temporary file whose content is stored at `url` in one put when the block exits without error."""
    fd, tmp = tempfile.mkstemp(prefix="lasa-upload-", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        yield tmp
        with named_write_errors(url), open(tmp, "rb") as f:
            url_store.put(url, f.read())
    finally:
        os.remove(tmp)


def append_durably(path: str | os.PathLike, data: bytes) -> None:
    """Append `data` to `path` (created if missing) and fsync it: for resume files whose reader drops a cut last
    line. A refused write names `path` (module docstring). At a URL the whole object is rewritten in one put."""
    if is_url(path):
        with named_write_errors(path):
            return url_store.append(os.fspath(path), data)
    with named_write_errors(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def open_append(path: str | os.PathLike) -> IO:
    """A UTF-8 text file open for appending (created if missing): `open(path, "a")` locally; at a URL a file whose
    every flush rewrites the object in one put (`append_durably`)."""
    return url_store.Appender(os.fspath(path)) if is_url(path) else open(path, "a", encoding="utf-8")


def append_after_complete_lines(url: str, data: bytes) -> None:
    """At a URL: store the complete lines of `url` (a torn last line of a killed writer dropped) followed by
    `data`, in one put. (Local files do this in place: `lasa_jax.evaluate.judge_cache`.)"""
    with named_write_errors(url):
        url_store.append(url, data, drop_torn_tail=True)


def truncate(path: str | os.PathLike, size: int) -> None:
    """Cut file `path` to its first `size` bytes (at a URL: the object is rewritten in one put)."""
    if is_url(path):
        return url_store.truncate(os.fspath(path), size)
    with open(path, "r+b") as f:
        f.truncate(size)


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
    if is_url(path):
        with _url_atomic_directory(os.fspath(path), overwrite) as tmp:
            yield tmp
        return
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


@contextlib.contextmanager
def _url_atomic_directory(url: str, overwrite: bool) -> Iterator[str]:
    """A local temporary directory uploaded to `url` (after removing the old tree) when the block exits without
    error. Not atomic: see the module docstring."""
    if exists(url) and not overwrite:
        raise FileExistsError(f"{url} already exists; pass overwrite=True (or choose another output directory)")
    with tempfile.TemporaryDirectory(prefix="lasa-upload-") as tmp:
        yield tmp
        with named_write_errors(url):
            rmtree(url)
            copy_tree(tmp, url)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open_file(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- JSON readers
def require_file(path: str | os.PathLike, what: str = "file"):
    """`path` as a `pathlib.Path` (local) or `epath.Path` (URL); FileNotFoundError naming `what` if no file."""
    if is_url(path):
        if not isfile(path):
            raise FileNotFoundError(f"{os.fspath(path)}: {what} not found")
        return as_path(path)
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed content of a JSON file (UTF-8, optional BOM). `what` names the file's role in the
    FileNotFoundError."""
    path = require_file(path, what)
    with open_file(path, encoding="utf-8-sig") as f:
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


def _jsonl_records(path) -> Iterator[tuple[int, Any]]:
    with open_file(path, encoding="utf-8-sig") as f:
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


def load_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """{name: numpy array} of a safetensors file, local or at a URL."""
    from safetensors.numpy import load, load_file

    return load(read_bytes(path)) if is_url(path) else load_file(os.fspath(path))
