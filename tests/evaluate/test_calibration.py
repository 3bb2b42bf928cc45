"""Judge calibration against WildGuard labels (lasa_jax.evaluate.calibration): numbers against sklearn and hand
counts, the labelled splits, calibration.json / calibration.md reloaded."""
import json

import numpy as np
import pytest

from lasa_jax.evaluate.calibration import (
    calibrate,
    cohens_kappa,
    group_metrics,
    has_labelled_data,
    load_labelled_responses,
    write_calibration,
)
from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.infra.errors import InputError


def test_kappa_and_group_metrics_match_sklearn_and_hand_counts():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a, b = rng.random(50) < 0.4, rng.random(50) < 0.5
    assert cohens_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a, b))
    assert cohens_kappa([True] * 4, [True] * 4) is None
    m = group_metrics(["unsafe", "unsafe", "safe", "invalid", "safe"], [True, False, True, True, False],
                      [None, None, None, "repetition", None])
    assert m["confusion"] == {"tp": 1, "fp": 1, "fn": 2, "tn": 1}
    assert (m["asr_judge"], m["asr_reference"], m["agreement"]) == (0.4, 0.6, 0.4)
    assert m["delta_points"] == pytest.approx(-20.0) and m["invalid_reasons"] == {"repetition": 1}


def test_calibration_of_the_heuristic(tmp_path, labelled_root):
    root = labelled_root
    odd = load_labelled_responses(root, "odd", drop_indices=(1,))
    assert {r.index % 2 for r in odd} == {1} and 1 not in {r.index for r in odd}
    assert len(load_labelled_responses(root, "all", drop_indices=())) == 72
    with pytest.raises(InputError, match="split"):
        load_labelled_responses(root, "third")
    result = calibrate(RefusalHeuristicJudge(), load_labelled_responses(root, "odd"), split="odd",
                       data_root=str(root))
    # the heuristic calls every harmless answer unsafe: en files 12 rows each, ASR ref 4/12, judge 8/12
    en = result["files"]["M/en/baseline"]
    assert en["n"] == 12 and en["asr_reference"] == pytest.approx(4 / 12) and en["asr_judge"] == pytest.approx(8 / 12)
    assert en["confusion"] == {"tp": 4, "fp": 4, "fn": 0, "tn": 4} and not result["goal"]["met"]
    json_path, md_path = write_calibration(tmp_path / "out", result)
    assert json.loads(open(json_path, encoding="utf-8").read()) == json.loads(json.dumps(result))
    markdown = open(md_path, encoding="utf-8").read()
    assert "| M/en/baseline | 12 | 66.7% | 33.3% | +33.3 | 66.7% |" in markdown and "**not met**" in markdown


def test_has_labelled_data(tmp_path, labelled_root):
    assert has_labelled_data(str(labelled_root))
    assert not has_labelled_data("") and not has_labelled_data(str(tmp_path / "missing"))
    assert not has_labelled_data(str(tmp_path))  # a folder without labelled files
