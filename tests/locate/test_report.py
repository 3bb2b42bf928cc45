"""Locate's report files (lasa_jax/locate/report.py): bottleneck.json, layers.csv and the plots as written, the
validating loader (schema errors, old files without the verdict), and the verdict and probe lines."""
import csv
import dataclasses
import json

import numpy as np
import pytest

from lasa_jax.locate.report import load_bottleneck, summary_line, verdict_line, write_bottleneck_report
from lasa_jax.locate.selection import CSV_FIELDS, LAYER_FIELDS, PROBE_FIELD, select_bottleneck_layer


def test_report_files_and_loader(tmp_path, known_layer_features):
    features, languages, group_ids = known_layer_features()
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=20)
    paths = write_bottleneck_report(result, tmp_path / "locate", features=features, languages=languages,
                                    group_ids=group_ids, tsne_max_iter=250)  # t-SNE of k* by default
    report = json.loads((tmp_path / "locate/bottleneck.json").read_text())
    assert list(report)[:8] == ["best_layer", "num_layers", "layers", "languages", "num_groups", "num_points",
                                "selection_range", "bottleneck_found"]
    assert report["bottleneck_found"] is True and report["reason"] is None and report["reason_codes"] == []
    assert report["probe"]["best_layer"] is None and "not computed" in report["probe"]["reason"]
    assert report["best_layer"] == 3 and report["num_layers"] == 6
    assert [row["layer"] for row in report["layers"]] == list(range(7))
    assert list(report["layers"][0]) == list(CSV_FIELDS) and report["layers"][0][PROBE_FIELD] is None
    assert report["layers"][3]["diff"] == pytest.approx(result.diff[3])
    assert report["languages"] == ["en", "zh", "ko", "sw", "jv"]
    assert (report["num_groups"], report["num_points"]) == (30, 150)
    with open(tmp_path / "locate/layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and tuple(rows[0]) == CSV_FIELDS and rows[0][PROBE_FIELD] == ""
    assert float(rows[3]["pick_share"]) == pytest.approx(result.pick_share[3])
    for name in ("plot", "tsne_3"):
        with open(paths[name], "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "locate").iterdir()) == [
        "bottleneck.json", "bottleneck_layers.png", "layers.csv", "tsne_layer03.png"]
    assert load_bottleneck(tmp_path / "locate") == report
    assert load_bottleneck(paths["json"])["best_layer"] == 3
    with pytest.raises(ValueError, match="t-SNE plots need"):
        write_bottleneck_report(result, tmp_path / "other", features=features)
    with pytest.raises(ValueError, match="tsne layer 7 is outside residual indices 0..6"):
        write_bottleneck_report(result, tmp_path / "other", features=features, languages=languages,
                                group_ids=group_ids, tsne_layers=[7])


def _valid_report():
    layers = [dict(zip(LAYER_FIELDS, (k, 0.1, 0.2, 0.1, 0.0, 0.2, 0.5 if k in (1, 2) else 0.0))) for k in range(4)]
    return {"best_layer": 2, "num_layers": 3, "layers": layers, "languages": ["en", "zh"], "num_groups": 5,
            "num_points": 10}


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("best_layer"), "'best_layer' must be an integer residual index"),
    (lambda r: r.update(best_layer=4), "'best_layer' must be an integer residual index in 0..3"),
    (lambda r: r.update(best_layer=True), "'best_layer'"),
    (lambda r: r.update(num_layers="3"), "'num_layers' must be an integer"),
    (lambda r: r["layers"].pop(), "'layers' must be a list of 4"),
    (lambda r: r["layers"][2].update(layer=5), r"layers\[2\] must be an object with \"layer\": 2"),
    (lambda r: r["layers"][1].pop("diff_hi"), r"layers\[1\].diff_hi must be a number"),
    (lambda r: r.update(languages=["en"]), "'languages' must be a list of at least 2"),
    (lambda r: r.update(num_points=None), "'num_points' must be an integer"),
])
def test_load_bottleneck_schema_errors(tmp_path, change, message):
    report = _valid_report()
    path = tmp_path / "bottleneck.json"
    path.write_text(json.dumps(report))
    assert load_bottleneck(tmp_path)["best_layer"] == 2
    change(report)
    path.write_text(json.dumps(report))
    with pytest.raises(ValueError, match=message) as info:
        load_bottleneck(path)
    assert str(path) in str(info.value)


