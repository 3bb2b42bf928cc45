"""Benchmark: SSI training epoch (lasa_jax, one compiled lax.scan per epoch) vs the same MLP in PyTorch eager.

Setting: the paper-size SSI, d_model = hidden = 4,096 (Llama-3.1-8B width; 16.8M parameters), PolyRefuse en/zh/ko
training-set size (1,380 rows) and batch 64 (22 steps per epoch), AdamW + grad clipping, dropout 0.1, float32.
Features are synthetic (two shifted Gaussian clouds). Timings are the best of EPOCHS back-to-back epochs after a
warm-up epoch (jit compile), CPU unless jax/torch see an accelerator. Also: scoring throughput and the threshold
search / AUROC on 20,000 scores vs sklearn's roc_auc_score.
Run: .venv/bin/python bench/ssi.py. The last line printed is one JSON object.
"""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from lasa_jax.ssi.metrics import choose_threshold
from lasa_jax.ssi.training import TrainSettings, predict_logits, train_classifier
from lasa_jax.statistics import roc_auc

D_MODEL, HIDDEN, N_TRAIN, N_VAL, BATCH = 4096, 4096, 1380, 717, 64
EPOCHS = 2


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.56).astype(np.int64)
    x = rng.standard_normal((n, D_MODEL)) * 2.0 + 0.05 * labels[:, None]
    return x.astype(np.float32), labels


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_lasa_jax(x, y, xv, yv) -> dict:
    settings = TrainSettings(num_epochs=1, patience=100, lr_plateau_patience=0)
    compile_and_one, _ = timed(lambda: train_classifier(x, y, xv, yv, hidden_dims=(HIDDEN,), dropout=0.1,
                                                         settings=settings))
    one_epoch = min(timed(lambda: train_classifier(x, y, xv, yv, hidden_dims=(HIDDEN,), dropout=0.1,
                                                   settings=settings))[0] for _ in range(EPOCHS))
    result = train_classifier(x, y, xv, yv, hidden_dims=(HIDDEN,), dropout=0.1, settings=settings)
    scoring_rows = np.concatenate([xv] * 14)[:10000]
    predict_logits(result.classifier, scoring_rows)  # warm-up
    score_s, _ = timed(lambda: predict_logits(result.classifier, scoring_rows))
    return {"first_epoch_with_compile_s": compile_and_one, "epoch_s": one_epoch,
            "score_10k_rows_s": score_s, "num_params": result.classifier.num_params()}


def bench_torch(x, y) -> dict:
    """The reference's SimpleMLP layout and optimiser step, eager PyTorch, same batches."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(D_MODEL, HIDDEN), torch.nn.LayerNorm(HIDDEN), torch.nn.GELU(),
                                torch.nn.Dropout(0.1), torch.nn.Linear(HIDDEN, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))

    def epoch():
        model.train()
        for start in range(0, N_TRAIN, BATCH):
            optimizer.zero_grad()
            loss = loss_fn(model(xt[start:start + BATCH])[:, 0], yt[start:start + BATCH])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    epoch()  # warm-up
    return {"epoch_s": min(timed(epoch)[0] for _ in range(EPOCHS)), "threads": torch.get_num_threads()}


def bench_metrics() -> dict:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20000)
    scores = 1 / (1 + np.exp(-(rng.standard_normal(20000) + labels)))
    threshold_s, _ = timed(lambda: choose_threshold(labels, scores, "tpr_at_fpr", 0.05))
    auroc_s, ours = timed(lambda: roc_auc(labels, scores))
    sklearn_s, theirs = timed(lambda: roc_auc_score(labels, scores))
    return {"choose_threshold_20k_s": threshold_s, "roc_auc_20k_s": auroc_s, "sklearn_roc_auc_20k_s": sklearn_s,
            "auroc_abs_diff": abs(ours - theirs)}


def main() -> None:
    x, y = synthetic(N_TRAIN, 0)
    xv, yv = synthetic(N_VAL, 1)
    print(f"SSI bench: d_model {D_MODEL}, hidden {HIDDEN}, {N_TRAIN} training rows, batch {BATCH}; jax "
          f"{jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    ours = bench_lasa_jax(x, y, xv, yv)
    reference = bench_torch(x, y)
    metrics = bench_metrics()
    print(f"[train] lasa_jax epoch {ours['epoch_s']:.2f} s (first epoch incl. compile "
          f"{ours['first_epoch_with_compile_s']:.2f} s; includes the validation pass), PyTorch eager epoch "
          f"{reference['epoch_s']:.2f} s ({reference['threads']} threads): ratio "
          f"{reference['epoch_s'] / ours['epoch_s']:.2f}x; 20 epochs ~ {20 * ours['epoch_s']:.0f} s")
    print(f"[score] 10,000 feature rows in {ours['score_10k_rows_s']:.3f} s")
    print(f"[metrics] threshold search {metrics['choose_threshold_20k_s'] * 1e3:.1f} ms, AUROC "
          f"{metrics['roc_auc_20k_s'] * 1e3:.1f} ms (sklearn {metrics['sklearn_roc_auc_20k_s'] * 1e3:.1f} ms), "
          f"|diff| {metrics['auroc_abs_diff']:.2e}")
    print(json.dumps({"bench": "ssi", "d_model": D_MODEL, "hidden": HIDDEN, "n_train": N_TRAIN,
                      "lasa_jax": ours, "torch": reference, "metrics": metrics}))


if __name__ == "__main__":
    main()
