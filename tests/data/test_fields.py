"""Checked record fields shared by the readers (lasa_jax/data/fields.py): each error names where and which field."""
import json

import pytest

from lasa_jax.data.fields import (
    group_id_field,
    language_code,
    language_field,
    language_set,
    read_json_list,
    require_field,
    require_text,
)


def test_require_field_and_text():
    assert require_field({"a": 0}, "a", "f.json record 3") == 0
    with pytest.raises(ValueError, match=r"^f.json record 3: missing field 'b'$"):
        require_field({"a": 1, "b": None}, "b", "f.json record 3")
    with pytest.raises(ValueError, match=r"^f.json record 3: expected a JSON object, got list$"):
        require_field([1], "a", "f.json record 3")
    assert require_text(" x ", "w", "text") == " x "
    with pytest.raises(ValueError, match=r"^w: field 'text' must be a non-empty string, got '  '$"):
        require_text("  ", "w", "text")


@pytest.mark.parametrize("value", [True, "", " ", [1], 1.5])
def test_group_id_field_rejects_what_cannot_name_a_group(value):
    with pytest.raises(ValueError, match=r"^f:2: field 'group_id' must be a non-empty string or an integer"):
        group_id_field({"group_id": value}, "f:2")


def test_group_id_field_and_languages():
    assert group_id_field({"group_id": 0}, "f:1") == 0 and group_id_field({"group_id": "q7"}, "f:1") == "q7"
    assert language_field({"lingual": "jw"}, "f:1", ("language", "lingual")) == "jv"
    assert language_field({"language": "Chinese", "lingual": "ko"}, "f:1", ("language", "lingual")) == "zh"
    with pytest.raises(ValueError, match=r"^f:1: missing field 'language' or 'lingual'$"):
        language_field({}, "f:1", ("language", "lingual"))
    with pytest.raises(ValueError, match=r"^f:1: field 'language': unknown language 'Klingon'"):
        language_field({"language": "Klingon"}, "f:1")
    with pytest.raises(ValueError, match=r"^folder 'xx': unknown language 'xx'"):
        language_code("xx", "folder 'xx'")
    assert language_set(None) is None and language_set(["English", "jw"]) == frozenset({"en", "jv"})


def test_read_json_list(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"a": 1}]), encoding="utf-8")
    assert read_json_list(path) == [{"a": 1}]
    path.write_text(json.dumps({"a": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows.json: expected a JSON list of records, got dict"):
        read_json_list(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json_list(tmp_path / "missing.json")
