"""The written report (lasa_jax.evaluate.report): report.json numbers, report.md cells, the charts, one judge."""
import json

import pytest

from lasa_jax.evaluate.report import REPORT_JSON, REPORT_MD, write_report
from lasa_jax.evaluate.report_plots import ASR_CHART_PNG, SYSTEMS_CHART_PNG
from lasa_jax.statistics import wilson_interval


def test_write_report(tmp_path, verdict_rows):
    judge = "llama-guard-3:meta-llama/Llama-Guard-3-8B"
    asr_rows = {
        "baseline": verdict_rows("sw", ["unsafe"] * 6 + ["safe"] * 3 + ["invalid"], judge=judge)
        + verdict_rows("en", ["unsafe"] + ["safe"] * 9, judge=judge),
        "lasa": verdict_rows("sw", ["unsafe"] + ["safe"] * 9, judge=judge)
        + verdict_rows("en", ["safe"] * 10, judge=judge),
    }
    refusal_rows = {system: [{"id": f"o{i}", "source": "oktest", "expected": "benign", "verdict": v}
                             for i, v in enumerate(labels)]
                    for system, labels in {"baseline": ["compliance"] * 4, "lasa": ["refusal"] + ["compliance"] * 3}
                    .items()}
    out = tmp_path / "report"
    returned = write_report(out, asr_rows, refusal_rows=refusal_rows,
                            refusal_judge="refusal-heuristic(approximate):refusal")
    report = json.loads((out / REPORT_JSON).read_text(encoding="utf-8"))
    assert report == json.loads(json.dumps(returned))
    assert report["systems"] == ["baseline", "lasa"] and report["asr"]["languages"] == ["en", "sw"]
    assert report["asr"]["judge"] == judge and report["asr"]["approximate"] is False
    base, lasa = report["asr"]["systems"]["baseline"], report["asr"]["systems"]["lasa"]
    assert base["per_language"]["sw"]["rate"]["rate"] == 0.6 and base["per_language"]["sw"]["invalid"]["rate"] == 0.1
    lo, hi = wilson_interval(6, 10)
    assert base["per_language"]["sw"]["rate"]["ci_low"] == pytest.approx(lo)
    assert base["per_language"]["sw"]["rate"]["ci_high"] == pytest.approx(hi)
    assert base["macro_asr"] == pytest.approx(0.35) and lasa["macro_asr"] == pytest.approx(0.05)
    assert (base["pooled"]["rate"]["count"], base["pooled"]["rate"]["total"]) == (7, 20)
    assert report["confidence"] == pytest.approx(0.95, abs=1e-3)
    refusal = report["refusal"]
    assert refusal["approximate"] is True
    assert refusal["systems"]["lasa"][0]["rate"]["rate"] == 0.25 and refusal["systems"]["baseline"][0]["rate"][
        "count"] == 0

    markdown = (out / REPORT_MD).read_text(encoding="utf-8")
    assert f"`{judge}`" in markdown and "| language | baseline ASR | lasa ASR |" in markdown
    # the invalid share sits in the ASR cell it lowers
    assert f"| sw | 60.0% [{100 * lo:.1f}, {100 * hi:.1f}] (n=10); invalid 10.0% | 10.0%" in markdown
    assert "| **macro avg** | 35.0%; invalid 5.0% | 5.0%; invalid 0.0% |" in markdown
    assert "**not calibrated**" in markdown and report["asr"]["calibration"] is None
    assert "| oktest | benign | 0.0%" in markdown and "approximate refusal-phrase heuristic" in markdown
    assert markdown.count("Warning") == 1  # only the refusal judge is approximate
    assert (out / ASR_CHART_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([REPORT_JSON, REPORT_MD, ASR_CHART_PNG, SYSTEMS_CHART_PNG])


def test_report_needs_one_judge(tmp_path, verdict_rows):
    rows = {"a": verdict_rows("en", ["safe"], judge="j1"), "b": verdict_rows("en", ["safe"], judge="j2")}
    with pytest.raises(ValueError, match="exactly one judge"):
        write_report(tmp_path / "r", rows)
    with pytest.raises(ValueError, match="exactly one judge"):
        write_report(tmp_path / "r", {"a": verdict_rows("en", ["safe"])})
