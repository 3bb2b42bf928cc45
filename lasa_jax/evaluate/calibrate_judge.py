"""The calibrate_judge command (`python -m lasa_jax.scripts.calibrate_judge`, configs/calibrate_judge.py): build the
configured safety judge, score it on one split of the WildGuard-labelled responses, write calibration.json and
calibration.md (`lasa_jax.evaluate.calibration`)."""
from __future__ import annotations

import logging
from typing import Any

from lasa_jax.evaluate.calibration import calibrate, load_labelled_responses, write_calibration
from lasa_jax.evaluate.judge_factory import JudgeModels, build_judge
from lasa_jax.evaluate.settings import CalibrationSettings, calibration_settings
from lasa_jax.evaluate.verdicts import SAFETY_TASK
from lasa_jax.infra.distributed import is_writer
from lasa_jax.stage import as_settings

log = logging.getLogger(__name__)


def run_calibration(config_or_settings, workdir: str, mesh=None) -> dict[str, Any]:
    """Judge the labelled responses of the configured split and write calibration.json + calibration.md into
    `workdir` (process 0); returns the calibration dict. Accepts the config or its `CalibrationSettings`."""
    s = as_settings(config_or_settings, CalibrationSettings, calibration_settings)
    j = s.judge
    judge = build_judge(j.safety, SAFETY_TASK, models=JudgeModels(mesh), model=j.model, batch_size=j.batch_size,
                        max_new_tokens=j.max_new_tokens, template_kwargs=j.template_kwargs, progress=s.progress,
                        labelled=j.labelled)
    result = calibrate(judge, load_labelled_responses(j.labelled, split=s.split), split=s.split, data_root=j.labelled)
    if is_writer():
        json_path, md_path = write_calibration(workdir, result)
        log.info("calibration of %s on the %s split: %s, %s (goal met: %s)", judge.name, s.split, json_path,
                 md_path, result["goal"]["met"])
    return result
