"""The demo on a tiny random Llama-family model (for tests and for a quick look at the mechanics), on CPU.

    python -m lasa_jax.scripts.demo --config=configs/demo_tiny.py --workdir=demo_tiny

model_path is "": `python -m lasa_jax.scripts.demo` then builds the random model and its tokenizer (trained on the
demo texts) in <workdir>/base_model and writes the evaluation file; the data is the project's own multilingual demo
set (lasa_jax/demo_data), wired as in configs/demo.py. A random tiny model shows the mechanics of LASA, not the
paper's effect. `make demo` (configs/demo.py) runs the real SmolLM2-135M-Instruct instead.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "lasa_configs_demo", os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)
_pipeline = _demo._pipeline


def get_config():
    c = _pipeline.build("", "cpu")
    c.model_path = ""                         # "": the demo script builds the random tiny model in <workdir>/base_model
    _demo.demo_data_config(c)
    _pipeline.float32_everywhere(c)

    c.locate.selection.num_bootstrap = 100
    c.locate.report.tsne_max_iter = 250
    c.ssi.threshold.rule = "accuracy"         # a random model's SSI is weak: the FPR-bounded rule would flag nothing
    c.ssi.train.num_epochs = 30

    c.kto.data.max_length = 192
    c.kto.remat_policy = "none"
    c.kto.train.num_steps = 40
    c.kto.train.batch_size = 8
    c.kto.train.learning_rate = 1e-4         # the paper's 1e-6 would not move a random model in 40 steps
    c.kto.train.warmup_steps = 5
    c.kto.train.log_every_steps = 5
    c.kto.checkpoint.every_steps = 20

    c.generate.decoding.max_new_tokens = 24
    c.generate.decoding.batch_size = 16
    c.report_note = ("A random tiny model (configs/demo_tiny.py): it shows the mechanics of every stage, not the "
                     "paper's effect.")
    return c
