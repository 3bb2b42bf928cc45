"""Evaluate stage: judge the generations of several systems (baseline, prefix-only, LASA, ...), write report.md /
report.json / charts.

    python -m lasa_jax.scripts.evaluate --config=configs/evaluate.py --workdir=runs/eval \
        --config.baseline_generations=runs/baseline/generations.jsonl \
        --config.prefix_only_generations=runs/prefix_only/generations.jsonl \
        --config.lasa_generations=runs/lasa/generations.jsonl \
        --config.judge.safety=llama_guard --config.judge.model_path=/models/Llama-Guard-3-8B

The default safety judge ("auto") is the calibrated n-gram judge (lasa_jax/evaluate/ngram_judge.py), trained once on
the even rows of <data_root>/polyrefuse_completions and cached; without that folder it falls back to the
refusal-phrase heuristic (a warning, and the report says which judge ran and its calibration or "not calibrated").
The dtype / compute_dtype / mesh fields of the base config apply to the judge models (model_path is not used:
judge.model_path names the judge) and to the utility models (`utility.models`: system -> HF directory).
"""
from ml_collections import config_dict

from lasa_jax.infra.base_config import base_config


def get_config():
    c = base_config()
    c.baseline_generations = ""        # generation JSONL of the baseline system ("" = none)
    c.prefix_only_generations = ""     # generation JSONL of the prefix-only ablation (base model + SSI + prefix)
    c.lasa_generations = ""            # generation JSONL of the LASA system ("" = none)
    c.generations = ""                 # further systems: comma-separated name=path pairs (report columns after these)
    c.asr_sources = "multijail"        # comma-separated sources whose harmful prompts give the per-language ASR
    c.refusal_sources = "xstest,or_bench_hard_test,oktest"  # sources judged for (over-)refusal
    c.paired = True                    # compare systems on the ids present in all of them
    c.z = 1.96                         # Wilson interval normal quantile (1.96 = 95%)
    c.progress = True
    c.data_root = ""                   # shared data folder; its polyrefuse_completions/ trains the calibrated judge
    c.judge = config_dict.ConfigDict(dict(
        # auto (calibrated if the labelled data exists, else heuristic) | calibrated | heuristic | llama_guard |
        # rubric (MultiJail safe/unsafe/invalid rubric)
        safety="auto",
        labelled_dir="",               # WildGuard-labelled responses ("" = <data_root>/polyrefuse_completions)
        calibration="",                # calibration.json of the safety judge (scripts.calibrate_judge); "" = find
                                       # it (n-gram judge: stored with it; heuristic: measured on the odd half)
        refusal="heuristic",           # heuristic | rubric (XSTest-style refusal rubric) | none
        model_path="",                 # judge model for llama_guard / rubric (local HF directory)
        refusal_model_path="",         # refusal rubric model ("" = model_path)
        batch_size=8,
        max_new_tokens=32,
        template_kwargs="",            # judge chat-template variables, JSON, e.g. '{"enable_thinking": false}'
        cache_dir="",                  # verdict caches judge_cache_{safety,refusal}.jsonl ("" = workdir)
        cache_batch_size=64,           # pairs per judge call between cache appends
    ))
    # Utility beside safety (lasa_jax.evaluate.utility): SIB-200 topic accuracy and FLORES NLL per language of
    # each model in `models` (loaded with the dtype/mesh above); not run (one report line) without FLORES data.
    c.utility = config_dict.ConfigDict(dict(
        enabled=True,
        data_root="",                  # folder holding flores200_sib200/ (the pipeline sets its data_root)
        languages="en,zh,it,vi,ar,ko,th,bn,sw,jv",
        max_sentences=50,              # per language and metric (0 = the whole split: test 204, dev 99)
        split="test",                  # SIB-200 split classified: test | dev (never train)
        nll_split="dev",               # FLORES split for per-token NLL: dev | test
        k_shot=0,                      # shots from the train split of the same language
        normalization="none",          # label score: none (summed log-prob) | token (mean per label token)
        batch_size=8,                  # prompts per batch (0 = default)
        seed=0,                        # which sentences / shots are drawn
        tokenizer_path="",             # "" = models.baseline (every system is tokenised the same way)
        models=config_dict.ConfigDict(dict(baseline="", lasa="")),  # system -> HF model directory ("" = skip)
    ))
    return c
