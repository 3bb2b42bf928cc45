"""The models of a KTO run: where the base model, the initial policy and the reference come from, and loading them.

All are Hugging Face directories of one architecture and tokenizer. The base model (`model_path`) gives the
tokenizer and the trunk SSI labels are scored on; the policy starts from `init_from`, else from the base model; the
frozen reference is `reference.path`, by default the initial policy (TRL's default, so that every reward starts at
0). Frozen models load in the reference dtype and compute in the policy's compute dtype.
"""
from __future__ import annotations

import dataclasses

from lasa_jax.infra.errors import InputError, config_field
from lasa_jax.kto.settings import KTOSettings
from lasa_jax.models.config import ModelConfig
from lasa_jax.models.decoder import Decoder
from lasa_jax.models.hf import resolve_model_path
from lasa_jax.models.loading import load_model


@dataclasses.dataclass(frozen=True)
class ModelDirs:
    """Resolved local HF directories of a run: base (`model_path`: tokenizer, SSI trunk), policy_init (`init_from`
    or base) and reference (`reference.path` or policy_init)."""

    base: str
    policy_init: str
    reference: str
    reference_flag: str  # the setting the reference directory comes from, for error messages

    @classmethod
    def from_settings(cls, settings: KTOSettings) -> ModelDirs:
        if not settings.model.path:
            raise InputError(f"{config_field('model_path')} is required (the base model: a local Hugging Face "
                             "directory)")
        base = resolve_field("model_path", settings.model.path)
        policy_init = resolve_field("init_from", settings.init_from) if settings.init_from else base
        if settings.reference.path:
            return cls(base, policy_init, resolve_field("reference.path", settings.reference.path), "reference.path")
        return cls(base, policy_init, policy_init, "init_from" if settings.init_from else "model_path")


def resolve_field(flag: str, value: str) -> str:
    """`resolve_model_path(value)` with errors naming the config field `flag`."""
    try:
        return resolve_model_path(value)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{config_field(flag)}: {e}") from None


def check_architecture(model_config: ModelConfig, policy_config: ModelConfig, flag: str, directory: str) -> None:
    """InputError unless the model loaded from config field `flag` has the architecture of model_path."""
    if model_config.to_hf_dict() != policy_config.to_hf_dict():
        raise InputError(f"{config_field(flag)}={directory}: architecture differs from {config_field('model_path')} "
                         "(policy, reference and base model must share one architecture and tokenizer)")


def policy_model_config(settings: KTOSettings, model_dirs: ModelDirs) -> ModelConfig:
    """The policy's `ModelConfig` (the base model's architecture with the run's dtypes, layer scan and remat)."""
    return ModelConfig.from_pretrained(model_dirs.base, param_dtype=settings.model.dtype,
                                       compute_dtype=settings.compute_dtype, scan_layers=settings.scan_layers,
                                       remat_policy=settings.remat_policy)


def load_policy(settings: KTOSettings, model_dirs: ModelDirs, config: ModelConfig, mesh) -> Decoder:
    """The initial policy (`init_from` or model_path) on `mesh`, checked against the policy's architecture."""
    policy = load_model(settings.model, mesh, path=model_dirs.policy_init, scan_layers=settings.scan_layers,
                        remat_policy=settings.remat_policy)
    check_architecture(policy.config, config, "init_from", model_dirs.policy_init)
    return policy


class FrozenModels:
    """Frozen models of a run (SSI trunk, reference) by directory, each loaded at most once (reference dtype, the
    policy's compute dtype), checked against the policy's architecture; `drop` / `clear` free them."""

    def __init__(self, settings: KTOSettings, policy_config: ModelConfig, mesh):
        self.settings, self.policy_config, self.mesh = settings, policy_config, mesh
        self.models: dict[str, Decoder] = {}

    def get(self, directory: str, field: str) -> Decoder:
        """The model of `directory` (loaded on first use); `field` names the setting it comes from in errors."""
        if directory not in self.models:
            s = self.settings
            frozen = dataclasses.replace(s.model, dtype=s.reference_dtype, compute_dtype=s.compute_dtype)
            model = load_model(frozen, self.mesh, path=directory, scan_layers=s.scan_layers)
            check_architecture(model.config, self.policy_config, field, directory)
            self.models[directory] = model
        return self.models[directory]

    def drop(self, directory: str) -> None:
        self.models.pop(directory, None)

    def clear(self) -> None:
        self.models.clear()
