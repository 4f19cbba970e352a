"""Models. Each one offers the interface that search and training rely on:

    encode(src [B, S], src_mask [B, S]) -> memory            dict of batch-first tensors, computed once per sentence
    start_state(memory) -> state                               dict of batch-first tensors
    step(prev_tokens [B], state, memory) -> (log_probs [B, V], state, attention [B, S] or None)
    forward(src, src_mask, tgt_in [B, T]) -> (logits [B, T, V], attention [B, T, S] or None)   teacher forcing
"""

from __future__ import annotations

from torch import nn

from attnmt.config import ModelConfig
from attnmt.models.rnn import RNNSeq2Seq

__all__ = ["RNNSeq2Seq", "build_model"]


def build_model(config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> nn.Module:
    """The model named by `config.type`, with fresh parameters."""
    return RNNSeq2Seq(config, src_vocab_size, tgt_vocab_size)
