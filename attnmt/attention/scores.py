"""Score (compatibility) functions f(q, K): how well each key matches the query.

Each scorer turns a query q (the decoder state) and the keys K (the encoder states h_1..h_n) into energies
e = f(q, K), one per source position; `attnmt.attention.Attention` normalizes them into weights. The table follows
Galassi et al., "Attention, please!" (seed 003); the notation:

    q  query  [B, Tq, dq]      K  keys  [B, Tk, dk]      e  energies  [B, Tq, Tk]
    W, b, w  learned parameters      act  an activation (`activation: tanh | relu | sigmoid | gelu`, default tanh)

    similarity          cos(q, K) / τ                     Graves et al. 2014 (content-based addressing)
    dot                 qᵀK                               Luong et al. 2015
    scaled_dot          qᵀK / √d_k                        Vaswani et al. 2017
    general             qᵀWK                              Luong et al. 2015
    biased_general      Kᵀ(Wq + b)                        Sordoni et al. 2016
    activated_general   act(qᵀWK + b)                     Ma et al. 2017
    concat              wᵀ act(W[K; q] + b)               Luong et al. 2015
    additive            wᵀ act(W₁K + W₂q + b)             Bahdanau et al. 2015
    deep                wᵀ act(W_L … act(W₁[K; q] + b₁) … + b_L)   an MLP of `depth` layers (Pavlopoulos et al. 2017)
    location            W q + b, one energy per source position   Luong et al. 2015

A scorer has two methods. `prepare_keys(K)` holds the part that does not depend on the query (W₁K, WK): it runs
once per sentence, not once per decoder step. `forward(q, prepared)` computes the energies. An energy of −inf marks a
position the scorer cannot address (only `location`, past `max_source_length`); the normalizers give it weight 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnmt.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


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


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown attention activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class SimilarityScore(Scorer):
    """Cosine similarity (Graves et al. 2014): f(q, K) = qᵀK / (‖q‖ ‖K‖ τ).

    The energies lie in [−1/τ, 1/τ]. τ is 1, or learned when `learn_temperature` (τ = exp(s), s starts at 0), so the
    model can sharpen the otherwise flat weights. The keys are normalized once per sentence in `prepare_keys`.
    """

    def __init__(self, query_size: int, key_size: int, learn_temperature: bool = False) -> None:
        super().__init__()
        _require_equal_sizes("similarity", query_size, key_size)
        self.log_temperature = nn.Parameter(torch.zeros(())) if learn_temperature else None  # s, τ = exp(s)

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return F.normalize(keys, dim=-1)  # K / ‖K‖  [B, Tk, dk]

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(query, dim=-1) @ keys.transpose(1, 2)  # [B, Tq, Tk]
        if self.log_temperature is None:
            return cosine
        return cosine * torch.exp(-self.log_temperature)


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


class BiasedGeneralScore(Scorer):
    """Biased general (Sordoni et al. 2016): f(q, K) = Kᵀ(Wq + b).

    Unlike a bias added to every energy, b here scores each key on its own: f(q, k) = (Wᵀk)ᵀq + bᵀk, and bᵀk is a
    query-independent prior that survives the normalization. Both key terms depend on the keys only, so
    `prepare_keys` computes them once per sentence, as one tensor [WᵀK; bᵀK]; each step is then a dot product
    of [q; 1] with it.
    """

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.query_projection = nn.Linear(query_size, key_size, bias=True)  # W: dq → dk, and b [dk]

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        projected = keys @ self.query_projection.weight  # Wᵀk per key  [B, Tk, dq]
        prior = keys @ self.query_projection.bias  # bᵀk per key  [B, Tk]
        return torch.cat([projected, prior.unsqueeze(-1)], dim=-1)  # [B, Tk, dq + 1]

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        projected, prior = keys[..., :-1], keys[..., -1]  # [B, Tk, dq], [B, Tk]
        return query @ projected.transpose(1, 2) + prior.unsqueeze(1)  # [B, Tq, Tk]


class ActivatedGeneralScore(Scorer):
    """Activated general (Ma et al. 2017): f(q, K) = act(qᵀWK + b), b a scalar.

    WK is computed once per sentence in `prepare_keys`.
    """

    def __init__(self, query_size: int, key_size: int, activation: str = "tanh") -> None:
        super().__init__()
        self.key_projection = nn.Linear(key_size, query_size, bias=False)  # W: dk → dq
        self.bias = nn.Parameter(torch.zeros(()))  # b
        self.activation = _activation(activation)

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_projection(keys)  # [B, Tk, dq]

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.activation(query @ keys.transpose(1, 2) + self.bias)  # [B, Tq, Tk]


class ConcatScore(Scorer):
    """Concat (Luong et al. 2015): f(q, K) = wᵀ act(W[K; q] + b), one matrix W over key and query side by side.

    W[k; q] = W_K k + W_q q for W = [W_K W_q]: the key half, with b, is computed once per sentence in
    `prepare_keys`. (The sum is the additive score's; the two differ in how they are written and sized.)
    """

    def __init__(self, query_size: int, key_size: int, hidden_size: int | None = None,
                 activation: str = "tanh") -> None:
        super().__init__()
        hidden_size = hidden_size or query_size
        self.key_size = key_size
        self.projection = nn.Linear(key_size + query_size, hidden_size, bias=True)  # W = [W_K W_q], b
        self.activation = _activation(activation)
        self.energy = nn.Linear(hidden_size, 1, bias=False)  # w

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        key_weight = self.projection.weight[:, :self.key_size]  # W_K
        return F.linear(keys, key_weight, self.projection.bias)  # W_K K + b  [B, Tk, A]

    def _first_layer(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        query_weight = self.projection.weight[:, self.key_size:]  # W_q
        summed = keys.unsqueeze(1) + F.linear(query, query_weight).unsqueeze(2)  # W[k; q] + b  [B, Tq, Tk, A]
        return self.activation(summed)

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return self.energy(self._first_layer(query, keys)).squeeze(-1)  # [B, Tq, Tk]


class AdditiveScore(Scorer):
    """Additive / MLP (Bahdanau et al. 2015): f(q, K) = wᵀ act(W₁K + W₂q + b), act = tanh in the paper.

    W₁K is computed once per sentence in `prepare_keys`.
    """

    def __init__(self, query_size: int, key_size: int, hidden_size: int | None = None,
                 activation: str = "tanh") -> None:
        super().__init__()
        hidden_size = hidden_size or query_size
        self.key_projection = nn.Linear(key_size, hidden_size, bias=False)  # W₁
        self.query_projection = nn.Linear(query_size, hidden_size, bias=True)  # W₂ and b
        self.activation = _activation(activation)
        self.energy = nn.Linear(hidden_size, 1, bias=False)  # w

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.key_projection(keys)  # [B, Tk, A]

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(keys.unsqueeze(1) + self.query_projection(query).unsqueeze(2))  # [B, Tq, Tk, A]
        return self.energy(hidden).squeeze(-1)  # [B, Tq, Tk]


class DeepScore(ConcatScore):
    """Deep (Pavlopoulos et al. 2017): an MLP of `depth` layers over key and query, then a linear energy.

        h₁ = act(W₁[k; q] + b₁),   h_l = act(W_l h_{l−1} + b_l) for l = 2..L,   f(q, k) = wᵀ h_L

    Depth 1 is `concat`; the first layer's key half is computed once per sentence, as there.
    """

    def __init__(self, query_size: int, key_size: int, hidden_size: int | None = None, depth: int = 2,
                 activation: str = "tanh") -> None:
        super().__init__(query_size, key_size, hidden_size, activation)
        if depth < 1:
            raise ConfigError(f"attention score `deep` needs `depth` ≥ 1 layers, not {depth}")
        hidden_size = self.projection.out_features
        self.layers = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(depth - 1))  # W_l, b_l

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        hidden = self._first_layer(query, keys)  # h₁  [B, Tq, Tk, A]
        for layer in self.layers:
            hidden = self.activation(layer(hidden))  # h_l  [B, Tq, Tk, A]
        return self.energy(hidden).squeeze(-1)  # [B, Tq, Tk]


class LocationScore(Scorer):
    """Location-based (Luong et al. 2015): f(q) = W q + b, energies for source positions 1..M predicted from the
    query alone (M = `max_source_length`); the keys give only their number Tk.

    The M energies are cut to Tk; padding is left to the mask. Positions past M (a source longer than any the scorer
    was built for) get energy −inf, so weight 0: set `max_source_length` at least as long as the longest source.
    """

    def __init__(self, query_size: int, key_size: int, max_source_length: int | None = None) -> None:
        super().__init__()
        if max_source_length is None or max_source_length < 1:
            raise ConfigError(
                "attention score `location` predicts one energy per source position, so it needs "
                "`model.attention.max_source_length` (a whole config sets it to `data.max_length` by default)")
        self.max_source_length = max_source_length
        self.positions = nn.Linear(query_size, max_source_length, bias=True)  # W: dq → M, b

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        length = keys.size(1)
        energies = self.positions(query)[..., :length]  # [B, Tq, min(Tk, M)]
        if length > self.max_source_length:  # positions past M cannot be addressed
            energies = F.pad(energies, (0, length - self.max_source_length), value=float("-inf"))
        return energies  # [B, Tq, Tk]


SCORERS: dict[str, type[Scorer]] = {
    "similarity": SimilarityScore,
    "dot": DotScore,
    "scaled_dot": ScaledDotScore,
    "general": GeneralScore,
    "biased_general": BiasedGeneralScore,
    "activated_general": ActivatedGeneralScore,
    "concat": ConcatScore,
    "additive": AdditiveScore,
    "deep": DeepScore,
    "location": LocationScore,
}
