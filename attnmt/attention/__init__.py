"""Attention: score every key against the query, normalize the energies into weights, take the weighted sum.

    e = f(q, K)                  energies             scores.py
    α = softmax(e) over real positions (padding gets exactly 0)
    c = Σ_i α_i v_i              attention value (context)

`build(name, query_size, key_size, **options)` gives the module for a score name in `SCORERS`.
"""

from __future__ import annotations

import torch
from torch import nn

from attnmt.attention.scores import SCORERS, Scorer
from attnmt.errors import ConfigError

__all__ = ["Attention", "SCORERS", "build", "masked_softmax"]


def masked_softmax(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """α = softmax(e) over the positions where mask is True; masked positions get exactly 0.

    energies [B, Tq, Tk], mask [B, Tk] (True = real token) → weights [B, Tq, Tk], each row summing to 1.
    """
    energies = energies.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.softmax(energies, dim=-1)


class Attention(nn.Module):
    """A scorer, the softmax and the weighted sum, as one module.

    `forward(query, keys, values, mask)` is the whole computation. Decoders that call it once per step first call
    `prepare_keys(keys)` once per sentence and then `attend(query, prepared_keys, values, mask)` each step.
    """

    def __init__(self, scorer: Scorer) -> None:
        super().__init__()
        self.scorer = scorer

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.scorer.prepare_keys(keys)

    def attend(self, query: torch.Tensor, prepared_keys: torch.Tensor, values: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energies = self.scorer(query, prepared_keys)  # [B, Tq, Tk]
        weights = masked_softmax(energies, mask)  # [B, Tq, Tk]
        context = weights @ values  # [B, Tq, dv]
        return context, weights

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, Tq, dq], keys [B, Tk, dk], values [B, Tk, dv], mask [B, Tk] → (context [B, Tq, dv], weights [B, Tq, Tk])."""
        return self.attend(query, self.prepare_keys(keys), values, mask)


def build(name: str, query_size: int, key_size: int, **options) -> Attention:
    """The attention module for score `name` (one of `SCORERS`); `options` go to the scorer (e.g. hidden_size)."""
    if name not in SCORERS:
        raise ConfigError(f"unknown attention score {name!r}; choose one of {', '.join(SCORERS)}")
    options = {key: value for key, value in options.items() if value is not None}
    try:
        scorer = SCORERS[name](query_size, key_size, **options)
    except TypeError as error:
        raise ConfigError(f"attention score {name!r} does not take these options {sorted(options)}: {error}") from None
    return Attention(scorer)
