"""The evaluate stage's settings: the one reader and validator of an evaluate config (configs/evaluate.py) and of a
calibrate_judge config (configs/calibrate_judge.py); field meanings: those files.

`read_settings(config) -> EvaluateSettings` checks every value before any work and names a bad field as
`config_field("judge.safety")` spells it; `calibration_settings(config) -> CalibrationSettings` does the same for
the calibrate_judge command. The model fields (dtype, compute_dtype, attention_backend of the base config) are read
through `lasa_jax.models.loading.read_model_settings` only where a model will be loaded: for an LLM judge kind, and
for the utility metric when it names model paths. Everything below the stage takes these frozen dataclasses or plain
arguments, never the config.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES, normalize_language
from lasa_jax.evaluate.calibration import LABELLED_SUBDIR, SPLITS
from lasa_jax.evaluate.judge_factory import JUDGE_KINDS, MODEL_JUDGE_KINDS, REFUSAL_JUDGE_KINDS
from lasa_jax.evaluate.utility_scoring import NORMALIZATIONS
from lasa_jax.infra.base_config import comma_list, template_kwargs
from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.models.loading import ModelSettings, read_model_settings

# the systems with their own config field <system>_generations, in report column order
NAMED_SYSTEMS = ("baseline", "prefix_only", "lasa")
DEFAULT_CACHE_BATCH_SIZE = 64


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """The judges (the `judge` section): safety / refusal: judge kinds (`judge_factory.build_judge`; refusal
    "none" = no refusal judge); model / refusal_model: the judge model of an LLM kind (None for the other kinds);
    labelled: the WildGuard-labelled response folder ("" = none); calibration: an explicit calibration.json of the
    safety judge ("" = find it); cache_dir: where the verdict caches go ("" = the workdir)."""

    safety: str
    refusal: str
    model: ModelSettings | None
    refusal_model: ModelSettings | None
    batch_size: int
    max_new_tokens: int
    template_kwargs: Mapping[str, Any]
    cache_dir: str
    cache_batch_size: int
    calibration: str
    labelled: str


@dataclasses.dataclass(frozen=True)
class UtilitySettings:
    """What `utility.evaluate_utility` measures (the metric fields of the `utility` section)."""

    languages: tuple[str, ...] = MULTIJAIL_LANGUAGES
    max_sentences: int | None = 50      # per language and metric; None = the whole split
    split: str = "test"                 # SIB-200 split classified (test or dev)
    nll_split: str = "dev"              # FLORES split for per-token NLL
    k_shot: int = 0
    normalization: str = "none"
    batch_size: int | None = None       # prompts per batch (None: `default_batch_size`)
    seed: int = 0
    z: float = 1.96

    def __post_init__(self):
        if self.split not in ("test", "dev") or self.nll_split not in ("test", "dev"):
            raise InputError(f"{config_field('utility.split')} and {config_field('utility.nll_split')} must be "
                             f"'test' or 'dev' (never train), got {self.split!r} and {self.nll_split!r}")
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"{config_field('utility.normalization')} must be one of {NORMALIZATIONS}, got "
                             f"{self.normalization!r}")
        if self.k_shot < 0 or (self.max_sentences is not None and self.max_sentences < 1):
            raise InputError(f"{config_field('utility.k_shot')} must be >= 0 and "
                             f"{config_field('utility.max_sentences')} >= 1 (0 = all), got {self.k_shot} and "
                             f"{self.max_sentences}")


@dataclasses.dataclass(frozen=True)
class UtilityRunSettings:
    """The `utility` section: whether the utility metric runs (`utility.run_utility`) and on what. models: system ->
    its model (only the systems with a path, in config order); tokenizer_path: the one tokenizer every system is
    scored with (`utility.tokenizer_path`, else the baseline's model, else the first model; "" without models)."""

    enabled: bool
    data_root: str
    models: Mapping[str, ModelSettings]
    tokenizer_path: str
    metric: UtilitySettings


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """The evaluate stage's settings. systems: name -> generation JSONL path, in report column order; utility: None
    when the config has no `utility` section (configs written before it existed)."""

    systems: Mapping[str, str]
    judge: JudgeSettings
    asr_sources: tuple[str, ...]
    refusal_sources: tuple[str, ...]
    paired: bool
    z: float
    progress: bool
    utility: UtilityRunSettings | None


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
    """The calibrate_judge command's settings: the safety judge scored (refusal "none", no verdict cache) and the
    split of the labelled responses it is scored on ("odd" | "even" | "all")."""

    judge: JudgeSettings
    split: str
    progress: bool


def evaluated_systems(config) -> dict[str, str]:
    """System name -> generation JSONL path, in report column order: the non-empty `<system>_generations` fields
    (baseline, prefix_only, lasa; a config without prefix_only_generations works), then the comma-separated
    `name=path` pairs of `generations`. InputError for a malformed pair, a repeated name or no system."""
    systems = {name: config.get(f"{name}_generations", "") for name in NAMED_SYSTEMS}
    systems = {name: path for name, path in systems.items() if path}
    for pair in comma_list(config.get("generations", "")):
        name, sep, path = (part.strip() for part in pair.partition("="))
        if not sep or not name or not path:
            raise InputError(f"{config_field('generations')}: expected comma-separated name=path pairs, got {pair!r}")
        if name in systems:
            raise InputError(f"{config_field('generations')}: system {name!r} is given twice")
        systems[name] = path
    if not systems:
        raise InputError(f"give {config_field('baseline_generations')}, {config_field('prefix_only_generations')}, "
                         f"{config_field('lasa_generations')} and/or {config_field('generations')}=name=path,... "
                         "(generation JSONL files written by lasa_jax.scripts.generate)")
    return systems


def labelled_dir(data_root: str, explicit: str = "") -> str:
    """The WildGuard-labelled response folder: `explicit`, else `<data_root>/polyrefuse_completions` ("" if none)."""
    return explicit or (os.path.join(data_root, LABELLED_SUBDIR) if data_root else "")


def _positive(value, field: str) -> int:
    if int(value) < 1:
        raise InputError(f"{config_field(field)} must be >= 1, got {value!r}")
    return int(value)


def _judge_model(config, kind: str, path: str, path_fields: str) -> ModelSettings | None:
    """The judge model of an LLM judge kind (the base config's dtypes, `path`), None for the other kinds."""
    if kind not in MODEL_JUDGE_KINDS:
        return None
    if not path:
        raise InputError(f"judge kind {kind!r} needs {path_fields} (a local Hugging Face model directory)")
    return dataclasses.replace(read_model_settings(config), path=path)


def judge_settings(config, labelled: str) -> JudgeSettings:
    """The `judge` section of an evaluate or calibrate_judge config (the latter has fewer fields: the others take
    their evaluate defaults); `labelled`: the labelled response folder, resolved by the caller."""
    j = config.judge
    safety, refusal = str(j.safety), str(j.get("refusal", "none"))
    if safety not in JUDGE_KINDS or refusal not in REFUSAL_JUDGE_KINDS:
        raise InputError(f"{config_field('judge.safety')} must be one of {JUDGE_KINDS} and "
                         f"{config_field('judge.refusal')} one of {REFUSAL_JUDGE_KINDS}; got {safety!r} and "
                         f"{j.get('refusal')!r}")
    model_path = str(j.get("model_path", "") or "")
    refusal_model_path = str(j.get("refusal_model_path", "") or "") or model_path
    return JudgeSettings(
        safety=safety, refusal=refusal,
        model=_judge_model(config, safety, model_path, config_field("judge.model_path")),
        refusal_model=_judge_model(config, refusal, refusal_model_path,
                                   f"{config_field('judge.refusal_model_path')} or {config_field('judge.model_path')}"),
        batch_size=_positive(j.batch_size, "judge.batch_size"),
        max_new_tokens=_positive(j.max_new_tokens, "judge.max_new_tokens"), template_kwargs=template_kwargs(j),
        cache_dir=str(j.get("cache_dir", "") or ""),
        cache_batch_size=_positive(j.get("cache_batch_size", DEFAULT_CACHE_BATCH_SIZE), "judge.cache_batch_size"),
        calibration=str(j.get("calibration", "") or ""), labelled=labelled)


def utility_run_settings(config) -> UtilityRunSettings:
    """The `utility` section of an evaluate config (max_sentences and batch_size 0 = all / default); the utility
    models load with the base config's dtypes."""
    u = config.utility
    paths = {str(name): str(path) for name, path in u.models.items() if path}
    base = read_model_settings(config) if paths else None
    models = {name: dataclasses.replace(base, path=path) for name, path in paths.items()}
    metric = UtilitySettings(languages=tuple(normalize_language(lang) for lang in comma_list(u.languages)),
                             max_sentences=int(u.max_sentences) or None, split=str(u.split),
                             nll_split=str(u.nll_split), k_shot=int(u.k_shot), normalization=str(u.normalization),
                             batch_size=int(u.batch_size) or None, seed=int(u.seed))
    tokenizer_path = str(u.tokenizer_path or "") or paths.get("baseline") or next(iter(paths.values()), "")
    return UtilityRunSettings(enabled=bool(u.enabled), data_root=str(u.data_root or ""), models=models,
                              tokenizer_path=tokenizer_path, metric=metric)


def read_settings(config) -> EvaluateSettings:
    """Read and validate an evaluate config section."""
    systems = evaluated_systems(config)
    z = float(config.z)
    if z <= 0:
        raise InputError(f"{config_field('z')} must be > 0 (a normal quantile, 1.96 = 95%), got {config.z!r}")
    judge = judge_settings(config, labelled_dir(config.get("data_root", ""), config.judge.get("labelled_dir", "")))
    return EvaluateSettings(systems=systems, judge=judge,
                            asr_sources=tuple(comma_list(config.asr_sources)),
                            refusal_sources=tuple(comma_list(config.refusal_sources)), paired=bool(config.paired),
                            z=z, progress=bool(config.progress),
                            utility=utility_run_settings(config) if "utility" in config else None)


def calibration_settings(config) -> CalibrationSettings:
    """Read and validate a calibrate_judge config (the labelled folder: `labelled_dir`, else
    `<data_root>/polyrefuse_completions`)."""
    split = str(config.split)
    if split not in SPLITS:
        raise InputError(f"{config_field('split')} must be one of {SPLITS}, got {split!r}")
    judge = judge_settings(config, labelled_dir(config.data_root, config.labelled_dir))
    return CalibrationSettings(judge=judge, split=split, progress=bool(config.progress))
