"""Stage 1 (Locate): find the semantic bottleneck layer k*.

    python -m lasa_jax.scripts.locate --config=configs/locate.py --config.model_path=DIR \
        --config.data.root=../shared/data --workdir=DIR

Writes <workdir>/{config.json, bottleneck.json, layers.csv, bottleneck_layers.png, tsne_layer<k>.png,
activations.npz, activations.json}; see lasa_jax/locate/stage.py. Quick run: --config.data.max_groups_per_source=20
--config.selection.num_bootstrap=50. Demo data: --config.data.source=jsonl
--config.data.path=lasa_jax/demo_data/prompts.jsonl (train split only).
"""
import ml_collections

from lasa_jax.data.languages import MULTIJAIL_LANGUAGES
from lasa_jax.infra.base_config import base_config


def get_config() -> ml_collections.ConfigDict:
    c = base_config()              # model_path, dtype, compute_dtype, seed (data subsampling + bootstrap), mesh
    c.pooling = "last"             # last real token (the paper) | mean
    c.chat_template = False        # False: raw prompt text (the paper); True: rendered with the chat template
    c.template_kwargs = ""         # JSON object of chat-template variables, e.g. '{"enable_thinking": false}'
    c.max_length = 512             # token budget per text (the paper's truncation)
    c.capture_batch_size = 0       # texts per forward pass (a multiple of the mesh's data x fsdp); 0 = auto (>= 8)
    c.reuse_activations = True     # load <workdir>/activations.npz when its stored key matches these inputs
    c.progress = True              # progress bar during capture

    c.data = ml_collections.ConfigDict()
    c.data.source = "default"      # default | jsonl | hub | translated_json | multijail (held out: allow_held_out)
    c.data.root = "../shared/data"  # shared data folder (flores200_sib200/, polyrefuse/), used by source "default"
    c.data.path = ""               # jsonl / translated_json file, MultiJail.csv, or the hub data set id ("hub")
    c.data.languages = MULTIJAIL_LANGUAGES  # ISO 639-1 codes analysed (a group needs >= min_languages of them)
    c.data.min_languages = 2
    c.data.max_groups_per_source = 100  # groups drawn per source (flores, polyrefuse/<kind>_<split>, ...); 0 = all
    c.data.splits = ("train",)     # jsonl: keep rows whose `split` is one of these (and rows without one); () = all
    c.data.hub_split = "train"     # hub: datasets split
    c.data.hub_data_files = ""     # hub: data_files (e.g. with data.path="json")
    c.data.hub_cache_dir = ""      # hub: datasets cache folder ("" = the datasets default)
    c.data.allow_missing_held_out = False  # True: run the held-out guard with whichever of MultiJail, XSTest,
    #                                OR-Bench-hard-test, OKTest exist under data.root (none: skipped); the offline demo
    c.data.allow_held_out = False  # permit MultiJail / held-out sources (analysis only; never for the real k*);
    #                                False: every source but multijail goes through the held-out guard
    #                                (lasa_jax.data.heldout; MultiJail, XSTest, OR-Bench-hard-test, OKTest)
    # Source confound: in the default corpus vi, bn, sw, jv come only from FLORES (benign news) while the other six
    # languages also come from PolyRefuse (requests), so S_lang partly measures source/domain. True keeps only the
    # sources present in every requested language (all ten: FLORES only); per-source counts per language are in
    # activations.json and bottleneck.json ("corpus").
    c.data.common_sources_only = False

    c.selection = ml_collections.ConfigDict()
    c.selection.metric = "cosine"  # silhouette distance: cosine (the paper) | euclidean (on unit vectors)
    c.selection.include_embeddings = False  # residual index 0 among the candidates
    c.selection.include_final = True        # residual index L (after the final norm) among the candidates:
    #                                         True = 1..L, the paper's selection; False = 1..L-1 (lasa-jax before)
    c.selection.num_bootstrap = 200         # query-group resamples for the interval and the pick share
    c.selection.bootstrap = "points"        # points: centred cluster bootstrap (lasa_jax/locate/selection.py);
    #                                         the biased "expanded" scheme was removed (an error names it)
    c.selection.confidence = 0.95

    # harmful-vs-benign probe per residual index, on the same features (lasa_jax/locate/probe.py): val AUROC in
    # bottleneck.json, layers.csv and the plot; split by query group; labelled rows only (PolyRefuse, FLORES = benign)
    c.probe = ml_collections.ConfigDict()
    c.probe.enabled = True
    c.probe.val_fraction = 0.25    # share of each class's query groups held out for the AUROC
    c.probe.c = 1.0                # inverse L2 strength, as sklearn LogisticRegression(C=...)
    c.probe.num_steps = 15         # full-batch Newton steps from zero

    c.report = ml_collections.ConfigDict()
    c.report.tsne_layers = "best"  # comma-separated residual indices and/or "best" (k*); "" = no t-SNE plot
    c.report.tsne_max_iter = 1000  # the reference's t-SNE setting (>= 250)
    return c
