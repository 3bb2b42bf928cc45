"""Stage 1 (Locate) end to end (lasa_jax/locate/stage.py): the script on a tiny model over a slice of ../shared/data
(all files, HF parity of the stored activations, sklearn parity of the reported silhouettes and probe AUROCs,
activation reuse), the demo JSONL through the stage contract, config errors, and the probe's row selection."""
import csv
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, silhouette_score
from transformers import AutoModelForCausalLM

from lasa_jax.data.heldout import HELD_OUT_FILES
from lasa_jax.data.parallel import ParallelText
from lasa_jax.locate import stage as locate
from lasa_jax.locate.corpus import corpus_summary, default_locate_corpus, load_locate_corpus
from lasa_jax.locate.probe import grouped_split
from lasa_jax.locate.report import load_bottleneck
from lasa_jax.locate.settings import data_settings
from lasa_jax.locate.stage import ACTIVATIONS_FILE, ACTIVATIONS_META_FILE, locate_probe
from lasa_jax.models.capture import load_activations, tokenize_prompts
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.loading import load_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_PROMPTS = REPO / "lasa_jax" / "demo_data" / "prompts.jsonl"
LANGUAGES = ("en", "zh", "ko", "ar")
GROUPS_PER_SOURCE = 8
SEED = 42  # base_config's seed: data subsampling and bootstrap
NUM_LAYERS = 3  # the tiny llama of tiny_hf_dirs


