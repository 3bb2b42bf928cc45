"""lasa_jax.kto.buckets: trimming a batch to its length bucket drops only padding (log-probs unchanged), and the
reference's one forward over policy and KL rows equals two."""
import jax.numpy as jnp
import numpy as np
import pytest

from lasa_jax.data.preference.formats import load_unpaired_jsonl
from lasa_jax.kto import step as kto_step
from lasa_jax.kto.batches import iterate_kto_batches
from lasa_jax.kto.buckets import batch_length, bucket_for, length_buckets, trimmed_arrays
from lasa_jax.kto.examples import tokenize_rows
from lasa_jax.kto.labels import assign_latent_labels
from lasa_jax.models import logprobs
from lasa_jax.models.hf import from_pretrained
from lasa_jax.models.loading import load_tokenizer
from tests.kto.kto_runs import DEMO_KTO

pytestmark = pytest.mark.usefixtures("compilation_cache")


def test_length_buckets_only_drop_padding_and_one_reference_forward_matches_two(llama_dir):

    assert length_buckets(512) == (64, 128, 256, 512) and length_buckets(256, "off") is None
    assert length_buckets(200, "100, 300") == (100, 200) and bucket_for(65, (64, 128, 256)) == 128
    model = from_pretrained(llama_dir)
    # the run's rows (at most 256 tokens; KL rows up to ~2x) in a 1024-position batch: trimming has padding to drop
    rows = assign_latent_labels(load_unpaired_jsonl(DEMO_KTO), seed=42)
    examples, _ = tokenize_rows(rows, load_tokenizer(str(llama_dir)), max_length=256, truncate_completions=False)
    batch = next(iterate_kto_batches(examples, batch_size=4, seq_len=1024, pad_id=0, seed=42))[0]
    buckets = length_buckets(1024, "32,64,128,256,512")
    trimmed = trimmed_arrays(batch, buckets)
    width = trimmed["input_ids"].shape[1]
    assert width == bucket_for(batch_length(batch), buckets) <= 512 and trimmed["is_desirable"].shape == (4,)
    full = {k: jnp.asarray(v) for k, v in batch.device_arrays().items()}
    short = {k: jnp.asarray(v) for k, v in trimmed.items()}
    for rows in (kto_step.POLICY_ROW_KEYS, kto_step.KL_ROW_KEYS):
        want = logprobs.batch_logps(model.params(), model.config, *(full[k] for k in rows), chunk_size=64)
        got = logprobs.batch_logps(model.params(), model.config, *(short[k] for k in rows), chunk_size=64)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    ref, kl_ref = kto_step.batch_reference_logps(model.params(), model.config, short, mesh=None, chunk_size=64)
    for value, rows in ((ref, kto_step.POLICY_ROW_KEYS), (kl_ref, kto_step.KL_ROW_KEYS)):
        want = logprobs.batch_logps(model.params(), model.config, *(short[k] for k in rows), chunk_size=64)
        np.testing.assert_allclose(np.asarray(value), np.asarray(want), rtol=1e-5)
