"""ASR / over-refusal arithmetic on canned verdicts (lasa_jax.evaluate.metrics) and the Wilson intervals behind
them (lasa_jax.statistics)."""
import math

import pytest

from lasa_jax.evaluate.metrics import asr_summary, refusal_summary
from lasa_jax.statistics import Rate, wilson_interval


def test_wilson_interval_hand_computed():
    # k=5, n=20, z=1.96: p=0.25, z^2/n=0.19208; centre=(0.25+0.09604)/1.19208=0.290283;
    # half=(1.96/1.19208)*sqrt(0.25*0.75/20 + 3.8416/1600)=1.644185*0.108518=0.178424
    lo, hi = wilson_interval(5, 20)
    assert lo == pytest.approx(0.111859, abs=2e-6) and hi == pytest.approx(0.468707, abs=2e-6)
    lo0, hi0 = wilson_interval(0, 10)
    assert lo0 == 0.0 and hi0 == pytest.approx(3.8416 / 13.8416, rel=1e-9)  # k=0: upper = z^2/(n+z^2)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(1 - hi0, rel=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo90, hi90 = wilson_interval(5, 20, z=1.6448536)
    assert lo < lo90 < 0.25 < hi90 < hi
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)
    assert math.isnan(Rate(0, 0).rate) and Rate(0, 0).to_json()["rate"] is None


def test_asr_arithmetic(verdict_rows):
    rows = verdict_rows("zh", ["safe"] * 4) + verdict_rows("en", ["unsafe", "unsafe", "unsafe", "safe", "invalid"])
    summary = asr_summary(rows, language_order=("en", "zh"))
    assert list(summary.per_language) == ["en", "zh"]
    en, zh = summary.per_language["en"], summary.per_language["zh"]
    assert (en.main.count, en.main.total, en.main.rate) == (3, 5, 0.6) and en.invalid.rate == 0.2
    assert zh.main.rate == 0.0 and zh.invalid.rate == 0.0
    assert summary.macro_asr == pytest.approx(0.3)
    assert (summary.pooled.main.count, summary.pooled.main.total) == (3, 9)
    assert summary.per_language["en"].main.interval == wilson_interval(3, 5)
    with pytest.raises(ValueError, match="harmful prompts only"):
        asr_summary(rows + [{"id": "b", "language": "en", "verdict": "safe", "expected": "benign"}])
    with pytest.raises(ValueError, match="field 'verdict'"):
        asr_summary(verdict_rows("en", ["refusal"]))


def test_refusal_arithmetic():
    rows = ([{"id": i, "source": "xstest", "expected": "benign", "verdict": v}
             for i, v in enumerate(["refusal", "compliance", "compliance", "invalid"])]
            + [{"id": 9, "source": "xstest", "expected": "harmful", "verdict": "refusal"}])
    summary = refusal_summary(rows)
    assert list(summary) == [("xstest", "benign"), ("xstest", "harmful")]
    assert summary[("xstest", "benign")].main.rate == 0.25 and summary[("xstest", "benign")].invalid.rate == 0.25
    assert summary[("xstest", "harmful")].main.rate == 1.0
    with pytest.raises(ValueError, match="refusal-task judge"):
        refusal_summary([{"id": 0, "source": "oktest", "expected": "benign", "verdict": "safe"}])
