"""Local attention (Luong et al. 2015, section 3.2): attend only to a window of 2D + 1 source positions around an
aligned position p_t, and favour the positions near p_t with a Gaussian:

    local_m   p_t = t                                       monotonic: target position t looks at source position t
    local_p   p_t = (S_x − 1) · sigmoid(v_pᵀ tanh(W_p q_t))  predicted from the query; S_x the real source length
    α_t(s) = align(q_t, k_s) · exp(−(s − p_t)² / (2σ²)),   σ = D / 2,   and α_t(s) = 0 outside [p_t − D, p_t + D]

align is any scorer followed by any normalizer, computed over the window only (the window is applied to the mask
before normalizing). Two choices differ from the paper's text, both stated here:
- positions count from 0, so p_t is kept among the real positions 0..S_x − 1: local_p scales the sigmoid by S_x − 1
  (the paper's S_x would put p_t one past the last word), and local_m clamps t to S_x − 1 (once the target is
  longer than the source, its window stays at the end of the source instead of leaving it).
- the product with the Gaussian is divided by its row sum, so the weights stay a distribution like every other
  attention here (with softmax this is softmax(e + log Gaussian) over the window).
"""

from __future__ import annotations

import torch
from torch import nn

from attnmt.errors import ConfigError

WINDOWS = ("local_m", "local_p")


class LocalWindow(nn.Module):
    """The window and the Gaussian around the aligned position p_t, for `local_m` or `local_p`.

    `forward(query, query_positions, mask)` → (allowed [B, Tq, Tk], gaussian [B, Tq, Tk]): where the query may
    attend (a real position inside the window) and exp(−(s − p_t)² / (2σ²)).
    """

    def __init__(self, kind: str, query_size: int, window_size: int) -> None:
        super().__init__()
        if kind not in WINDOWS:
            raise ConfigError(f"unknown attention window {kind!r}; choose one of none, {', '.join(WINDOWS)}")
        if window_size < 1:
            raise ConfigError(f"local attention needs `window_size` D ≥ 1 (the window is [p_t − D, p_t + D]), "
                              f"not {window_size}")
        self.kind, self.half_width, self.sigma = kind, window_size, window_size / 2
        if kind == "local_p":
            self.position_hidden = nn.Linear(query_size, query_size, bias=False)  # W_p
            self.position_score = nn.Linear(query_size, 1, bias=False)  # v_p

    def aligned_positions(self, query: torch.Tensor, query_positions: torch.Tensor | None,
                          mask: torch.Tensor) -> torch.Tensor:
        """p_t [B, Tq] (float): local_m from `query_positions` [B, Tq] (default 0..Tq − 1), local_p from the query."""
        last = (mask.sum(dim=1, keepdim=True) - 1).to(query.dtype)  # S_x − 1  [B, 1]
        if self.kind == "local_p":
            gate = torch.sigmoid(self.position_score(torch.tanh(self.position_hidden(query)))).squeeze(-1)  # [B, Tq]
            return last * gate
        if query_positions is None:
            query_positions = torch.arange(query.size(1), device=query.device).expand(query.size(0), -1)
        return torch.minimum(query_positions.to(query.dtype), last)  # t, kept inside the source  [B, Tq]

    def forward(self, query: torch.Tensor, query_positions: torch.Tensor | None,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aligned = self.aligned_positions(query, query_positions, mask)  # p_t  [B, Tq]
        source = torch.arange(mask.size(1), device=query.device, dtype=query.dtype)  # s  [Tk]
        distance = source - aligned.unsqueeze(-1)  # s − p_t  [B, Tq, Tk]
        allowed = mask.unsqueeze(1) & (distance.abs() <= self.half_width)  # [B, Tq, Tk]
        gaussian = torch.exp(-distance ** 2 / (2 * self.sigma ** 2))  # [B, Tq, Tk]
        return allowed, gaussian

    def extra_repr(self) -> str:
        return f"{self.kind}, window_size={self.half_width}"
