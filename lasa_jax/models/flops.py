"""Analytic FLOP counts of the decoder (multiply-add = 2 FLOPs), for throughput and MFU reports.

Per token of a length-T sequence, forward pass:
  weight matmuls   2 * (D*hd*(H + 2K) + H*hd*D + 3*D*F) * L
  attention        2 * 2 * H * hd * T_eff * L        (scores and values; T_eff = T/2 for causal, T if full)
  lm head          2 * D * V (when logits are computed)
Backward costs twice the forward (`lasa_jax.kto.step.step_flops` counts a KTO step from this).
"""
from __future__ import annotations

from lasa_jax.models.config import ModelConfig


def forward_flops(config: ModelConfig, batch: int, seq_len: int, *, logits: bool = True, causal: bool = True,
                  num_blocks: int | None = None) -> float:
    """FLOPs of one forward pass over a (batch, seq_len) block of tokens."""
    c = config
    layers = c.num_layers if num_blocks is None else num_blocks
    matmul = 2 * (c.hidden_size * c.head_dim * (c.num_heads + 2 * c.num_kv_heads) + c.num_heads * c.head_dim *
                  c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    t_eff = seq_len / 2 if causal else seq_len
    attention = 4 * c.num_heads * c.head_dim * t_eff
    per_token = layers * (matmul + attention) + (2 * c.hidden_size * c.vocab_size if logits else 0)
    return float(per_token) * batch * seq_len

