"""Models: the RNN encoder-decoder (`rnn.py`) and the Transformer (`transformer.py`), both implementing the contract
of `contract.py` (`Seq2SeqModel`), through which everything else uses them without asking which family it has."""

from __future__ import annotations

from attnmt.config import RNNConfig, TransformerConfig
from attnmt.models.contract import (ModelDescription, Seq2SeqModel, SelfAttention, State, log_probabilities,
                                    self_attention)
from attnmt.models.rnn import RNNSeq2Seq
from attnmt.models.transformer import TransformerSeq2Seq

__all__ = ["FAMILIES", "ModelDescription", "RNNSeq2Seq", "SelfAttention", "Seq2SeqModel", "State",
           "TransformerSeq2Seq", "build_model", "log_probabilities", "self_attention"]

FAMILIES = {"rnn": RNNSeq2Seq, "transformer": TransformerSeq2Seq}  # `model.type` → the model class


def build_model(config: RNNConfig | TransformerConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2SeqModel:
    """The model named by `config.type`, with fresh parameters."""
    return FAMILIES[config.type](config, src_vocab_size, tgt_vocab_size)
