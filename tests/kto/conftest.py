"""Fixtures of the KTO tests: the tiny Llama and its runs, an SSI for it, tokenised demo rows and batches."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from lasa_jax.data.preference.formats import load_unpaired_jsonl
from lasa_jax.data.preference.rows import PreferenceRow
from lasa_jax.kto.batches import iterate_kto_batches
from lasa_jax.kto.examples import tokenize_rows
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.kto.trainer import train_kto
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.hf_export import save_pretrained
from lasa_jax.models.loading import load_tokenizer
from lasa_jax.testing import build_tokenizer
from tests.kto.kto_runs import DEMO_KTO, SEQ_LEN, kto_settings, one_device_mesh

QUESTIONS = ["How do I bake bread at home?", "What is the capital of France?", "Please explain photosynthesis.",
             "如何在家烤面包？", "집에서 빵을 굽는 방법은?", "Qual è la capitale della Francia?",
             "Thủ đô của Pháp là gì?", "كيف أخبز الخبز في المنزل؟", "Ninawezaje kuoka mkate nyumbani?",
             "Piye carane nggawe roti ing omah?", "ฉันจะอบขนมปังที่บ้านได้อย่างไร", "আমি কীভাবে বাড়িতে রুটি বানাব?"]


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """Persistent XLA cache for a test module (identical programs compile once, in process and in the subprocess
    runs that get its directory), restored afterwards. It does not change numerics."""
    directory = str(tmp_path_factory.mktemp("xla_cache"))
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield directory
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    jax_compilation_cache.reset_cache()  # later modules compile without it, as before


@pytest.fixture(scope="session")
def llama_dir(tiny_hf_dirs):
    return tiny_hf_dirs["llama"]


@pytest.fixture(scope="session")
def reference_run(llama_dir, tmp_path_factory):
    """The uninterrupted RUN (online reference) in process: (workdir, TrainResult)."""
    workdir = tmp_path_factory.mktemp("reference_run")
    result = train_kto(kto_settings(llama_dir), str(workdir), one_device_mesh())
    return workdir, result


@pytest.fixture(scope="module")
def demo_batches(llama_dir):
    """The first batches of the RUN data (batch 4, 256 positions) as KTOBatch objects."""
    rows = assign_latent_labels(load_unpaired_jsonl(DEMO_KTO), seed=42)
    # the rows that fit whole (no tail-truncated ones): the numerics tests compare step-1 losses at float32 rounding
    examples, _ = tokenize_rows(rows, load_tokenizer(str(llama_dir)), max_length=256, truncate_completions=False)
    iterator = iterate_kto_batches(examples, batch_size=4, seq_len=256, pad_id=0, seed=42)
    return [next(iterator)[0] for _ in range(2)]


@pytest.fixture(scope="session")
def llama_ssi(llama_dir, tmp_path_factory):
    """An SSI trained on nothing, for the tiny Llama: residual 2, a linear head, the threshold at the median score
    of the first 40 demo rows' prompts. Returns (SSI directory, those rows, {prompt: harmful flag})."""
    from lasa_jax.ssi.artifact import SSI, SSIConfig, SSIScorer, save_ssi
    from lasa_jax.ssi.features import tokenization_fingerprint
    from lasa_jax.ssi.mlp import new_classifier

    base = from_pretrained(llama_dir)
    tokenizer = load_tokenizer(str(llama_dir))
    rows = load_unpaired_jsonl(DEMO_KTO)[:40]
    prompts = sorted({r.prompt for r in rows})
    ssi_config = SSIConfig(residual_index=2, threshold=0.5, d_model=base.config.hidden_size, hidden_dims=(),
                           pooling="last", chat_template=False, base_model_fingerprint=base.fingerprint,
                           train_languages=("en",), max_length=64, base_model_path=str(llama_dir),
                           base_model_num_layers=base.config.num_layers, base_model_dtype="float32",
                           tokenizer_check=tokenization_fingerprint(tokenizer, chat_template=False, max_length=64))
    ssi = SSI(ssi_config, new_classifier(base.config.hidden_size, (), 0.0, seed=0))
    probabilities, _ = SSIScorer(base, ssi).score(prompts)
    threshold = float(np.median(probabilities))  # about half of the prompts flagged
    ssi = SSI(dataclasses.replace(ssi_config, threshold=threshold), ssi.classifier)
    ssi_dir = tmp_path_factory.mktemp("llama_ssi") / "ssi"
    save_ssi(ssi_dir, ssi)
    return ssi_dir, rows, dict(zip(prompts, probabilities > threshold))


@pytest.fixture(scope="module")
def sft_llama_dir(llama_dir, tmp_path_factory):
    """The tiny Llama's architecture with other weights (every parameter moved by N(0, 0.02^2)): an SFT stand-in."""
    model = from_pretrained(llama_dir)
    rng = np.random.default_rng(5)
    model.set_params(jax.tree.map(lambda x: x + 0.02 * rng.standard_normal(x.shape).astype(np.float32),
                                  model.params()))
    out = tmp_path_factory.mktemp("sft_llama")
    save_pretrained(model, out, overwrite=True)
    return out


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny Llama-3 tokenizer of `lasa_jax.testing`."""
    return build_tokenizer(tmp_path_factory.mktemp("tok"), "llama3")


@pytest.fixture(scope="module")
def pair_rows():
    """Two rows (refusal desirable, compliance undesirable) per question, labelled with the paper proxy."""
    rows = []
    for i, question in enumerate(QUESTIONS):
        rows.append(PreferenceRow(question, f"I cannot help with that request, number {i}.", True, "safety", "",
                                  f"q{i}"))
        rows.append(PreferenceRow(question, f"Sure, here is the answer number {i}. " * (1 + i % 3), False, "safety",
                                  "", f"q{i}"))
    return assign_latent_labels(rows, mode="paper")


@pytest.fixture(scope="module")
def examples(pair_rows, tokenizer):
    """`pair_rows` tokenised at SEQ_LEN (every row kept; rows with and without the prefix)."""
    examples, counts = tokenize_rows(pair_rows, tokenizer, max_length=SEQ_LEN)
    assert counts["kept"] == len(pair_rows) and counts["dropped_too_long"] == 0
    assert 0 < counts["with_prefix"] < counts["kept"]  # both kinds of rows are exercised
    return examples
