"""The SSI data: the demo JSONL's train split only, MultiJail as an evaluation-only set, and the held-out guard
dropping MultiJail prompts that arrive under another source name."""
import collections
import json

import pytest

from lasa_jax.data.labelled import load_multijail_prompts
from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.infra.errors import InputError
from lasa_jax.ssi.data import load_ssi_data
from lasa_jax.ssi.settings import data_settings


def test_demo_jsonl_data_uses_the_train_split_only(shared_data, ssi_config, demo_prompts_path):
    config = ssi_config
    config.data.root = str(shared_data)  # held-out guard and MultiJail evaluation set
    config.data.source = "jsonl"
    config.data.jsonl_path = str(demo_prompts_path)
    config.data.test_languages = ()
    config.data.include_flores = False
    data = load_ssi_data(data_settings(config.data), seed=0)
    demo = [json.loads(line) for line in demo_prompts_path.read_text(encoding="utf-8").splitlines()]
    train_split_texts = {row["prompt"] for row in demo if row["split"] == "train"}
    used = data.train + data.val + [r for records in data.evaluation.values() for r in records]
    assert {r.text for r in used} <= train_split_texts  # the demo's eval split is never loaded
    groups = {name: {r.group_id for r in records} for name, records in
              [("train", data.train), ("val", data.val), ("test", data.evaluation["test_in_distribution"])]}
    assert sum(map(len, groups.values())) == 32
    assert len(used) == 3 * (len(groups["train"]) + len(groups["val"])) + 10 * len(groups["test"])
    assert {r.language for r in data.train + data.val + data.evaluation["test_in_distribution"]} == {"en", "zh", "ko"}
    assert {r.language for r in data.evaluation["test_cross_lingual"]} == {"it", "vi", "ar", "th", "bn", "sw", "jv"}
    test_groups = {r.group_id for r in data.evaluation["test_in_distribution"]}
    assert {r.group_id for r in data.evaluation["test_cross_lingual"]} == test_groups
    assert not test_groups & {r.group_id for r in data.train + data.val}
    config.data.source, config.data.root = "polyrefuse", ""
    with pytest.raises(ValueError, match="data.root"):
        load_ssi_data(data_settings(config.data), seed=0)


def test_multijail_is_an_evaluation_only_set(shared_data, ssi_config):
    config = ssi_config
    config.data.root = str(shared_data)
    config.data.max_groups_per_split = 6
    data = load_ssi_data(data_settings(config.data), seed=0)
    assert set(data.held_out_evaluation) == {"multijail_harmful"} and "multijail_harmful" not in data.evaluation
    multijail = data.held_out_evaluation["multijail_harmful"]
    assert {r.source for r in multijail} == {"multijail"} and {r.label for r in multijail} == {1}
    assert collections.Counter(r.language for r in multijail) == {lang: 6 for lang in MULTIJAIL_LANGUAGES}
    selecting = {r.text for r in data.train + data.val} | {r.text for rs in data.evaluation.values() for r in rs}
    assert not selecting & {r.text for r in multijail}
    config.data.eval_multijail = False
    off = load_ssi_data(data_settings(config.data), seed=0)
    assert off.held_out_evaluation == {} and off.notes["multijail_evaluation"].startswith("off")
    assert (off.train, off.val, off.evaluation) == (data.train, data.val, data.evaluation)


def test_ssi_data_drops_multijail_prompts_under_another_source_name(shared_data, tmp_path, caplog, ssi_config):
    """A user JSONL (source "myset") holding MultiJail prompts: every such group is gone from train and val."""
    multijail = {(r.group_id, r.language): r.text for r in load_multijail_prompts(shared_data / "multijail")}
    rows = []
    for g in range(40):
        label = g % 2
        en, zh = f"{'weapon' if label else 'cooking'} q{g} w{g}a w{g}b w{g}c", f"问题 {g} 词{g}"  # no near duplicates
        if g < 12 and label:  # six harmful groups copied from MultiJail: English (near) or Chinese (exact)
            if g % 4 == 1:
                en = multijail[(f"multijail:{g}", "en")] + " Thanks!"
            else:
                zh = multijail[(f"multijail:{g}", "zh")]
        rows += [{"prompt": en, "language": "en", "label": label, "group_id": g, "source": "myset"},
                 {"prompt": zh, "language": "zh", "label": label, "group_id": g, "source": "myset"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows), encoding="utf-8")
    copied = {f"myset:{g}" for g in range(1, 12, 2)}
    config = ssi_config
    config.data.source, config.data.jsonl_path = "jsonl", str(path)
    config.data.train_languages, config.data.test_languages = ("en", "zh"), ()
    config.data.root, config.data.include_flores = str(shared_data), False
    with caplog.at_level("WARNING"):
        data = load_ssi_data(data_settings(config.data), seed=0)
    dropped = data.notes["held_out_content"]["dropped"]
    dropped_groups = set(dropped["train"]["groups"]) | set(dropped["val"]["groups"])
    assert dropped_groups <= copied
    kinds = {int(group.split(":")[1]) % 4 for group in dropped_groups}
    assert kinds == {1, 3}  # both an English near duplicate and a Chinese exact copy were caught
    assert dropped["train"]["rows"] + dropped["val"]["rows"] == 2 * len(dropped_groups)
    assert not copied & {r.group_id for r in data.train + data.val}  # the rest went to the test split
    assert copied - dropped_groups <= {r.group_id for r in data.evaluation["test_in_distribution"]}
    assert "held-out guard dropped" in caplog.text and set(dropped["train"]["by_set"]) <= {"multijail"}
    config.data.root = ""  # nothing to compare with: an error unless waived, and then the guard says so
    with pytest.raises(InputError, match="allow_missing_held_out"):
        load_ssi_data(data_settings(config.data), seed=0)
    config.data.allow_missing_held_out = True
    with caplog.at_level("WARNING"):
        unguarded = load_ssi_data(data_settings(config.data), seed=0)
    assert unguarded.notes["held_out_content"]["checked"] is False
    assert dropped_groups <= {r.group_id for r in unguarded.train + unguarded.val}
    assert "held-out content guard not applied" in caplog.text
