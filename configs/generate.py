"""Generate stage: LASA (SSI-gated conditional prefix), prefix-only or baseline responses to evaluation prompts.

    python -m lasa_jax.scripts.generate --config=configs/generate.py --workdir=runs/lasa \
        --config.mode=lasa --config.model_path=ALIGNED --config.base_model_path=BASE --config.ssi_dir=SSI_DIR
    python -m lasa_jax.scripts.generate --config=configs/generate.py --workdir=runs/baseline \
        --config.mode=baseline --config.model_path=BASE_OR_INSTRUCT
    python -m lasa_jax.scripts.generate --config=configs/generate.py --workdir=runs/prefix_only \
        --config.mode=prefix_only --config.model_path=BASE --config.ssi_dir=SSI_DIR

Output: <workdir>/generations.jsonl (+ .meta.json); lasa_jax/generate/settings.py reads and checks these fields;
see lasa_jax/decoding/answers.py for the record format and lasa_jax/generate/stage.py for the stage.
"""
from ml_collections import config_dict

from lasa_jax.infra.base_config import base_config
from lasa_jax.models.chat import CONDITIONAL_PREFIX


def get_config():
    c = base_config()
    # model_path: the model that generates (the ALIGNED / KTO model for LASA; the model under test for baseline;
    # prefix_only: the base model itself, so model_path and base_model_path name the same model, either may be "")
    c.tokenizer_path = ""              # "" = model_path
    # lasa: SSI gate + prefix on the aligned model | prefix_only: SSI gate + prefix on the base model (no KTO) |
    # baseline: no gate, no prefix
    c.mode = "lasa"
    c.base_model_path = ""             # frozen base model the SSI was trained on (lasa and prefix_only modes)
    c.ssi_dir = ""                     # SSI artifact directory (gated modes; in baseline mode: scores recorded only)
    c.prefix = CONDITIONAL_PREFIX      # injected after the assistant header when the SSI flags a prompt
    # chat-template variables as a JSON object, e.g. '{"enable_thinking": false}' for Qwen3 ("" = none); applied
    # identically in both modes (and by KTO training, through the pipeline config)
    c.template_kwargs = ""
    c.max_prompt_length = 0            # 0 = no cut; else drop the oldest user-content tokens (chat.render_prompt)
    # evaluation prompts: comma-separated multijail, xstest_safe, xstest_unsafe, xstest, or_bench_hard_test,
    # oktest, jsonl:<path>, hub:<dataset id>
    c.eval_sets = "multijail,xstest_safe,or_bench_hard_test,oktest"
    c.data_root = "../shared/data"     # shared data layout (data/README.md there)
    c.languages = ""                   # MultiJail languages, comma-separated ("" = all ten)
    c.max_per_language = 0             # first n prompts per (set, language); 0 = all
    c.max_per_language_sets = ""       # comma-separated eval_sets entries max_per_language bounds ("" = all)
    c.hub = config_dict.ConfigDict(dict(name="", split="test", expected="", language="",
                                        field_map=""))  # field_map: JSON object {field: column}
    c.decoding = config_dict.ConfigDict(dict(max_new_tokens=512, temperature=0.0, top_p=1.0, top_k=0,
                                             batch_size=8))  # temperature 0 = greedy; sampling seed = c.seed
    c.eos_token_ids = ""               # comma-separated override; "" = model eos ids + template end-of-turn
    c.output = "generations.jsonl"
    c.chunk_size = 256                 # prompts per resumable chunk (appended to <output>.partial)
    c.resume = True                    # continue from <output>.partial if present
    c.progress = True
    return c