def test_load_bottleneck_missing_or_invalid(tmp_path):
    with pytest.raises(FileNotFoundError, match="bottleneck.json"):
        load_bottleneck(tmp_path)
    (tmp_path / "bottleneck.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_bottleneck(tmp_path)


def test_no_bottleneck_is_recorded_plotted_and_loaded(tmp_path, known_layer_features):
    """Every layer clusters by language: diff < 0 everywhere; bottleneck.json, the plot and the loader say so."""
    features, languages, group_ids = known_layer_features(semantic_layers=())
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=20)
    assert not result.bottleneck_found and (result.diff[1:] < 0).all()
    assert summary_line(result).startswith(f"semantic bottleneck k* = {result.best_layer} of L = 6 (")
    assert "; NO semantic bottleneck found: S_sem - S_lang < 0 at every candidate" in summary_line(result)
    paths = write_bottleneck_report(result, tmp_path)
    report = load_bottleneck(tmp_path)
    assert report["bottleneck_found"] is False and "diff_negative_everywhere" in report["reason_codes"]
    assert report["reason"].startswith("S_sem - S_lang < 0 at every candidate residual index 1..6")
    assert len(report["reason"].split("; ")) == len(report["reason_codes"])
    assert verdict_line(report).startswith(f"k* = {result.best_layer} is NOT a semantic bottleneck: S_sem")
    with open(paths["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    report["bottleneck_found"], report["reason"] = False, None
    (tmp_path / "bottleneck.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="'reason' must say why"):
        load_bottleneck(tmp_path)


def test_old_reports_without_the_verdict_still_load(tmp_path):
    path = tmp_path / "bottleneck.json"
    old = _valid_report()  # written before the verdict fields, without selection_range
    path.write_text(json.dumps(old))
    report = load_bottleneck(tmp_path)
    assert report["bottleneck_found"] is None and report["verdict_source"] == "unknown"
    assert "k* = 2 (bottleneck verdict not recorded" in verdict_line(report)
    old["selection_range"] = [1, 2]  # the old default 1..L-1: k* = 2 is its upper edge, picked in 50%
    path.write_text(json.dumps(old))
    report = load_bottleneck(tmp_path)
    assert report["bottleneck_found"] is False and report["reason_codes"] == ["argmax_at_range_edge"]
    assert report["verdict_source"].startswith("recomputed")


def test_probe_auroc_in_json_csv_and_plot(tmp_path, known_layer_features):
    features, languages, group_ids = known_layer_features(semantic_layers=(3,))
    result = select_bottleneck_layer(features, languages, group_ids, num_bootstrap=10)
    auroc = np.array([0.5, 0.6, 0.7, 0.95, 0.9, 0.8, np.nan])
    result = dataclasses.replace(result, probe_auroc=auroc, probe={"reason": None, "num_val": 40})
    write_bottleneck_report(result, tmp_path)
    report = load_bottleneck(tmp_path)
    assert [row[PROBE_FIELD] for row in report["layers"]] == [0.5, 0.6, 0.7, 0.95, 0.9, 0.8, None]
    assert report["probe"] == {"reason": None, "num_val": 40, "best_layer": 3, "best_auroc": 0.95}
    assert "probe val AUROC 0.950 at k*, best 0.950 at residual index 3" in verdict_line(report)
    assert summary_line(result).endswith("; probe val AUROC 0.950 at k*, best 0.950 at residual index 3")
    with open(tmp_path / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[3][PROBE_FIELD]) == 0.95 and rows[6][PROBE_FIELD] == ""
    report["layers"][2][PROBE_FIELD] = 1.5
    (tmp_path / "bottleneck.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"layers\[2\].probe_auroc must be null or a number in \[0, 1\]"):
        load_bottleneck(tmp_path)
