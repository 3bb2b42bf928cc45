"""The embedded offline demo (`make demo`): every stage on a tiny random Llama-family model, on CPU, in minutes.

The model, its tokenizer and the evaluation file are built by `python -m lasa_jax.scripts.demo`, which fills in
model_path and the data paths; the data is the project's own multilingual demo set (lasa_jax/demo_data). A random
tiny model shows the mechanics of LASA, not the paper's effect.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "lasa_configs_pipeline", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py"))
_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pipeline)

DEMO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lasa_jax", "demo_data")


def get_config():
    c = _pipeline.build("", "cpu")
    c.dtype = "float32"
    c.residual_index = -1                    # use the layer the Locate stage selects
    c.data_root = ""                          # the demo uses no shared data (only lasa_jax/demo_data)

    c.locate.dtype = "float32"
    c.locate.data.source = "jsonl"
    c.locate.data.path = os.path.join(DEMO_DATA, "prompts.jsonl")
    c.locate.data.splits = ("train",)
    c.locate.data.max_groups_per_source = 0
    c.locate.data.allow_missing_held_out = True  # no shared data: the held-out guard has nothing to compare with
    c.locate.selection.num_bootstrap = 100
    c.locate.report.tsne_max_iter = 250

    c.ssi.dtype = "float32"
    c.ssi.data.source = "jsonl"
    c.ssi.data.jsonl_path = os.path.join(DEMO_DATA, "prompts.jsonl")
    c.ssi.data.jsonl_splits = ("train",)
    c.ssi.data.include_flores = False
    c.ssi.data.allow_missing_held_out = True
    c.ssi.data.eval_multijail = False
    c.ssi.data.train_languages = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")  # the demo's own data
    c.ssi.data.test_languages = ()
    c.ssi.threshold.rule = "accuracy"         # a random model's SSI is weak: the FPR-bounded rule would flag nothing
    c.ssi.train.num_epochs = 30

    c.kto.data.format = "unpaired_jsonl"
    c.kto.data.path = os.path.join(DEMO_DATA, "kto.jsonl")
    c.kto.data.max_length = 192
    c.kto.data.allow_missing_held_out = True
    c.kto.data.benign.share = 0.0             # the demo set has its own helpful answers (source "helpful")
    c.kto.compute_dtype = "float32"
    c.kto.reference.dtype = "float32"
    c.kto.remat_policy = "none"
    c.kto.train.num_steps = 40
    c.kto.train.batch_size = 8
    c.kto.train.learning_rate = 1e-4         # the paper's 1e-6 would not move a random model in 40 steps
    c.kto.train.warmup_steps = 5
    c.kto.train.log_every_steps = 5
    c.kto.checkpoint.every_steps = 20
    c.kto.export.dtype = "float32"

    c.generate.dtype = "float32"
    c.generate.eval_sets = ""                 # set by the demo script: jsonl:<workdir>/data/demo_eval.jsonl
    c.generate.decoding.max_new_tokens = 24
    c.generate.decoding.batch_size = 16

    c.evaluate.dtype = "float32"
    # the held-out demo prompts (prompts.jsonl split "eval": groups 17..24 of each label, 10 languages, source "demo"):
    # ASR on the 80 harmful ones, refusal rate on the 80 benign ones, for baseline, prefix_only and lasa
    c.evaluate.asr_sources = "demo"
    c.evaluate.refusal_sources = "demo"
    return c
