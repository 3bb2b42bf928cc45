"""Stage 2: the Safety Semantic Interpreter (SSI), an MLP on the residual stream at the semantic bottleneck.

    from lasa_jax.ssi import load_ssi, SSIScorer
    scorer = SSIScorer(model, load_ssi(ssi_dir))       # model: the frozen base model the SSI was trained on
    probs, flags = scorer.score(["How do I ...?", ...])  # p(harmful) (N,) float32, flags (N,) bool

Modules: `mlp` (the network), `training` (optax training with early stopping), `metrics` (thresholds, per-language
metrics, AUROC, plot), `features` (truncated-trunk features with a disk cache), `artifact` (the one on-disk schema,
loading, the scorer), `data` (the splits and evaluation sets), `stage` (the SSI stage: `run`, `train_ssi`, what
`python -m lasa_jax.scripts.train_ssi` runs; `pipeline` is its old import path).
"""
from lasa_jax.ssi.artifact import SSI, SSIConfig, SSIScorer, check_base_model, load_ssi, save_ssi
from lasa_jax.ssi.data import load_ssi_data
from lasa_jax.ssi.features import prompt_features, tokenization_fingerprint
from lasa_jax.ssi.metrics import choose_threshold, classification_metrics, evaluate_by_language, roc_auc
from lasa_jax.ssi.mlp import SSIClassifier, new_classifier, resolve_hidden_dims
from lasa_jax.ssi.stage import train_ssi
from lasa_jax.ssi.training import TrainResult, TrainSettings, predict_logits, train_classifier

__all__ = ["SSI", "SSIConfig", "SSIScorer", "SSIClassifier", "TrainResult", "TrainSettings", "check_base_model",
           "choose_threshold", "classification_metrics", "evaluate_by_language", "load_ssi", "load_ssi_data",
           "new_classifier", "predict_logits", "prompt_features", "resolve_hidden_dims", "roc_auc", "save_ssi",
           "tokenization_fingerprint", "train_classifier", "train_ssi"]