def _run_script(workdir, model_dir, shared_data, *extra):
    args = [sys.executable, "-m", "lasa_jax.scripts.locate", "--config=configs/locate.py",
            f"--config.model_path={model_dir}", "--config.dtype=float32", f"--config.data.root={shared_data}",
            f"--config.data.languages={LANGUAGES!r}", f"--config.data.max_groups_per_source={GROUPS_PER_SOURCE}",
            "--config.selection.num_bootstrap=50", "--config.progress=False", f"--workdir={workdir}", *extra]
    # os.environ carries conftest's XLA_FLAGS (8 CPU devices) and the offline Hugging Face variables
    return subprocess.run(args, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def script_run(tiny_hf_dirs, shared_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("locate") / "run"
    proc = _run_script(workdir, tiny_hf_dirs["llama"], shared_data, "--config.report.tsne_max_iter=250")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir, proc


def test_script_writes_every_file_with_a_valid_report(script_run):
    workdir, proc = script_run
    report = load_bottleneck(workdir)
    assert report["num_layers"] == NUM_LAYERS and 1 <= report["best_layer"] <= NUM_LAYERS
    assert report["selection_range"] == [1, NUM_LAYERS] and report["num_bootstrap"] == 50  # the paper's 1..L
    assert sorted(report["languages"]) == sorted(LANGUAGES)
    # 5 sources (flores + polyrefuse harmful/harmless x train/val), 8 groups each; every group has all 4 languages
    assert report["num_groups"] == 5 * GROUPS_PER_SOURCE and report["num_points"] == 4 * report["num_groups"]
    shares = [row["pick_share"] for row in report["layers"]]
    assert sum(shares) == pytest.approx(1.0) and shares[0] == 0.0
    best = report["layers"][report["best_layer"]]
    assert best["diff_lo"] <= best["diff_hi"]
    assert best["diff"] == max(row["diff"] for row in report["layers"][1:NUM_LAYERS + 1])
    # the verdict: recomputed from the reported numbers, and said on the console when there is no bottleneck
    diffs = [row["diff"] for row in report["layers"][1:]]
    expected = ((["diff_negative_everywhere"] if max(diffs) < 0 else [])
                + (["argmax_at_range_edge"] if report["best_layer"] in (1, NUM_LAYERS) else [])
                + (["unstable_argmax"] if best["pick_share"] < 0.5 else []))
    assert report["reason_codes"] == expected and report["bottleneck_found"] is (not expected)
    assert ("NO semantic bottleneck found" in proc.stderr) is (not report["bottleneck_found"])
    # the probe: a val AUROC at every residual index, the grouped split's counts beside it
    probe = report["probe"]
    assert probe["reason"] is None and probe["num_val_harmful"] > 0 and probe["num_val_benign"] > 0
    aurocs = [row["probe_auroc"] for row in report["layers"]]
    assert all(0.0 <= value <= 1.0 for value in aurocs)
    assert probe["best_auroc"] == max(aurocs) and aurocs[probe["best_layer"]] == max(aurocs)
    with open(workdir / "layers.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["layer"]) for r in rows] == list(range(NUM_LAYERS + 1))
    assert float(rows[2]["diff"]) == pytest.approx(report["layers"][2]["diff"])
    assert float(rows[2]["probe_auroc"]) == pytest.approx(report["layers"][2]["probe_auroc"])
    assert sorted(p.name for p in workdir.glob("tsne_*.png")) == [f"tsne_layer{report['best_layer']:02d}.png"]
    for png in ("bottleneck_layers.png", f"tsne_layer{report['best_layer']:02d}.png"):
        assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["source"] == "default" and config["data"]["max_groups_per_source"] == GROUPS_PER_SOURCE
    assert f"k* = {report['best_layer']} of L = {NUM_LAYERS}" in proc.stderr


def test_stored_activations_match_hf_and_the_reported_silhouettes(script_run, tiny_hf_dirs, shared_data):
    workdir, _ = script_run
    stored = load_activations(workdir / ACTIVATIONS_FILE)
    records = default_locate_corpus(shared_data, LANGUAGES, GROUPS_PER_SOURCE, seed=SEED)
    features = stored["features"]
    assert features.shape == (NUM_LAYERS + 1, len(records), 64) and features.dtype == np.float32
    assert stored["group_id"].tolist() == [r.group_id for r in records]
    assert stored["language"].tolist() == [r.language for r in records]
    assert stored["source"].tolist() == [r.source for r in records]
    assert stored["label"].tolist() == [r.label for r in records] and set(stored["label"].tolist()) == {0, 1}
    meta = json.loads((workdir / ACTIVATIONS_META_FILE).read_text())
    assert meta["shape"] == list(features.shape) and meta["description"]["max_length"] == 512
    assert meta["description"]["model_fingerprint"] == from_pretrained(tiny_hf_dirs["llama"]).fingerprint
    report = json.loads((workdir / "bottleneck.json").read_text())
    assert report["model"] == from_pretrained(tiny_hf_dirs["llama"]).identity()  # k* records its model
    # both files report the corpus, with texts per source and language (the source/language mix)
    summary = corpus_summary(records)
    assert meta["corpus"] == summary
    notes = report["corpus"]["notes"]
    held_out = notes.pop("held_out_content")  # the default corpus goes through the held-out guard too
    assert report["corpus"] == {**summary, "notes": {"source": "default", "common_sources_only": False}}
    assert held_out["checked"] and set(held_out["references"]) == set(HELD_OUT_FILES)
    assert held_out["dropped"]["corpus"]["by_set"] == {}  # FLORES/PolyRefuse train/val: nothing held out here
    assert report["corpus"]["texts_per_source_language"]["flores"] == {lang: GROUPS_PER_SOURCE
                                                                       for lang in sorted(LANGUAGES)}

    # rows are the HF hidden states of the last token, in corpus order (raw text, default special tokens)
    rows = [0, 37, 81, 159]
    token_ids = tokenize_prompts(load_tokenizer(str(tiny_hf_dirs["llama"])), [records[i].text for i in rows])
    hf = AutoModelForCausalLM.from_pretrained(tiny_hf_dirs["llama"]).eval()
    for i, ids in zip(rows, token_ids):
        with torch.no_grad():
            hidden = hf(input_ids=torch.tensor(ids[None].astype(np.int64)), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(features[:, i], np.stack([h[0, -1].numpy() for h in hidden]), atol=1e-4)

    # the reported probe AUROCs are sklearn's LogisticRegression + roc_auc_score on the stored vectors and labels
    report = load_bottleneck(workdir)
    train, val = grouped_split(stored["label"], stored["group_id"], val_fraction=0.25, seed=SEED)
    assert report["probe"]["num_train"] == train.sum() and report["probe"]["num_val"] == val.sum()
    for k in range(NUM_LAYERS + 1):
        x = features[k] / np.linalg.norm(features[k], axis=1, keepdims=True)
        x = (x - x[train].mean(0)) / np.where(x[train].std(0) > 1e-12, x[train].std(0), 1.0)
        probe = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x[train], stored["label"][train])
        expected = roc_auc_score(stored["label"][val], probe.decision_function(x[val]))
        # tolerance: 2 swapped (harmful, benign) pairs; float32 Newton vs float64 lbfgs can swap near-tied scores
        pairs = report["probe"]["num_val_harmful"] * report["probe"]["num_val_benign"]
        assert report["layers"][k]["probe_auroc"] == pytest.approx(expected, abs=2.0 / pairs + 1e-9), k

    # the reported point estimates are sklearn's cosine silhouettes of the stored vectors
    for k in range(NUM_LAYERS + 1):
        row = report["layers"][k]
        assert row["s_lang"] == pytest.approx(silhouette_score(features[k], stored["language"], metric="cosine"),
                                              abs=1e-4)
        assert row["s_sem"] == pytest.approx(silhouette_score(features[k], stored["group_id"], metric="cosine"),
                                             abs=1e-4)


def test_rerun_reuses_the_stored_activations(script_run, tiny_hf_dirs, shared_data):
    workdir, _ = script_run
    first_report = load_bottleneck(workdir)
    stamp = (workdir / ACTIVATIONS_FILE).stat().st_mtime_ns
    proc = _run_script(workdir, tiny_hf_dirs["llama"], shared_data, "--config.report.tsne_layers=")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "reusing activations" in proc.stderr and "capturing" not in proc.stderr
    assert (workdir / ACTIVATIONS_FILE).stat().st_mtime_ns == stamp
    assert load_bottleneck(workdir) == first_report  # same data, same seed: same bootstrap


def test_changed_tokenisation_captures_again(locate_config, script_run, tiny_hf_dirs, shared_data, tmp_path, caplog):
    workdir = tmp_path / "copy"
    shutil.copytree(script_run[0], workdir)
    before = load_activations(workdir / ACTIVATIONS_FILE)["features"]
    config = locate_config
    config.model_path = str(tiny_hf_dirs["llama"])
    config.data.root = str(shared_data)
    config.data.languages = LANGUAGES
    config.data.max_groups_per_source = GROUPS_PER_SOURCE
    config.max_length = 16
    with caplog.at_level("INFO", logger="lasa_jax.locate.stage"):
        locate.run(config, workdir)
    assert "other inputs" in caplog.text and "capturing" in caplog.text
    after = load_activations(workdir / ACTIVATIONS_FILE)
    assert after["features"].shape == before.shape and not np.allclose(after["features"], before)
    meta = json.loads((workdir / ACTIVATIONS_META_FILE).read_text())
    assert meta["description"]["max_length"] == 16


def test_demo_jsonl_uses_its_train_split_with_a_given_model(locate_config, tiny_hf_dirs, tmp_path):
    config = locate_config
    config.data.allow_missing_held_out = True  # as the offline demo: no shared data
    config.data.root = ""
    config.model_path = str(tiny_hf_dirs["llama"])
    config.data.source = "jsonl"
    config.data.path = str(DEMO_PROMPTS)
    config.data.max_groups_per_source = 12
    model = from_pretrained(tiny_hf_dirs["llama"], dtype="float32")
    stage = locate.run(locate.settings(config), tmp_path, model=model)  # the stage contract, from settings
    result = stage.details
    assert stage.stage == locate.NAME == "locate" and stage.completed
    assert stage.summary == {"best_layer": result.best_layer, "bottleneck_found": result.bottleneck_found,
                             "num_layers": NUM_LAYERS}
    assert stage.outputs["bottleneck"] == str(tmp_path / "bottleneck.json")
    assert all(os.path.isfile(path) for path in stage.outputs.values())
    lines = locate.report_lines(tmp_path)
    assert lines[0].startswith(f"Semantic bottleneck k* = {result.best_layer} of L = {NUM_LAYERS} (S_sem - S_lang = "
                               f"{result.diff[result.best_layer]:.3f}, 95% interval")
    assert ("**No semantic bottleneck found**" in "\n".join(lines)) is (not result.bottleneck_found)
    assert "[locate/bottleneck.json](locate/bottleneck.json)" not in lines[-1]  # tmp_path is not named locate
    assert lines[-1].startswith(f"- [{tmp_path.name}/bottleneck.json]({tmp_path.name}/bottleneck.json)")
    assert locate.report_lines(tmp_path / "absent") == ["- absent/bottleneck.json (missing), absent/layers.csv "
                                                        "(missing), absent/bottleneck_layers.png (missing)"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        locate.settings(config).seed = 1
    demo = [json.loads(line) for line in DEMO_PROMPTS.read_text(encoding="utf-8").splitlines()]
    train_groups = {"prompts:" + row["group_id"] for row in demo if row["split"] == "train"}
    assert len(train_groups) == 32  # of 48: the eval split is never loaded
    stored = load_activations(tmp_path / ACTIVATIONS_FILE)
    assert set(stored["group_id"].tolist()) <= train_groups and len(set(stored["group_id"].tolist())) == 12
    assert result.num_groups == 12 and result.num_points == 120 and len(result.languages) == 10
    assert stored["features"].shape == (NUM_LAYERS + 1, 120, 64)
    assert load_bottleneck(tmp_path)["best_layer"] == result.best_layer
    assert not list(tmp_path.glob("tsne_*.png"))  # t-SNE off
    config.data.splits = ()  # every row: train and eval groups
    assert len({r.group_id for r in load_locate_corpus(data_settings(config.data), seed=0)}) == 12
    config.data.max_groups_per_source = 0
    assert len({r.group_id for r in load_locate_corpus(data_settings(config.data), seed=0)}) == 48


@pytest.mark.parametrize("field, value, message", [
    ("model_path", "", "config field model_path is required"),
    ("pooling", "max", "config field pooling"),
    ("data.source", "multijail_csv", "config field data.source"),
    ("data.languages", ("en",), "config field data.languages"),
    ("data.languages", ("en", "klingon"), "config field data.languages"),
    ("selection.metric", "manhattan", "config field selection.metric"),
    ("selection.bootstrap", "cases", "config field selection.bootstrap"),
    ("selection.bootstrap", "expanded", "'expanded' bootstrap was removed"),
    ("selection.num_bootstrap", 0, "config field selection.num_bootstrap"),
    ("report.tsne_layers", "best,middle", "config field report.tsne_layers"),
    ("template_kwargs", "enable_thinking", "template_kwargs must be a JSON object"),
    ("probe.val_fraction", 1.0, "config field probe.val_fraction"),
    ("probe.c", 0.0, "config field probe.c"),
    ("probe.num_steps", 0, "config field probe.num_steps"),
])
def test_bad_config_values_name_the_flag(locate_config, field, value, message, tmp_path):
    config = locate_config
    config.model_path = "unused"
    config.data.root = "/nonexistent"
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        locate.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written before the config is checked


def test_locate_probe_uses_labelled_non_held_out_rows_only(locate_config):
    rng = np.random.default_rng(0)
    records = [ParallelText(f"text {g} {lang}", lang, f"src:{g}", "src", label)
               for g, label in enumerate([1, 0] * 6 + [None] * 2) for lang in ("en", "zh")]
    features = rng.normal(size=(3, len(records), 8)).astype(np.float32)
    config = locate_config
    result = locate_probe(locate.settings(config), features, records)
    assert result.reason is None and result.auroc.shape == (3,)
    assert result.settings["num_train"] + result.settings["num_val"] == 24  # the 2 unlabelled groups left out
    config.data.allow_held_out = True
    held_out = locate_probe(locate.settings(config), features, records)
    assert held_out.auroc is None and "allow_held_out" in held_out.reason
    config.data.allow_held_out, config.probe.enabled = False, False
    assert "disabled" in locate_probe(locate.settings(config), features, records).reason
    config.probe.enabled = True
    unlabelled = [dataclasses.replace(r, label=None) for r in records]
    assert "no harmful/benign labels" in locate_probe(locate.settings(config), features, unlabelled).reason
