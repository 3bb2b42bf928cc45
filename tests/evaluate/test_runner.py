"""Judging generation records of several systems (lasa_jax.evaluate.runner): which records feed which metric, the
report numbers, pairing, the SSI flag rates and the headline lines, with the refusal-phrase heuristic as judge."""
import json

import pytest

from lasa_jax.data.eval_sets import EvalPrompt
from lasa_jax.decoding.answers import RECORD_FIELDS
from lasa_jax.evaluate.heuristics import RefusalHeuristicJudge
from lasa_jax.evaluate.report import REPORT_JSON, REPORT_MD, write_report
from lasa_jax.evaluate.report_markdown import headline_lines
from lasa_jax.evaluate.report_plots import ASR_CHART_PNG, SYSTEMS_CHART_PNG
from lasa_jax.evaluate.runner import evaluate_generations, judge_responses


def test_evaluate_generations_report_numbers(tmp_path, two_systems):
    assert all(list(r) == list(RECORD_FIELDS) for r in two_systems["baseline"] + two_systems["lasa"])
    evaluation = evaluate_generations(two_systems, tmp_path,
                                      safety_judge=RefusalHeuristicJudge(),
                                      refusal_judge=RefusalHeuristicJudge(task="refusal"))
    for name in (REPORT_JSON, REPORT_MD, ASR_CHART_PNG, "judged_baseline.jsonl", "judged_lasa.jsonl"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / REPORT_JSON).read_text(encoding="utf-8"))
    assert report == evaluation.report
    assert evaluation.counts["dropped_unpaired"] == {"baseline": 1, "lasa": 0}  # m:4:en only in baseline
    assert evaluation.counts["skipped"] == {"baseline": 1, "lasa": 1}  # other_set
    asr = report["asr"]["systems"]
    assert report["asr"]["approximate"] and report["asr"]["languages"] == ["en", "zh"]
    en, zh = asr["baseline"]["per_language"]["en"], asr["baseline"]["per_language"]["zh"]
    assert (en["rate"]["count"], en["rate"]["total"], zh["rate"]["count"], zh["rate"]["total"]) == (2, 3, 1, 2)
    en, zh = asr["lasa"]["per_language"]["en"], asr["lasa"]["per_language"]["zh"]
    assert (en["rate"]["count"], en["rate"]["total"]) == (1, 3)
    assert (zh["rate"]["count"], zh["invalid"]["count"], zh["rate"]["total"]) == (0, 1, 2)  # empty -> invalid
    assert asr["lasa"]["macro_asr"] == pytest.approx((1 / 3 + 0) / 2)
    refusal = {s: {(g["source"], g["expected"]): g["rate"] for g in groups}
               for s, groups in report["refusal"]["systems"].items()}
    assert refusal["baseline"][("xstest", "benign")]["count"] == 0
    assert refusal["lasa"][("xstest", "benign")]["count"] == 1 and refusal["lasa"][("xstest", "benign")]["total"] == 2
    judged = [json.loads(line) for line in (tmp_path / "judged_lasa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(judged) == 7 and {r["verdict"] for r in judged} <= {"safe", "unsafe", "invalid", "refusal",
                                                                     "compliance"}
    assert judged[0]["prefix_used"] is True and judged[0]["ssi_score"] == 0.5
    markdown = (tmp_path / REPORT_MD).read_text(encoding="utf-8")
    assert "baseline ASR" in markdown and "lasa ASR" in markdown and "approximate" in markdown


def test_records_can_feed_both_metrics(tmp_path, two_systems):
    evaluation = evaluate_generations({"lasa": two_systems["lasa"]}, tmp_path, safety_judge=RefusalHeuristicJudge(),
                                      refusal_judge=RefusalHeuristicJudge(task="refusal"),
                                      asr_sources=["multijail"], refusal_sources=["multijail", "xstest"])
    assert evaluation.counts["asr_rows"] == {"lasa": 5} and evaluation.counts["refusal_rows"] == {"lasa": 7}
    assert evaluation.counts["skipped"] == {"lasa": 1}
    refusal = {(g["source"], g["expected"]): g["rate"] for g in evaluation.report["refusal"]["systems"]["lasa"]}
    assert refusal[("multijail", "harmful")]["count"] == 3  # desired refusals of the harmful prompts


def test_evaluate_generations_errors(tmp_path, two_systems):
    with pytest.raises(ValueError, match="nothing to compute ASR on"):
        evaluate_generations({"baseline": two_systems["baseline"]}, tmp_path, safety_judge=RefusalHeuristicJudge(),
                             asr_sources=["nope"])
    with pytest.raises(ValueError, match="safety_judge must have task 'safety'"):
        evaluate_generations({"baseline": two_systems["baseline"]}, tmp_path,
                             safety_judge=RefusalHeuristicJudge(task="refusal"))


def test_three_systems_side_by_side(tmp_path, three_systems):
    evaluation = evaluate_generations(three_systems, tmp_path, safety_judge=RefusalHeuristicJudge(),
                                      refusal_judge=RefusalHeuristicJudge(task="refusal"), asr_sources=["demo"],
                                      refusal_sources=["demo"])
    report = json.loads((tmp_path / REPORT_JSON).read_text(encoding="utf-8"))
    comp = report["comparison"]
    assert comp["systems"] == ["baseline", "prefix_only", "lasa"] and comp["languages"] == ["en", "zh"]

    def rates(metric, system):
        values = comp["metrics"][metric]["systems"][system]
        return ({lang: (r["count"], r["total"]) for lang, r in values["per_language"].items()},
                values["average"], (values["pooled"]["count"], values["pooled"]["total"]))

    # ASR = unsafe / all (the empty prefix_only answer in zh is invalid, still in the denominator)
    assert rates("asr", "baseline") == ({"en": (3, 4), "zh": (2, 4)}, pytest.approx(0.625), (5, 8))
    assert rates("asr", "prefix_only") == ({"en": (2, 4), "zh": (1, 4)}, pytest.approx(0.375), (3, 8))
    assert rates("asr", "lasa") == ({"en": (1, 4), "zh": (0, 4)}, pytest.approx(0.125), (1, 8))
    assert rates("invalid", "prefix_only") == ({"en": (0, 4), "zh": (1, 4)}, pytest.approx(0.125), (1, 8))
    # refusal rate on the benign prompts only (harmful prompts of the refusal sources are not in it)
    assert rates("benign_refusal", "baseline") == ({"en": (0, 2), "zh": (1, 2)}, pytest.approx(0.25), (1, 4))
    assert rates("benign_refusal", "prefix_only") == ({"en": (1, 2), "zh": (1, 2)}, pytest.approx(0.5), (2, 4))
    assert rates("benign_refusal", "lasa") == ({"en": (1, 2), "zh": (0, 2)}, pytest.approx(0.25), (1, 4))
    assert comp["metrics"]["asr"]["systems"]["lasa"]["per_language"]["en"] == report["asr"]["systems"]["lasa"][
        "per_language"]["en"]["rate"]  # the same numbers as the ASR section
    # the SSI's flag rates from the first gated system; lasa flags one more zh harmful prompt
    ssi = comp["ssi"]
    assert ssi["system"] == "prefix_only" and ssi["gated_systems"] == ["prefix_only", "lasa"]
    assert ssi["disagreements"] == 1
    assert {lang: (r["count"], r["total"]) for lang, r in ssi["harmful"]["per_language"].items()} == {
        "en": (3, 4), "zh": (2, 4)}
    assert ssi["harmful"]["average"] == pytest.approx(0.625) and ssi["benign"]["average"] == pytest.approx(0.25)
    assert (ssi["benign"]["pooled"]["count"], ssi["benign"]["pooled"]["total"]) == (1, 4)

    markdown = (tmp_path / REPORT_MD).read_text(encoding="utf-8")
    assert ("| language | baseline ASR (harmful) | prefix_only ASR (harmful) | lasa ASR (harmful) | baseline invalid "
            "(harmful) | prefix_only invalid (harmful) | lasa invalid (harmful) | baseline refusal (benign) | "
            "prefix_only refusal (benign) | lasa refusal (benign) | SSI flagged (harmful) | SSI flagged (benign) |"
            ) in markdown
    assert "| en | 75.0% | 50.0% | 25.0% | 0.0% | 0.0% | 0.0% | 0.0% | 50.0% | 50.0% | 75.0% | 50.0% |" in markdown
    # the empty prefix_only answer in zh: invalid beside the ASR it lowers
    assert "| zh | 50.0% | 25.0% | 0.0% | 0.0% | 25.0% | 0.0% | 50.0% | 50.0% | 0.0% | 50.0% | 0.0% |" in markdown
    assert ("| **average** | 62.5% | 37.5% | 12.5% | 0.0% | 12.5% | 0.0% | 25.0% | 50.0% | 25.0% | 62.5% | 25.0% |"
            in markdown)
    assert "disagree on 1 prompt(s)" in markdown
    assert (tmp_path / SYSTEMS_CHART_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    headline = "\n".join(headline_lines(report))
    assert "ASR (harmful) over languages: baseline **62.5%**, prefix_only **37.5%**, lasa **12.5%**" in headline
    assert "refusal (benign) over languages: baseline **25.0%**, prefix_only **50.0%**, lasa **25.0%**" in headline
    assert "flagged 62.5% of harmful and 25.0% of benign prompts" in headline
    assert evaluation.counts["asr_rows"] == {"baseline": 8, "prefix_only": 8, "lasa": 8}


def test_judge_responses_with_heuristic_flags_approximation(tmp_path):
    prompts = [EvalPrompt(id=f"multijail:0:{lang}", language=lang, prompt="p", source="multijail", expected="harmful")
               for lang in ("en", "ko")]
    rows = judge_responses(RefusalHeuristicJudge(), prompts, ["I'm sorry, I can't.", "네, 방법은 다음과 같습니다."])
    assert [(r["id"], r["language"], r["verdict"]) for r in rows] == [("multijail:0:en", "en", "safe"),
                                                                      ("multijail:0:ko", "ko", "unsafe")]
    report = write_report(tmp_path / "r", {"baseline": rows})
    assert report["asr"]["approximate"] is True and report["refusal"] is None
    assert "Warning" in (tmp_path / "r" / REPORT_MD).read_text(encoding="utf-8")
