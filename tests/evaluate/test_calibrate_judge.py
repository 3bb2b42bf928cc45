"""The calibrate_judge command (lasa_jax.evaluate.calibrate_judge) and the calibration an evaluation finds for its
safety judge (lasa_jax.evaluate.calibration.find_calibration)."""
import json

import pytest
from ml_collections import config_dict

from lasa_jax.evaluate.calibrate_judge import run_calibration
from lasa_jax.evaluate.calibration import CALIBRATION_JSON, CALIBRATION_MD, find_calibration
from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.infra.errors import InputError


def test_calibration_command_and_found_calibrations(tmp_path, labelled_root):
    root = labelled_root
    config = config_dict.ConfigDict(dict(data_root="", labelled_dir=str(root), split="odd", progress=False,
                                         judge=dict(safety="heuristic", model_path="", batch_size=8,
                                                    max_new_tokens=32, template_kwargs="")))
    result = run_calibration(config, str(tmp_path / "cal"))
    on_disk = json.loads((tmp_path / "cal" / CALIBRATION_JSON).read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(result)) and (tmp_path / "cal" / CALIBRATION_MD).is_file()
    assert on_disk["judge"] == "refusal-heuristic(approximate)" and on_disk["split"] == "odd"
    # the heuristic without an explicit file: measured now on the odd half of the labelled data
    summary = find_calibration(RefusalHeuristicJudge(), labelled=str(root), out_dir=str(tmp_path / "ev"))
    assert summary["goal"] == on_disk["goal"] and (tmp_path / "ev" / "judge_calibration" / CALIBRATION_JSON).is_file()
    assert find_calibration(RefusalHeuristicJudge(), labelled=str(tmp_path / "missing")) is None
    with pytest.raises(InputError, match="calibration of judge"):
        find_calibration(RefusalHeuristicJudge(task="refusal"), str(tmp_path / "cal" / CALIBRATION_JSON))
