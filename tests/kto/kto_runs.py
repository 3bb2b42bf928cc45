"""What the KTO tests share besides fixtures: the configs/kto.py config of the test runs (`RUN`: the tiny random
Llama of `tiny_hf_dirs` on the demo KTO rows), its settings, and comparisons of exported policies."""
import importlib.util
import pathlib

import jax
import numpy as np
from safetensors.numpy import load_file

from lasa_jax.kto.settings import KTOSettings, read_settings
from lasa_jax.sharding import make_mesh

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_KTO = REPO / "lasa_jax" / "demo_data" / "kto.jsonl"
TOTAL_STEPS = 24
SEQ_LEN = 288  # rows of the `examples` fixture: the tiny tokenizer's system block is ~90 tokens, the prefix ~65
# The run the run-level tests share (config overrides; the script test passes them as --config.<name>=<value>).
RUN = {"dtype": "float32", "compute_dtype": "float32", "remat_policy": "none", "reference.dtype": "float32",
       "data.format": "unpaired_jsonl", "data.max_length": 256, "train.batch_size": 4,
       "train.num_steps": TOTAL_STEPS, "train.learning_rate": 2e-3, "train.warmup_steps": 2,
       "train.logits_chunk_size": 64, "train.log_every_steps": 1, "checkpoint.every_steps": 8,
       "train.peak_flops_per_device": 1e12, "export.dtype": "float32", "progress_bar": False,
       # the demo rows: no shared data (held-out guard waived, no benign rows; tests/kto/test_data.py has both)
       "data.root": "", "data.allow_missing_held_out": True, "data.benign.share": 0.0,
       # the online reference, as before the default became "auto" (precomputed): the precomputed test compares
       "reference.mode": "online"}


def base_kto_config(model_dir, **overrides):
    """configs/kto.py with model_path = `model_dir` and `overrides` (dotted names) applied."""
    spec = importlib.util.spec_from_file_location("kto_config", REPO / "configs" / "kto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model_path = str(model_dir)
    for name, value in overrides.items():
        *parents, leaf = name.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def kto_config(model_dir, **overrides):
    """configs/kto.py on the demo rows with RUN and `overrides` (dotted names) applied."""
    return base_kto_config(model_dir, **{"data.path": str(DEMO_KTO), **RUN, **overrides})


def kto_settings(model_dir, **overrides) -> KTOSettings:
    """The settings of `kto_config(model_dir, **overrides)`."""
    return read_settings(kto_config(model_dir, **overrides))


def one_device_mesh():
    return make_mesh(devices=jax.devices()[:1])


def exported(workdir) -> dict[str, np.ndarray]:
    tensors = {}
    for file in sorted((pathlib.Path(workdir) / "hf_export").glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def assert_bit_identical(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == np.float32
        assert np.array_equal(a[name].view(np.uint32), b[name].view(np.uint32)), name
