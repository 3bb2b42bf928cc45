"""report.md (lasa_jax.evaluate.report_markdown): the safety judge's calibration per language, or "uncalibrated"."""
import pytest

from lasa_jax.evaluate.calibration import calibrate, calibration_summary, load_labelled_responses
from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.evaluate.report import build_report
from lasa_jax.evaluate.report_markdown import render_markdown


def test_report_states_judge_calibration(labelled_root):
    root = labelled_root
    judge = RefusalHeuristicJudge()
    summary = calibration_summary(calibrate(judge, load_labelled_responses(root, "odd")), "cal.json")
    rows = [{"id": f"{lang}{i}", "language": lang, "verdict": v, "judge": judge.name}
            for lang in ("en", "th") for i, v in enumerate(["unsafe", "safe", "invalid"])]
    report = build_report({"baseline": rows}, safety_calibration=summary)
    markdown = render_markdown(report)
    delta = summary["languages"]["en"]["delta_points"]
    assert f"| en | {delta:+.1f} |" in markdown and "| th | uncalibrated |" in markdown
    assert "| en | 33.3% [" in markdown and "(n=3); invalid 33.3% |" in markdown
    with pytest.raises(ValueError, match="safety_calibration is for judge"):
        build_report({"baseline": rows}, safety_calibration={**summary, "judge": "other"})
