"""SSI training: the weighted BCE, class-balanced batches, early stopping that restores the best epoch, and
seeded training that separates separable data under every class-balance mode."""
import dataclasses

import numpy as np
import pytest
import torch

from lasa_jax.ssi.mlp import flatten_params
from lasa_jax.ssi.training import TrainSettings, _epoch_batches, predict_logits, train_classifier, weighted_bce
from lasa_jax.statistics import roc_auc


def test_weighted_bce_and_class_balanced_batches():
    logits = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    labels = np.array([1, 0, 0, 1], np.float32)
    weights = np.array([3.0, 1.0, 1.0, 3.0], np.float32)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels),
                                                              reduction="none").numpy()
    assert float(weighted_bce(logits, labels, weights)) == pytest.approx(float((ref * weights).sum() / 8), rel=1e-6)
    train_labels = np.array([1] * 10 + [0] * 90)
    settings = TrainSettings(batch_size=16, class_balance="balanced_batches")
    rows, w = _epoch_batches(train_labels, settings, epoch=0, pos_weight=1.0)
    assert rows.shape == (7, 16) and (w == 1).all()
    assert (train_labels[rows].sum(axis=1) == 8).all()  # every batch half harmful
    rows, w = _epoch_batches(train_labels, TrainSettings(batch_size=16), epoch=0, pos_weight=9.0)
    real = w > 0
    assert sorted(rows[real].tolist()) == list(range(100))  # each row once per epoch, padding weighted 0
    assert set(w[real & (train_labels[rows] == 1)].tolist()) == {9.0}


def _noisy_problem():
    """64 training rows with 35% flipped labels, clean validation: validation accuracy rises, then falls as the
    network memorises the noise."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(32)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y = (x @ w > 0).astype(int)
    flip = rng.random(64) < 0.35
    y[flip] = 1 - y[flip]
    xv = rng.standard_normal((256, 32)).astype(np.float32)
    return x, y, xv, (xv @ w > 0).astype(int)


def test_early_stopping_restores_the_best_epoch_not_the_last():
    x, y, xv, yv = _noisy_problem()
    settings = TrainSettings(num_epochs=20, patience=5, early_stopping_metric="accuracy", batch_size=16,
                             learning_rate=3e-3, lr_plateau_patience=0, class_balance="none")
    result = train_classifier(x, y, xv, yv, hidden_dims=(256,), settings=settings)
    accuracy = [h["val_accuracy"] for h in result.history]
    assert 0 < result.best_epoch < result.epochs_run - 1 and result.epochs_run < settings.num_epochs
    assert accuracy[result.best_epoch] == max(accuracy) > accuracy[-1]
    restored = predict_logits(result.classifier, xv)  # the last epoch's parameters scored accuracy[-1] < this
    assert np.mean((restored > 0) == (yv == 1)) == accuracy[result.best_epoch]
    # the restored parameters are exactly those after epoch best_epoch (a run is a prefix of any longer run)
    prefix = train_classifier(x, y, xv, yv, hidden_dims=(256,),
                              settings=dataclasses.replace(settings, num_epochs=result.best_epoch + 1))
    assert prefix.history == result.history[:result.best_epoch + 1] and prefix.best_epoch == result.best_epoch
    best, at_best_epoch = flatten_params(result.classifier), flatten_params(prefix.classifier)
    for name in best:
        np.testing.assert_array_equal(best[name], at_best_epoch[name])


def test_training_separates_separable_data_and_is_seeded():
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(16)

    def sample(n):
        x = rng.standard_normal((n, 16)).astype(np.float32) * 3 + 10  # off-centre, unnormalised features
        return x, (x @ direction > 10 * direction.sum()).astype(int)

    (x, y), (xv, yv), (xt, yt) = sample(1000), sample(200), sample(200)
    for balance in ("pos_weight", "balanced_batches", "none"):
        settings = TrainSettings(num_epochs=15, class_balance=balance, seed=3)
        a = train_classifier(x, y, xv, yv, hidden_dims=(32,), dropout=0.1, settings=settings)
        assert roc_auc(yt, predict_logits(a.classifier, xt)) > 0.95, balance
    b = train_classifier(x, y, xv, yv, hidden_dims=(32,), dropout=0.1, settings=settings)
    assert a.history == b.history
    np.testing.assert_array_equal(predict_logits(a.classifier, xt), predict_logits(b.classifier, xt))
    with pytest.raises(ValueError, match="harmful"):
        train_classifier(x, np.zeros(len(x), int), xv, yv, settings=settings)
    with pytest.raises(ValueError, match="class_balance"):
        TrainSettings(class_balance="oversample")
