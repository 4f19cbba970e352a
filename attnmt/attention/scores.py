"""Score (compatibility) functions f(q, K): how well each key matches the query.

Each scorer turns a query q (the decoder state) and the keys K (the encoder states h_1..h_n) into energies
e = f(q, K), one per source position; `attnmt.attention.Attention` normalizes them into weights. The table follows
Galassi et al., "Attention, please!" (seed 003); the notation:

    q  query  [B, Tq, dq]      K  keys  [B, Tk, dk]      e  energies  [B, Tq, Tk]
    W, b, w  learned parameters

A scorer has two methods. `prepare_keys(K)` holds the part that does not depend on the query (W₁K, WK): it runs
once per sentence, not once per decoder step. `forward(q, prepared)` computes the energies.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnmt.errors import ConfigError


class Scorer(nn.Module):
    """Base class: `prepare_keys` defaults to the identity."""

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return keys


def _require_equal_sizes(name: str, query_size: int, key_size: int) -> None:
    if query_size != key_size:
        raise ConfigError(
            f"attention score `{name}` compares query and key directly, so it needs equal sizes, but the query "
            f"(decoder state) has {query_size} and the keys (encoder states) have {key_size}. "
            f"Use `general` or `additive`, which learn a projection, or make the sizes equal "
            f"(a bidirectional encoder doubles its hidden size)."
        )


class DotScore(Scorer):
    """Dot product (Luong et al. 2015): f(q, K) = qᵀK."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        _require_equal_sizes("dot", query_size, key_size)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)  # [B, Tq, Tk]


class ScaledDotScore(Scorer):
    """Scaled dot product (Vaswani et al. 2017): f(q, K) = qᵀK / √d_k.

    Dividing by √d_k keeps the energies' variance near 1 as the size grows, so the softmax does not saturate.
    """

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        _require_equal_sizes("scaled_dot", query_size, key_size)
        self.scale = 1.0 / math.sqrt(key_size)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return (query @ keys.transpose(1, 2)) * self.scale  # [B, Tq, Tk]


class GeneralScore(Scorer):
    """General / bilinear (Luong et al. 2015): f(q, K) = qᵀWK.

    WK is computed once per sentence in `prepare_keys`; each step is then a dot product.
    """

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.key_projection = nn.Linear(key_size, query_size, bias=False)  # W: dk → dq

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_projection(keys)  # [B, Tk, dq]

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)  # [B, Tq, Tk]


class AdditiveScore(Scorer):
    """Additive / MLP (Bahdanau et al. 2015): f(q, K) = wᵀ tanh(W₁K + W₂q + b).

    W₁K is computed once per sentence in `prepare_keys`.
    """

    def __init__(self, query_size: int, key_size: int, hidden_size: int | None = None) -> None:
        super().__init__()
        hidden_size = hidden_size or query_size
        self.key_projection = nn.Linear(key_size, hidden_size, bias=False)  # W₁
        self.query_projection = nn.Linear(query_size, hidden_size, bias=True)  # W₂ and b
        self.energy = nn.Linear(hidden_size, 1, bias=False)  # w

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_projection(keys)  # [B, Tk, A]

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(keys.unsqueeze(1) + self.query_projection(query).unsqueeze(2))  # [B, Tq, Tk, A]
        return self.energy(hidden).squeeze(-1)  # [B, Tq, Tk]


SCORERS: dict[str, type[Scorer]] = {
    "dot": DotScore,
    "scaled_dot": ScaledDotScore,
    "general": GeneralScore,
    "additive": AdditiveScore,
}
