"""Data: reading corpora, subword tokenization, and batching."""

from attnmt.data.batching import Batch, ParallelData, collate, pad_sequences, token_batches
from attnmt.data.corpus import Corpora, drop_empty_pairs, read_corpora, read_corpus, read_lines, split_by_target
from attnmt.data.tokenizer import (
    BOS_ID,
    BOS_PIECE,
    EOS_ID,
    EOS_PIECE,
    PAD_ID,
    PAD_PIECE,
    UNK_ID,
    UNK_PIECE,
    Tokenizer,
)

__all__ = [
    "BOS_ID",
    "BOS_PIECE",
    "Batch",
    "Corpora",
    "EOS_ID",
    "EOS_PIECE",
    "PAD_ID",
    "PAD_PIECE",
    "ParallelData",
    "Tokenizer",
    "UNK_ID",
    "UNK_PIECE",
    "collate",
    "drop_empty_pairs",
    "pad_sequences",
    "read_corpora",
    "read_corpus",
    "read_lines",
    "split_by_target",
    "token_batches",
]
