"""The one contract every pipeline stage follows (locate, ssi, kto, generate, evaluate).

A stage is one module (`lasa_jax.locate.stage`, `lasa_jax.ssi.stage`, `lasa_jax.kto.stage`,
`lasa_jax.generate.stage`, `lasa_jax.evaluate.stage`) that exposes:

    NAME: str                                       the stage's name ("locate", "ssi", "kto", "generate", "evaluate")
    settings(config) -> <Settings dataclass>        reads and validates its config section; the only code of the
                                                    stage that knows config field names (errors name the field as
                                                    `config_field("kto.train.batch_size")` spells it)
    run(config | settings, workdir, mesh=None) -> StageResult
    report_lines(stage_dir) -> list[str]            markdown lines for <workdir>/report.md (empty when not run)

`run` accepts the config section or its already-read settings (`as_settings` does the dispatch) and writes all its
outputs under `workdir`. The pipeline (`lasa_jax.pipeline`) loops over a table of (pipeline stage, module, mode)
rows and needs no special case: a stage that returns `completed=False` (e.g. KTO preempted) stops the pipeline
and is run again (continuing) by the next invocation.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from lasa_jax.infra import storage

S = TypeVar("S")
# exit status of a script whose stage stopped with status "preempted" (SIGTERM after a checkpoint; EX_TEMPFAIL):
# rerun the same command to continue
EXIT_PREEMPTED = 75


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage's `run` returns.

    stage: the stage name; status: "completed" or why it stopped early ("preempted", "stopped", ...);
    outputs: named artifact paths it wrote (e.g. {"bottleneck": ".../bottleneck.json"});
    summary: small JSON-serialisable headline values (e.g. {"best_layer": 14}); details: the stage's own
    richer result object (e.g. Locate's `BottleneckResult`, KTO's `TrainResult`) for Python callers.
    """
    stage: str
    status: str = "completed"
    outputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    summary: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    details: Any = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


class Stage(Protocol):
    NAME: str

    def settings(self, config) -> Any: ...

    def run(self, config, workdir: str, mesh=None) -> StageResult: ...

    def report_lines(self, stage_dir: str) -> list[str]: ...


def as_settings(config_or_settings: Any, settings_type: type[S], read: Callable[[Any], S]) -> S:
    """`config_or_settings` itself when it already is a `settings_type`, else `read(config_or_settings)`."""
    if isinstance(config_or_settings, settings_type):
        return config_or_settings
    return read(config_or_settings)


def report_link(stage_dir: str, name: str, text: str | None = None) -> str:
    """A markdown link to `<stage_dir>/<name>` for the pipeline report, which sits in stage_dir's parent (the
    workdir): "[ssi/ssi/config.json](ssi/ssi/config.json)", or "<rel> (missing)" when the file does not exist."""
    import os

    rel = os.path.join(os.path.basename(os.path.normpath(stage_dir)), name)
    return f"[{text or rel}]({rel})" if storage.exists(os.path.join(stage_dir, name)) else f"{text or rel} (missing)"
