"""lasa-jax: JAX/Flax implementation of LASA (arXiv 2604.12710)."""
from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"

setup(
    name="lasa-jax",
    version="0.1.0",
    description=(
        "Language-Agnostic Semantic Alignment at the semantic bottleneck for LLM safety, "
        "in JAX/Flax NNX"
    ),
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["lasa_jax", "lasa_jax.*"]),
    package_data={"lasa_jax": ["demo_data/*.jsonl", "demo_data/*.json"]},
    install_requires=[
        f"jax[cpu]=={JAX_VERSION}",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "transformers==5.24.0",
        "datasets==5.2.0",
        "tokenizers>=0.22,<0.24",
        "numpy>=2.0,<3",
        "absl-py==2.5.1",
        "ml-collections==1.1.0",
        "safetensors==0.8.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "tensorboardX==2.6.5",
        "gguf==0.19.0",
    ],
    extras_require={
        "test": ["pytest>=8", "torch==2.13.0", "scikit-learn>=1.5", "trl==1.16.0", "accelerate==1.15.0",
                 "ruff==0.17.6"],
        "tpu": [f"jax[tpu]=={JAX_VERSION}"],
    },
)
