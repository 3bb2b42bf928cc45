"""The SSI network: hidden widths from the config value, parameter count and names, and the forward pass
(standardise -> Linear -> LayerNorm -> exact GELU -> Linear) against a manual computation."""
import numpy as np
import pytest
import torch

from lasa_jax.ssi.mlp import flatten_params, new_classifier, resolve_hidden_dims
from lasa_jax.ssi.training import predict_logits


def test_resolve_hidden_dims_and_architecture():
    assert resolve_hidden_dims("d_model", 64) == (64,)
    assert resolve_hidden_dims("256,128", 64) == (256, 128)
    assert resolve_hidden_dims("", 64) == ()
    assert resolve_hidden_dims((32, "d_model"), 64) == (32, 64)
    for bad in ("abc", "0", "-3", (1.5,)):
        with pytest.raises(ValueError, match="hidden_dims"):
            resolve_hidden_dims(bad, 64)
    deep = new_classifier(4096, (256, 128), 0.2, seed=0)
    assert deep.num_params() == (4096 * 256 + 256 + 2 * 256) + (256 * 128 + 128 + 2 * 128) + (128 + 1)
    simple = new_classifier(64, (64,), 0.1, seed=0)
    assert sorted(flatten_params(simple)) == ["hidden.0.linear.bias", "hidden.0.linear.kernel", "hidden.0.norm.bias",
                                              "hidden.0.norm.scale", "input_mean", "input_std", "output.bias",
                                              "output.kernel"]
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 64)) * 4 + 7).astype(np.float32)
    assert not simple.standardized
    simple.set_standardization(rng.standard_normal((50, 64)) * 3 - 2)
    assert simple.standardized
    # manual forward: standardise -> Linear -> LayerNorm(1e-5) -> exact GELU -> Linear
    p = flatten_params(simple)
    h = (x - p["input_mean"]) / p["input_std"]
    h = h @ p["hidden.0.linear.kernel"] + p["hidden.0.linear.bias"]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    h = h * p["hidden.0.norm.scale"] + p["hidden.0.norm.bias"]
    h = torch.nn.functional.gelu(torch.from_numpy(h)).numpy()
    expected = (h @ p["output.kernel"] + p["output.bias"])[:, 0]
    np.testing.assert_allclose(predict_logits(simple, x), expected, rtol=1e-4, atol=1e-5)
