"""lasa_jax.kto.weights: TRL's class-weight check (peer-checked against TRL's KTOTrainer) and `balance_weights`."""
import logging

import pytest

from lasa_jax.infra.errors import InputError
from lasa_jax.kto.weights import AUTO_WEIGHT_RATIO, balance_class_weights, trl_weight_check

WEIGHT_CASES = [(7, 3, 1.0, 1.0), (3, 7, 1.0, 1.0), (7, 3, 1.0, 2.0), (6, 4, 1.0, 1.2), (5, 5, 1.0, 3.0)]


@pytest.mark.slow
def test_weight_check_matches_trl_kto_trainer(tiny_hf_dirs, tmp_path, caplog):
    """TRL 1.16's KTOTrainer, built on a tiny model and datasets of n_d desirable / n_u undesirable rows, warns
    exactly when `trl_weight_check` does, with the same recommended ranges."""
    import datasets
    import transformers
    from trl import KTOConfig, KTOTrainer

    model_dir = str(tiny_hf_dirs["llama"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    for n_d, n_u, w_d, w_u in WEIGHT_CASES:
        rows = [{"prompt": "hi", "completion": "ok", "label": True}] * n_d
        rows += [{"prompt": "hi", "completion": "no", "label": False}] * n_u
        args = KTOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, report_to=[],
                         desirable_weight=w_d, undesirable_weight=w_u, use_cpu=True)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            KTOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                       processing_class=tokenizer)
        trl_warnings = [r.getMessage() for r in caplog.records if "desirable_weight in" in r.getMessage()]
        ours = trl_weight_check(n_d, n_u, w_d, w_u)
        assert len(trl_warnings) == (ours is not None), (n_d, n_u, w_d, w_u)
        if ours is not None:
            assert ours in trl_warnings[0]


def test_balance_weights_brings_the_ratio_into_trls_range(caplog):
    with caplog.at_level(logging.WARNING, logger="lasa_jax.kto.weights"):
        kept = balance_class_weights(2421, 271, 1.0, 1.0, mode="")
    assert kept["trl_warning"] and "undesirable_weight in [6.72, 8.93]" in kept["trl_warning"]
    assert kept["undesirable_weight"] == 1.0 and "balance_weights=undesirable" in caplog.text
    for mode in ("undesirable", "desirable"):
        w = balance_class_weights(2421, 271, 1.0, 1.0, mode=mode)
        assert w["trl_warning"] is None and w["ratio"] == pytest.approx(AUTO_WEIGHT_RATIO)
        assert 2421 * w["desirable_weight"] / (271 * w["undesirable_weight"]) == pytest.approx(7 / 6)
        assert (w["desirable_weight"] == 1.0) == (mode == "undesirable")
    inside = balance_class_weights(600, 500, 1.0, 1.0, mode="undesirable")  # ratio 1.2: left as given
    assert (inside["desirable_weight"], inside["undesirable_weight"], inside["trl_warning"]) == (1.0, 1.0, None)
    with pytest.raises(InputError, match="balance_weights"):
        balance_class_weights(1, 1, 1.0, 1.0, mode="auto")
