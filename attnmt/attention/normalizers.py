"""Normalizers (distribution functions): energies e → attention weights α, a distribution over the real positions.

    softmax     α_i = exp(e_i) / Σ_j exp(e_j)                        every real position gets some weight
    sparsemax   α = argmin_{p ∈ Δ} ‖p − e‖²  = [e − τ]₊               Martins & Astudillo 2016: exact zeros
    entmax15    α = argmax_{p ∈ Δ} pᵀe + H₁.₅(p) = [e/2 − τ]₊²        Peters et al. 2019: sparse, smoother

Each takes energies [B, Tq, Tk] and a mask [B, Tk] or [B, 1 or Tq, Tk] (True = may be attended) and gives weights
that are exactly 0 where the mask is False (or the energy is −inf) and sum to 1 over each row. `Normalizer` divides
the energies by a temperature T first: T < 1 sharpens, T > 1 flattens.

The sparse ones follow the papers' sort-based algorithms: sort the energies, find the support size k (how many
positions get weight > 0), then the threshold τ from a closed form over the support. The support is piecewise
constant in e, so it is found without gradient; τ is then differentiable and autograd gives the exact Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attnmt.errors import ConfigError

__all__ = ["NORMALIZERS", "Normalizer", "masked_entmax15", "masked_softmax", "masked_sparsemax"]


def _allowed(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as [B, Tq, Tk], False also where the energy is −inf."""
    if mask.dim() == energies.dim() - 1:
        mask = mask.unsqueeze(-2)  # [B, Tk] → [B, 1, Tk]
    return mask.expand_as(energies) & (energies != float("-inf"))


def masked_softmax(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """α = softmax(e) over the positions where mask is True; masked positions get exactly 0.

    energies [B, Tq, Tk], mask [B, Tk] or [B, Tq, Tk] (True = real token) → weights [B, Tq, Tk], rows summing to 1.
    """
    energies = energies.masked_fill(~_allowed(energies, mask), float("-inf"))
    return torch.softmax(energies, dim=-1)


def _support(z: torch.Tensor, allowed: torch.Tensor,
             in_support: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The positions that get weight > 0: the k largest allowed z, k the largest rank where `in_support` holds.

    z [B, Tq, Tk] → support mask [B, Tq, Tk]. `in_support(sorted z, rank)` tests each k = 1..Tk on the
    sorted values (allowed ones first); it holds for a prefix of ranks (both papers prove this).
    """
    with torch.no_grad():
        ordered = z.masked_fill(~allowed, float("-inf")).sort(dim=-1, descending=True).values  # [B, Tq, Tk]
        rank = torch.arange(1, z.size(-1) + 1, device=z.device, dtype=z.dtype)  # k = 1..Tk
        valid = rank <= allowed.sum(dim=-1, keepdim=True)  # ranks of allowed positions  [B, Tq, Tk]
        ordered = ordered.masked_fill(~valid, 0.0)
        size = (in_support(ordered, rank) & valid).sum(dim=-1, keepdim=True)  # k(z)  [B, Tq, 1]
        smallest = ordered.gather(-1, size - 1)  # z_(k), the smallest value in the support
        return allowed & (z >= smallest)


def masked_sparsemax(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sparsemax (Martins & Astudillo 2016): the Euclidean projection of e onto the probability simplex,

        α_i = [e_i − τ]₊,   τ = (Σ_{j ≤ k} e_(j) − 1) / k,   k = max{k : 1 + k e_(k) > Σ_{j ≤ k} e_(j)}

    with e_(1) ≥ e_(2) ≥ … the sorted energies. Positions with e_i ≤ τ, and masked ones, get exactly 0.
    """
    allowed = _allowed(energies, mask)
    z = energies.masked_fill(~allowed, 0.0)

    def in_support(ordered, rank):
        return 1 + rank * ordered > ordered.cumsum(dim=-1)

    support = _support(z, allowed, in_support)  # [B, Tq, Tk]
    size = support.sum(dim=-1, keepdim=True).to(z.dtype)  # k
    tau = ((z * support).sum(dim=-1, keepdim=True) - 1) / size  # [B, Tq, 1]
    return torch.where(support, torch.clamp(z - tau, min=0), torch.zeros_like(z))


def masked_entmax15(energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1.5-entmax (Peters, Niculae & Martins 2019): α = argmax_{p ∈ Δ} pᵀe + H₁.₅(p), Tsallis entropy with α = 1.5,

        α_i = [z_i − τ]₊²   with z = e / 2 and τ such that Σ_i α_i = 1.

    Exact sort-based algorithm (their Algorithm 2): for each k, the mean M_k and the sum of squared deviations S_k of
    the k largest z give τ_k = M_k − √((1 − S_k) / k); the support size is the largest k with τ_k ≤ z_(k), and
    τ = τ_k there. Positions with z_i ≤ τ, and masked ones, get exactly 0.
    """
    allowed = _allowed(energies, mask)
    z = energies.masked_fill(~allowed, 0.0) / 2

    def in_support(ordered, rank):
        mean = ordered.cumsum(dim=-1) / rank  # M_k
        squares = rank * ((ordered ** 2).cumsum(dim=-1) / rank - mean ** 2)  # S_k
        tau = mean - torch.sqrt(torch.clamp((1 - squares) / rank, min=0))  # τ_k
        return tau <= ordered

    support = _support(z, allowed, in_support)  # [B, Tq, Tk]
    size = support.sum(dim=-1, keepdim=True).to(z.dtype)  # k
    mean = (z * support).sum(dim=-1, keepdim=True) / size  # M_k
    squares = (((z - mean) * support) ** 2).sum(dim=-1, keepdim=True)  # S_k
    tau = mean - torch.sqrt(torch.clamp((1 - squares) / size, min=0))  # [B, Tq, 1]
    return torch.where(support, torch.clamp(z - tau, min=0) ** 2, torch.zeros_like(z))


NORMALIZERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "softmax": masked_softmax,
    "sparsemax": masked_sparsemax,
    "entmax15": masked_entmax15,
}


class Normalizer(nn.Module):
    """α = normalize(e / T) over the allowed positions, `normalize` one of `NORMALIZERS`, T the temperature."""

    def __init__(self, name: str = "softmax", temperature: float = 1.0) -> None:
        super().__init__()
        if name not in NORMALIZERS:
            raise ConfigError(f"unknown attention normalizer {name!r}; choose one of {', '.join(NORMALIZERS)}")
        if not temperature > 0:
            raise ConfigError(f"the attention temperature divides the energies, so it must be > 0, not {temperature}")
        self.name, self.temperature = name, temperature
        self.normalize = NORMALIZERS[name]

    def forward(self, energies: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """energies [B, Tq, Tk], mask [B, Tk] or [B, Tq, Tk] → weights [B, Tq, Tk]."""
        if self.temperature != 1.0:
            energies = energies / self.temperature
        return self.normalize(energies, mask)

    def extra_repr(self) -> str:
        return f"{self.name}, temperature={self.temperature}"
