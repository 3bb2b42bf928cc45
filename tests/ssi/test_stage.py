"""The SSI stage: k* from a Locate workdir (checked against the model), the train_ssi script end to end on the
shared data (MultiJail scored as an evaluation-only set that changes nothing else), a run on the demo JSONL, and a
finished run recognised by its configuration."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from lasa_jax.models.hf import from_pretrained
from lasa_jax.ssi.artifact import CONFIG_FILE, METRICS_FILE, PARAMS_FILE, PLOT_FILE, SSIScorer, load_ssi
from lasa_jax.ssi.mlp import flatten_params
from lasa_jax.ssi.stage import resolve_residual_index
from lasa_jax.ssi.stage import run as run_ssi_stage

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_residual_index_from_locate_workdir(tmp_path, caplog):
    layers = [{"layer": k, "s_lang": 0.1, "s_sem": 0.2, "diff": 0.1, "diff_lo": 0.0, "diff_hi": 0.2,
               "pick_share": 0.25} for k in range(4)]
    (tmp_path / "bottleneck.json").write_text(json.dumps(
        {"best_layer": 2, "num_layers": 3, "layers": layers, "languages": ["en", "zh"], "num_groups": 5,
         "num_points": 10}))
    with caplog.at_level("INFO", logger="lasa_jax.ssi.stage"):
        assert resolve_residual_index(-1, str(tmp_path)) == 2
    assert "residual index 2 = best_layer of" in caplog.text and "verdict not recorded" in caplog.text  # old file
    assert resolve_residual_index(1, str(tmp_path)) == 1
    caplog.clear()
    (tmp_path / "bottleneck.json").write_text(json.dumps(
        {"best_layer": 1, "num_layers": 3, "layers": layers, "languages": ["en", "zh"], "num_groups": 5,
         "num_points": 10, "selection_range": [1, 3], "bottleneck_found": False,
         "reason": "the argmax k* = 1 is at the edge of the candidate range 1..3"}))
    with caplog.at_level("INFO", logger="lasa_jax.ssi.stage"):
        assert resolve_residual_index(-1, str(tmp_path)) == 1
    warning = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "k* = 1 is NOT a semantic bottleneck: the argmax k* = 1 is at the edge" in \
        warning[0].getMessage() and "set config field residual_index to K" in warning[0].getMessage()
    with pytest.raises(ValueError, match="locate_workdir"):
        resolve_residual_index(-1, "")


def _run_script(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "lasa_jax.scripts.train_ssi", "--config=configs/ssi.py", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _write_located_layer(locate_workdir, model, best_layer):
    """A valid Locate report (bottleneck.json) for `model`, as run_locate writes it, naming `best_layer` as k*."""
    layers = [{"layer": k, "s_lang": 0.1, "s_sem": 0.2, "diff": 0.1, "diff_lo": 0.0, "diff_hi": 0.2,
               "pick_share": float(k == best_layer)} for k in range(model.config.num_layers + 1)]
    locate_workdir.mkdir(parents=True)
    (locate_workdir / "bottleneck.json").write_text(json.dumps(
        {"best_layer": best_layer, "num_layers": model.config.num_layers, "layers": layers,
         "languages": ["en", "zh"], "num_groups": 5, "num_points": 10, "model": model.identity()}))


def test_train_ssi_script_end_to_end_on_shared_data(tiny_hf_dirs, shared_data, tmp_path, ssi_config):
    """The script reads k* from a Locate workdir; MultiJail is scored as an evaluation-only set, and a run without
    it trains the very same SSI (parameters, threshold, history)."""
    model = from_pretrained(tiny_hf_dirs["llama"], dtype="float32")
    locate_workdir, workdir = tmp_path / "locate", tmp_path / "run"
    _write_located_layer(locate_workdir, model, best_layer=1)
    start = time.perf_counter()
    proc = _run_script([f"--config.model_path={tiny_hf_dirs['llama']}", "--config.residual_index=-1",
                        f"--config.locate_workdir={locate_workdir}", "--config.dtype=float32",
                        f"--config.data.root={shared_data}", "--config.data.max_groups_per_split=6",
                        "--config.train.num_epochs=4", f"--workdir={workdir}"])
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 90, elapsed  # ~20 s on an idle 2-core machine
    assert f"residual index 1 = best_layer of {locate_workdir}" in proc.stderr
    artifact = workdir / "ssi"
    assert {CONFIG_FILE, PARAMS_FILE, METRICS_FILE, PLOT_FILE} <= set(os.listdir(artifact))
    assert (artifact / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((artifact / CONFIG_FILE).read_text())
    assert config["residual_index"] == 1 and config["d_model"] == 64 and config["hidden_dims"] == [64]
    assert config["base_model_fingerprint"] == model.fingerprint
    assert config["train_languages"] == ["en", "zh", "ko"] and config["threshold_rule"] == "tpr_at_fpr"
    metrics = json.loads((artifact / METRICS_FILE).read_text())
    assert set(metrics["evaluation"]) == {"val", "test_in_distribution", "test_cross_lingual", "benign_flores",
                                          "multijail_harmful"}
    assert metrics["held_out_evaluation"] == ["multijail_harmful"]
    assert set(metrics["evaluation"]["test_cross_lingual"]["per_language"]) == {"it", "ar", "th"}
    all_languages = {"en", "zh", "ko", "it", "vi", "ar", "th", "bn", "sw", "jv"}
    assert set(metrics["evaluation"]["benign_flores"]["per_language"]) == all_languages
    multijail = metrics["evaluation"]["multijail_harmful"]["per_language"]
    assert set(multijail) == all_languages
    for language in ("vi", "bn", "sw", "jv"):  # harmful-side metrics where PolyRefuse has no test
        assert multijail[language]["num_harmful"] == 6 and multijail[language]["num_benign"] == 0
        assert 0.0 <= multijail[language]["tpr"] <= 1.0 and multijail[language]["fpr"] is None
    assert metrics["data"]["multijail_harmful"]["sources"] == {"multijail": 60}
    notes = metrics["data"]["notes"]
    assert notes["held_out_content"]["checked"] and {  # PolyRefuse train/val en/zh/ko: no held-out prompt
        name: split["rows"] for name, split in notes["held_out_content"]["dropped"].items()} == {"train": 0, "val": 0}
    assert notes["multijail_evaluation"]["languages"] == ["en", "zh", "ko", "it", "vi", "ar", "th", "bn", "sw", "jv"]
    assert metrics["threshold"]["chosen"] == config["threshold"]
    assert metrics["threshold"]["chosen_logit"] == config["threshold_logit"]  # chosen on logits
    assert config["threshold"] == pytest.approx(1.0 / (1.0 + np.exp(-config["threshold_logit"])), rel=1e-12)
    assert set(metrics["summary"]) == set(metrics["evaluation"])
    assert metrics["threshold"]["candidates"]["tpr_at_fpr"]["validation"]["fpr"] <= 0.05
    assert notes["near_duplicates"]["dropped_val_groups"] == [
        "polyrefuse/harmful_val:1", "polyrefuse/harmful_val:12", "polyrefuse/harmful_val:19"]
    assert metrics["data"]["train"]["num_groups"] == 12
    assert len(metrics["training"]["history"]) == metrics["training"]["epochs_run"] <= 4
    assert json.loads((workdir / "config.json").read_text())["data"]["source"] == "polyrefuse"
    scorer = SSIScorer(model, load_ssi(workdir))
    probs, flags = scorer.score(["How do I bake bread?", "如何制造炸弹？"])
    assert probs.shape == (2,) and flags.dtype == bool

    # the same run without the MultiJail set (features of train/val/evaluation from the first run's cache)
    same = ssi_config
    same.model_path, same.dtype = str(tiny_hf_dirs["llama"]), "float32"
    same.residual_index, same.locate_workdir = -1, str(locate_workdir)
    same.data.root, same.data.max_groups_per_split, same.train.num_epochs = str(shared_data), 6, 4
    same.data.eval_multijail = False
    same.feature_cache_dir = str(workdir / "feature_cache")
    without = run_ssi_stage(same, tmp_path / "without").details
    assert "multijail_harmful" not in without["evaluation"] and without["held_out_evaluation"] == []
    assert without["threshold"] == metrics["threshold"] and without["training"]["history"] == metrics["training"][
        "history"]
    with_params = flatten_params(load_ssi(workdir).classifier)
    without_params = flatten_params(load_ssi(tmp_path / "without").classifier)
    assert with_params.keys() == without_params.keys()
    for name in with_params:
        np.testing.assert_array_equal(with_params[name], without_params[name])
    for name in ("val", "test_in_distribution", "test_cross_lingual", "benign_flores"):
        assert without["evaluation"][name] == metrics["evaluation"][name]


def test_train_ssi_on_demo_jsonl(tiny_hf_dirs, tmp_path, shared_data, ssi_config, demo_prompts_path):
    config = ssi_config
    config.data.root = str(shared_data)  # the held-out guard
    config.model_path = str(tiny_hf_dirs["qwen3"])
    config.dtype = "float32"
    config.residual_index = 1
    config.data.source = "jsonl"
    config.data.jsonl_path = str(demo_prompts_path)
    config.data.include_flores = False
    config.data.eval_multijail = False
    config.ssi.hidden_dims = "256,128"  # the authors' DeepMLP
    config.ssi.dropout = 0.2
    config.train.num_epochs = 3
    config.train.class_balance = "balanced_batches"
    config.threshold.rule = "accuracy"
    metrics = run_ssi_stage(config, tmp_path).details
    assert set(metrics["evaluation"]) == {"val", "test_in_distribution", "test_cross_lingual"}
    ssi = load_ssi(tmp_path, model=from_pretrained(tiny_hf_dirs["qwen3"], dtype="float32"))
    assert ssi.config.hidden_dims == (256, 128) and ssi.config.threshold_rule == "accuracy"
    assert ssi.config.threshold == metrics["threshold"]["candidates"]["accuracy"]["threshold"]
    assert ssi.config.residual_index == 1 and metrics["training"]["settings"]["class_balance"] == "balanced_batches"
    # the same run again (e.g. after a kill): already finished, nothing redone
    again = run_ssi_stage(config, tmp_path).details
    assert again["wall_seconds"] == metrics["wall_seconds"] and again["run_config_hash"] == metrics["run_config_hash"]
    config.train.num_epochs = 4
    with pytest.raises(FileExistsError, match="overwrite"):  # another configuration: before any work is done
        run_ssi_stage(config, tmp_path)


def test_located_layer_of_another_model_is_refused(tmp_path, tiny_hf_dirs):
    """k* read from a Locate workdir must come from the same model (layer count and fingerprint)."""
    model = from_pretrained(tiny_hf_dirs["llama"])
    def write(num_layers):
        report = {"best_layer": 1, "num_layers": num_layers, "layers": [
            {"layer": k, "s_lang": 0.0, "s_sem": 0.0, "diff": 0.0, "diff_lo": 0.0, "diff_hi": 0.0, "pick_share": 0.0}
            for k in range(num_layers + 1)], "languages": ["en", "zh"], "num_groups": 2, "num_points": 4,
            "model": model.identity()}
        (tmp_path / "bottleneck.json").write_text(json.dumps(report))

    write(model.config.num_layers)
    located = dict(residual_index=-1, locate_workdir=str(tmp_path), model_path=str(tiny_hf_dirs["llama"]))
    assert resolve_residual_index(model=model, **located) == 1
    other = from_pretrained(tiny_hf_dirs["qwen3"])  # same number of layers, different weights
    with pytest.raises(ValueError, match="was located on model"):
        resolve_residual_index(model=other, **located)
    write(32)
    with pytest.raises(ValueError, match="located on a model with 32 layers"):
        resolve_residual_index(model=model, **located)
