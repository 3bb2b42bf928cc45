"""Stage 2 (Interpret): train the Safety Semantic Interpreter.

    python -m lasa_jax.scripts.train_ssi --config=configs/ssi.py --config.model_path=DIR \
        --config.locate_workdir=LOCATE_DIR --config.data.root=../shared/data --workdir=DIR

Writes <workdir>/ssi/ (config.json, params.safetensors, metrics.json, metrics_per_language.png). Train/val groups
holding a MultiJail, XSTest, OR-Bench-hard-test or OKTest prompt are dropped (held-out guard, lasa_jax.data.heldout;
the files under data.root are required unless data.allow_missing_held_out) and MultiJail is scored as the
evaluation-only set "multijail_harmful" (data.eval_multijail); lasa_jax/ssi/settings.py reads and checks these
fields; see lasa_jax/ssi/data.py for the data and lasa_jax/ssi/artifact.py for the artifact schema.
"""
import ml_collections

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.infra.base_config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()
    c.residual_index = -1          # k = HF hidden_states entry; -1 = best_layer from <locate_workdir>/bottleneck.json
    c.locate_workdir = ""
    c.pooling = "last"             # last real token (the paper) | mean
    c.chat_template = False        # False: raw prompt text (the paper); True: rendered with the chat template
    c.template_kwargs = ""         # JSON object of chat-template variables, e.g. '{"enable_thinking": false}'
    c.max_length = 512             # prompt token budget; longer prompts lose their oldest user-content tokens
    c.capture_batch_size = 0       # prompts per forward pass (a multiple of the mesh's data x fsdp); 0 = auto (>= 8)
    c.feature_cache_dir = ""       # "" = <workdir>/feature_cache
    c.overwrite = False            # replace an existing <workdir>/ssi

    c.data = ml_collections.ConfigDict()
    c.data.source = "polyrefuse"   # polyrefuse | jsonl | authors
    c.data.root = "../shared/data"  # shared data folder (polyrefuse/, flores200_sib200/), used by source polyrefuse
    c.data.train_languages = ("en", "zh", "ko")
    c.data.test_languages = tuple(lang for lang in MULTIJAIL_LANGUAGES if lang not in ("en", "zh", "ko"))
    c.data.include_flores = True   # FLORES-200 test sentences as benign FPR check (needs data.root)
    c.data.flores_split = "test"
    c.data.allow_missing_held_out = False  # True: run the held-out guard with whichever of MultiJail, XSTest,
    #                                OR-Bench-hard-test, OKTest exist under data.root (none: skipped); the offline demo
    c.data.eval_multijail = True   # MultiJail (held out) as an evaluation-only harmful set, per-language TPR; used
    #                                when <root>/multijail/MultiJail.csv exists, scored after training + threshold
    c.data.dedup_jaccard = 0.6     # drop val/test groups whose text nearly duplicates train (0 = off)
    c.data.dedup_language = "en"
    c.data.max_groups_per_split = 0  # > 0: at most this many groups per label in every split (quick runs)
    c.data.jsonl_path = ""         # source=jsonl: {prompt|text, language, label, group_id[, source, split]}
    c.data.jsonl_splits = ("train",)  # rows whose `split` is one of these (rows without a split count as train)
    c.data.unsafe_train_path = ""  # source=authors: data/ssi/unsafe_train.json of the reference code
    c.data.ultrafeedback_dir = ""  # source=authors: folder of monolingual_first1000_<lang>.json
    c.data.ultrafeedback_per_language = 200
    c.data.val_fraction = 0.2      # jsonl/authors: share of query groups for validation / test
    c.data.test_fraction = 0.2

    c.ssi = ml_collections.ConfigDict()
    c.ssi.hidden_dims = "d_model"  # comma-separated widths or "d_model"; the authors' DeepMLP: "256,128", dropout 0.2
    c.ssi.dropout = 0.1
    c.ssi.standardize = True       # fixed per-dimension standardisation of the features (training-set statistics)

    c.train = ml_collections.ConfigDict()
    c.train.learning_rate = 1e-3
    c.train.weight_decay = 1e-4
    c.train.grad_clip = 1.0
    c.train.batch_size = 64
    c.train.num_epochs = 20
    c.train.patience = 5
    c.train.early_stopping_metric = "loss"  # loss (class-balanced BCE) | auroc | accuracy | balanced_accuracy
    c.train.min_delta = 0.0
    c.train.class_balance = "pos_weight"    # pos_weight | balanced_batches | none
    c.train.lr_plateau_patience = 2         # 0 = constant learning rate
    c.train.lr_plateau_factor = 0.5

    c.threshold = ml_collections.ConfigDict()
    c.threshold.rule = "tpr_at_fpr"  # tpr_at_fpr (highest TPR with validation FPR <= fpr_bound) | accuracy; chosen
    #                                  on logits (stored as threshold_logit; threshold = its sigmoid)
    c.threshold.fpr_bound = 0.05
    return c
