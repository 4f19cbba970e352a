"""Models. Each one offers the interface that search and training rely on:

    encode(src [B, S], src_mask [B, S]) -> memory            dict of batch-first tensors, computed once per sentence
    start_state(memory) -> state                               dict of batch-first tensors
    step(prev_tokens [B], state, memory, need_weights=True)
        -> (log_probs [B, V], state, attention [B, ..., S] or None)     None without attention or need_weights
    forward(src, src_mask, tgt_in [B, T]) -> (logits [B, T, V], attention [B, T, ..., S] or None)   teacher forcing

Attention has the source positions on its last axis. The RNN returns one weight vector per step, [B, S]
(forward: [B, T, S]); the Transformer returns the cross-attention of every decoder layer and head, [B, L, H, S]
(forward: [B, T, L, H, S], and only when asked with `return_attention=True`).
"""

from __future__ import annotations

from torch import nn

from attnmt.config import RNNConfig, TransformerConfig
from attnmt.models.rnn import RNNSeq2Seq
from attnmt.models.transformer import TransformerSeq2Seq

__all__ = ["RNNSeq2Seq", "TransformerSeq2Seq", "build_model"]


def build_model(config: RNNConfig | TransformerConfig, src_vocab_size: int, tgt_vocab_size: int) -> nn.Module:
    """The model named by `config.type`, with fresh parameters."""
    if isinstance(config, TransformerConfig):
        return TransformerSeq2Seq(config, src_vocab_size, tgt_vocab_size)
    return RNNSeq2Seq(config, src_vocab_size, tgt_vocab_size)
