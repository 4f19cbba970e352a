"""Dropout (Srivastava et al. 2014), inverted: while training,

    Dropout(x) = x ⊙ m / (1 − p),      m_i ~ Bernoulli(1 − p), independent; the identity otherwise

— what `torch.nn.functional.dropout` computes, with the mask drawn as m_i = [u_i < 1 − p], u_i ~ U[0, 1) in float32:
the same test torch's `bernoulli_` makes, so the same distribution (not the same draws). On CPU `bernoulli_` is
several times slower than `torch.rand` for the same uniforms, and a Transformer step draws tens of millions of them
(every sublayer output, the feed-forward activations, the attention weights), so the mask comes from `torch.rand`
there; other devices keep torch's fused dropout kernel. Either way the draws come from torch's random generator,
whose state train_state saves, so a resumed run draws what the straight run drew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """x ⊙ m / (1 − p), m_i = [u_i < 1 − p], u_i ~ U[0, 1), while `training`; x itself otherwise."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    keep = 1.0 - p
    mask = torch.rand(x.shape, dtype=torch.float32, device=x.device).lt_(keep)  # m, as 0.0 / 1.0
    return x * mask.to(x.dtype).div_(keep)  # x ⊙ m / (1 − p)


class Dropout(nn.Module):
    """`dropout` as a module: active in training mode; in place of `torch.nn.Dropout` (no parameters, no state)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
