"""Tensors for training: padded batches, and length-bucketed batches under a token budget."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from attnmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@dataclass
class Batch:
    """One batch of sentence pairs, batch-first; masks are True at real tokens."""

    src: Tensor  # [B, S] long
    src_mask: Tensor  # [B, S] bool
    tgt_in: Tensor  # [B, T] long: BOS y1 .. yn
    tgt_out: Tensor  # [B, T] long: y1 .. yn EOS
    tgt_mask: Tensor  # [B, T] bool (the same for tgt_in and tgt_out)
    indices: list[int]  # position of each row in the dataset

    @property
    def num_tgt_tokens(self) -> int:
        """Real target tokens predicted in this batch, EOS included."""
        return int(self.tgt_mask.sum().item())

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> "Batch":
        """The same batch with every tensor on `device`."""
        return Batch(
            src=self.src.to(device),
            src_mask=self.src_mask.to(device),
            tgt_in=self.tgt_in.to(device),
            tgt_out=self.tgt_out.to(device),
            tgt_mask=self.tgt_mask.to(device),
            indices=list(self.indices),
        )


def pad_sequences(seqs: list[list[int]], pad_id: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to one length: (ids [B, L] long, mask [B, L] bool, True at real tokens)."""
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    max_length = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), max_length), pad_id, dtype=torch.long)  # [B, L]
    mask = torch.zeros((len(seqs), max_length), dtype=torch.bool)  # [B, L]
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return ids, mask


def collate(src_ids: list[list[int]], tgt_ids: list[list[int]], indices: list[int]) -> Batch:
    """Pad a list of pairs into a `Batch`; the decoder reads `BOS y` and predicts `y EOS`."""
    if not (len(src_ids) == len(tgt_ids) == len(indices)):
        raise ValueError(f"collate got {len(src_ids)} sources, {len(tgt_ids)} targets and {len(indices)} indices")
    src, src_mask = pad_sequences(src_ids)  # [B, S]
    tgt_in, tgt_mask = pad_sequences([[BOS_ID, *tgt] for tgt in tgt_ids])  # [B, T]
    tgt_out, _ = pad_sequences([[*tgt, EOS_ID] for tgt in tgt_ids])  # [B, T]
    return Batch(src=src, src_mask=src_mask, tgt_in=tgt_in, tgt_out=tgt_out, tgt_mask=tgt_mask,
                 indices=list(indices))


def _sorted_by_length(src_lengths: list[int], tgt_lengths: list[int], rng: random.Random | None) -> list[int]:
    """Indices sorted by (target length, source length); ties in random order when `rng` is given."""
    order = list(range(len(src_lengths)))
    if rng is not None:
        rng.shuffle(order)  # the sort below is stable, so this breaks ties at random
    order.sort(key=lambda index: (tgt_lengths[index], src_lengths[index]))
    return order


def _cut_by_budget(order: list[int], src_lengths: list[int], tgt_lengths: list[int], batch_tokens: int
                   ) -> list[list[int]]:
    """Cut consecutive runs of `order` so that sentences × widest padded side (target + BOS/EOS) ≤ `batch_tokens`.

    A sentence that alone exceeds the budget gets a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in order:
        new_width = max(width, src_lengths[index], tgt_lengths[index] + 1)
        if current and (len(current) + 1) * new_width > batch_tokens:
            batches.append(current)
            current, new_width = [], max(src_lengths[index], tgt_lengths[index] + 1)
        current.append(index)
        width = new_width
    if current:
        batches.append(current)
    return batches


def token_batches(src_lengths: list[int], tgt_lengths: list[int], batch_tokens: int, shuffle: bool, seed: int
                  ) -> list[list[int]]:
    """Group dataset indices into length-homogeneous batches of at most `batch_tokens` padded tokens.

    Deterministic for the same arguments; every index appears in exactly one batch. With `shuffle`, ties in length
    and the order of the batches are randomized by `random.Random(seed)`.
    """
    if len(src_lengths) != len(tgt_lengths):
        raise ValueError(f"token_batches got {len(src_lengths)} source and {len(tgt_lengths)} target lengths")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    rng = random.Random(seed) if shuffle else None
    order = _sorted_by_length(src_lengths, tgt_lengths, rng)
    batches = _cut_by_budget(order, src_lengths, tgt_lengths, batch_tokens)
    if rng is not None:
        rng.shuffle(batches)
    return batches


@dataclass
class ParallelData:
    """A tokenized parallel corpus: subword ids of each source and target sentence (no BOS/EOS)."""

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]

    def __post_init__(self) -> None:
        if len(self.src_ids) != len(self.tgt_ids):
            raise ValueError(f"ParallelData got {len(self.src_ids)} sources and {len(self.tgt_ids)} targets")

    def __len__(self) -> int:
        return len(self.src_ids)

    def batches(self, batch_tokens: int, shuffle: bool, seed: int) -> list[list[int]]:
        """Index lists of length-bucketed batches (see `token_batches`)."""
        src_lengths = [len(ids) for ids in self.src_ids]
        tgt_lengths = [len(ids) for ids in self.tgt_ids]
        return token_batches(src_lengths, tgt_lengths, batch_tokens, shuffle, seed)

    def batch(self, indices: list[int]) -> Batch:
        """The padded `Batch` of the pairs at `indices`."""
        return collate([self.src_ids[i] for i in indices], [self.tgt_ids[i] for i in indices], list(indices))

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]], tokenizer: Tokenizer, max_length: int
                   ) -> tuple["ParallelData", int]:
        """Encode (source, target) pairs; drop those longer than `max_length` subwords on either side.

        Pairs whose source encodes to no subword at all (nothing to attend to) are dropped too. Returns the data and
        the number of pairs dropped.
        """
        src_ids = tokenizer.encode_source([src for src, _ in pairs])
        tgt_ids = tokenizer.encode_target([tgt for _, tgt in pairs])
        kept = [
            (src, tgt) for src, tgt in zip(src_ids, tgt_ids)
            if 0 < len(src) <= max_length and len(tgt) <= max_length
        ]
        data = cls(src_ids=[src for src, _ in kept], tgt_ids=[tgt for _, tgt in kept])
        return data, len(pairs) - len(kept)
