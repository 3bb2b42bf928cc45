"""Stage 3 (Inject): Latent KTO fine-tuning with the conditional prefix on rows labelled unsafe.

    python -m lasa_jax.scripts.train_kto --config=configs/kto.py --config.model_path=BASE_DIR \
        --config.data.path=PAIRS.json --config.data.format=paired_json --workdir=DIR

Defaults are the reference run's (lr 1e-6, beta 0.1, max length 512, 3 epochs, 16 rows per update, cosine with
100 warmup steps, grad norm 1.0, seed 42, latent labels: safety rows unsafe with probability 0.5). Rerunning the
same command resumes from <workdir>/checkpoints; the trained policy is exported to <workdir>/hf_export.
Every field is read and checked by lasa_jax/kto/settings.py; see lasa_jax/kto/trainer.py for the run and
lasa_jax/kto/step.py for the step.
"""
import ml_collections

from lasa_jax.infra.base_config import base_config
from lasa_jax.models.chat import CONDITIONAL_PREFIX


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.dtype = "float32"            # policy parameters and AdamW state: float32 master weights (a 1e-6 update is
                                   # below bfloat16 resolution); "bfloat16" halves memory but stalls small updates
    c.compute_dtype = "bfloat16"   # matmuls/activations ("" = dtype); log-softmax and the loss are float32
    c.init_from = ""               # HF directory to initialise the policy from ("" = model_path), e.g. an SFT
                                   # checkpoint of model_path; only used when the workdir has no checkpoint.
                                   # model_path stays the base model (tokenizer; SSI labels score prompts on it)
    c.remat_policy = "full"        # none | full | minimal (rematerialisation of each block in the backward pass)
    c.scan_layers = True
    c.prefix = CONDITIONAL_PREFIX  # injected after the assistant header of rows labelled unsafe
    c.template_kwargs = ""         # JSON object of chat-template variables, e.g. '{"enable_thinking": false}'
                                   # (Qwen3); "" = the template's defaults (the reference run)

    c.data = ml_collections.ConfigDict()
    c.data.path = ""               # file (comma-separated list allowed) or, for polyrefuse_completions, the root
    c.data.format = "paired_json"  # paired_json | unpaired_jsonl | polyrefuse_completions
    c.data.root = "../shared/data"  # shared data folder: held-out guard references, PolyRefuse harmless prompts
    c.data.allow_missing_held_out = False  # True: guard with whichever held-out files exist under data.root (demo)
    c.data.max_length = 512        # padded sequence length; over-long completions are tail-truncated (no
                                   # end-of-turn), rows are dropped only when the prompt leaves no room
    c.data.truncate_completions = True  # False: the old rule, rows whose whole completion cannot fit are dropped
    c.data.max_prompt_length = 0   # > 0: cap on template + prefix tokens (oldest user tokens dropped first)
    c.data.polyrefuse = ml_collections.ConfigDict()
    c.data.polyrefuse.models = "auto"  # comma-separated model folders | "auto": the run's family (config.json
                                   # model_type llama -> Meta-Llama-3.1-8B-Instruct, qwen2/qwen3 ->
                                   # Qwen2.5-7B-Instruct), all folders when the family has none (logged) | "all"
    c.data.polyrefuse.languages = ""  # comma-separated ISO 639-1 codes ("" = all)
    c.data.polyrefuse.modes = "baseline,harm_ablation"
    c.data.polyrefuse.source = "safety"
    # benign rows: the base model's greedy answers to PolyRefuse harmless-train prompts (desirable, no prefix in
    # "paper" label mode), generated once and cached (lasa_jax.kto.benign); they make `share` of the mixed rows
    c.data.benign = ml_collections.ConfigDict()
    c.data.benign.share = 0.2      # fraction of the training rows (0 = none); needs data.root/polyrefuse
    c.data.benign.languages = ""   # comma-separated ISO codes ("" = the languages of the loaded rows)
    c.data.benign.max_prompts = 800  # bound on the prompts generated (round-robin over languages; PolyRefuse has
                                   # 200 harmless-train prompts per language); lower it for cheap CPU runs
    c.data.benign.max_new_tokens = 256
    c.data.benign.batch_size = 16
    c.data.benign.cache_dir = ""   # "" = <LASA_JAX_CACHE or ~/.cache/lasa-jax>/kto_benign

    c.labels = ml_collections.ConfigDict()
    c.labels.mode = "paper"        # paper: is_unsafe drawn per row with a per-source probability | ssi: SSI flag
    c.labels.unsafe_prob_by_source = "safety=0.5"  # paper mode ("source=prob,..."); other sources: default_prob
    c.labels.default_prob = 0.0
    c.labels.seed = 42
    c.labels.ssi_dir = ""          # ssi mode: the SSI artifact directory (<ssi workdir>/ssi)

    c.reference = ml_collections.ConfigDict()
    c.reference.mode = "auto"      # auto (= precomputed where possible: lasa_jax.memory_plan.resolve_reference_mode)
                                   # | online | precomputed (log-probs computed once, the reference model freed)
    c.reference.path = ""          # HF directory of the frozen reference ("" = the initial policy: init_from if
                                   # set, else model_path, as TRL; rewards then start at 0). Same architecture;
                                   # recorded by weight fingerprint in the run identity (a resume must match)
    c.reference.dtype = "bfloat16" # reference parameter dtype ("" = dtype); it computes in compute_dtype

    c.train = ml_collections.ConfigDict()
    c.train.num_epochs = 3
    c.train.num_steps = 0          # > 0: train exactly this many updates (overrides num_epochs)
    c.train.batch_size = 16        # global rows per update (the reference: 2 per device x 2 accumulation x 4)
    c.train.grad_accum_steps = 1   # micro-batches per update; z0 is computed per micro-batch (as TRL)
    c.train.drop_last = True       # False: a final partial batch per epoch is padded (masked rows)
    c.train.learning_rate = 1e-6
    c.train.warmup_steps = 100     # capped at the total number of steps
    c.train.weight_decay = 0.0     # AdamW (HF default 0); applies to matrices only
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.999
    c.train.adam_eps = 1e-8
    c.train.max_grad_norm = 1.0    # <= 0: no clipping
    c.train.beta = 0.1
    c.train.desirable_weight = 1.0
    c.train.undesirable_weight = 1.0
    c.train.balance_weights = "undesirable"  # "" (weights as given; TRL's range check only warns) | "undesirable" |
                                   # "desirable": when n_d*w_d / (n_u*w_u) (kept rows) is outside TRL's
                                   # recommended [1, 4/3], rescale that weight to make the ratio 7/6
    c.train.length_buckets = "auto"  # each batch trimmed to the smallest bucket holding its longest row: "auto"
                                   # (64, 128, ... below max_length, then max_length) | "off" | e.g. "128,256"
    c.train.logits_chunk_size = 128  # positions per log-softmax block (0 = whole sequence at once)
    c.train.log_every_steps = 10
    c.train.peak_flops_per_device = ml_collections.config_dict.placeholder(float)  # e.g. 459e12 (v5p bf16) for
                                   # the MFU columns; unset: looked up from the TPU's device kind
                                   # (lasa_jax.presets), FLOP/s only on CPU/GPU

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100  # <= 0: only at the end and on SIGTERM
    c.checkpoint.max_to_keep = 2
    c.checkpoint.async_save = True

    c.export = ml_collections.ConfigDict()
    c.export.enabled = True
    c.export.path = ""             # "" = <workdir>/hf_export
    c.export.dtype = "bfloat16"    # "" = dtype

    c.tensorboard = True
    c.progress_bar = True
    return c
