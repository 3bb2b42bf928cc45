"""The shared config-field parsers: template kwargs (a JSON object) and comma-separated lists."""
import ml_collections
import pytest

from lasa_jax.infra.base_config import comma_list, template_kwargs


def test_template_kwargs_and_comma_lists():
    config = ml_collections.ConfigDict(dict(template_kwargs='{"enable_thinking": false}'))
    assert template_kwargs(config) == {"enable_thinking": False}
    config.template_kwargs = ""
    assert template_kwargs(config) == {}
    for bad in ("[1, 2]", "{enable_thinking: false}"):
        config.template_kwargs = bad
        with pytest.raises(ValueError, match="config field template_kwargs must be a JSON object"):
            template_kwargs(config)
    assert comma_list(" a, b,,c ") == ["a", "b", "c"] and comma_list("") == []
