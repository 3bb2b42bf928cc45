"""The per-language plot: a PNG with one panel per evaluation set; sets without per-language metrics are refused."""
import numpy as np
import pytest

from lasa_jax.ssi.metrics import evaluate_by_language
from lasa_jax.ssi.plot import plot_per_language


def test_plot_per_language_writes_a_png(tmp_path):
    labels = np.array([1, 0, 1, 0, 1, 1])
    scores = np.array([2.0, -1.0, -0.5, 0.5, 3.0, 1.0])
    metrics = {"val": evaluate_by_language(labels, scores, ["en", "en", "zh", "zh", "sw", "sw"], 0.0),
               "empty": {}}
    path = tmp_path / "plot.png"
    plot_per_language(metrics, path, title="SSI")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no evaluation set with per-language metrics"):
        plot_per_language({"empty": {}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
