"""Peer check of the whole KTO step against TRL 1.16's `KTOTrainer` (PyTorch): the same tiny random Llama (policy
and reference), the same batches and KL rows, AdamW + clipping + cosine schedule on both sides; the per-step losses
of the first updates must agree (bench/kto_vs_trl.py runs the same comparison on SmolLM2 and times it)."""
import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def bench_module():
    spec = importlib.util.spec_from_file_location("kto_vs_trl", REPO / "bench" / "kto_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_kto_losses_match_trl_kto_trainer(tiny_hf_dirs):
    pytest.importorskip("trl")
    bench = bench_module()
    model_dir = str(tiny_hf_dirs["llama"])
    batches = bench.make_batches(model_dir, steps=4, batch_size=4, max_length=128)
    # a large learning rate, so that the updates move the losses measurably (update 1 alone has z0 = 0 and r = 0)
    lasa = bench.run_lasa(model_dir, batches, lr=1e-3, beta=0.1, chunk=64)
    trl = bench.run_trl(model_dir, batches, lr=1e-3, beta=0.1)
    assert lasa["losses"][0] == pytest.approx(0.5, abs=1e-6)  # policy = reference: every loss term is sigma(0)
    assert len(set(round(x, 4) for x in trl["losses"])) > 1  # the updates change the loss
    for step, (a, b) in enumerate(zip(lasa["losses"], trl["losses"]), 1):
        assert a == pytest.approx(b, abs=2e-4), step
