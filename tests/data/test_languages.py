"""Language normalisation (lasa_jax/data/languages.py): every spelling the data uses maps to an ISO 639-1 code."""
import csv
import re

import pytest

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES, language_name, normalize_language


@pytest.mark.parametrize("name, code", [
    ("Chinese", "zh"), ("Javanese", "jv"), ("Swahili", "sw"), ("Bengali", "bn"), ("Bangla", "bn"),
    ("zho_Hans", "zh"), ("jav_Latn", "jv"), ("swh_Latn", "sw"), ("arb_Arab", "ar"), ("kor_Hang", "ko"),
    ("eng-US", "en"), ("zho-CN", "zh"), ("swa", "sw"), ("ben", "bn"), ("jw", "jv"), ("sp", "es"),
    ("EN", "en"), (" Chinese (Simplified) ", "zh"), ("zh-Hans", "zh"), ("vi", "vi"), ("Thai", "th"),
    ("ita_Latn", "it"), ("German", "de"), ("ger", "de"), ("yor", "yo"),
])
def test_normalize_language(name, code):
    assert normalize_language(name) == code


@pytest.mark.parametrize("bad", ["Klingon", "xx_Latn", "", 12])
def test_normalize_language_unknown_names_the_value(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        normalize_language(bad)


def test_language_name_and_multijail_constant():
    assert language_name("jw") == "Javanese"
    assert MULTIJAIL_LANGUAGES == ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")
    assert [normalize_language(language_name(code)) for code in MULTIJAIL_LANGUAGES] == list(MULTIJAIL_LANGUAGES)


def test_every_language_label_in_shared_data_is_known(shared_data):
    """Folder names, file-name codes and column names of all data sets map to ISO codes."""
    labels = [p.name for p in (shared_data / "flores200_sib200/data/annotated").iterdir()]
    labels += [p.name for p in (shared_data / "xsafety").iterdir() if p.is_dir()]
    labels += [re.match(r"newstest2019-(?:src|ref)\.(.+)\.txt", p.name).group(1)
               for p in (shared_data / "ntrex128/NTREX-128").iterdir()]
    labels += [re.match(r".+_translated_(.+)\.json", p.name).group(1)
               for p in (shared_data / "polyrefuse/PolyRefuse").iterdir()]
    with open(shared_data / "multijail/MultiJail.csv", encoding="utf-8-sig", newline="") as f:
        labels += next(csv.reader(f))[3:]
    codes = {normalize_language(label) for label in labels}
    assert set(MULTIJAIL_LANGUAGES) <= codes
    assert {"es", "de", "fr", "ja", "hi", "ru", "nl", "pl", "yo"} <= codes
    assert all(len(code) == 2 for code in codes)
