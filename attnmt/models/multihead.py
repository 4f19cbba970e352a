"""Multi-head scaled dot-product attention (Vaswani et al. 2017, "Attention is all you need"), from the equations.

Queries, keys and values are linear maps of the input (seed 002):

    q = X W_q      k = Y W_k      v = Y W_v          X: the positions that ask, Y: the positions they read
                                                     (Y = X in self-attention, the encoder output in cross-attention)
    head_i = softmax(Q_i K_iᵀ / √d_k + M) V_i       Q_i, K_i, V_i: the i-th slice of d_k = d_model / h columns
    MultiHead(X, Y) = [head_1; ...; head_h] W_o

M is 0 where a query may read a key and −∞ where it may not: padding keys (key mask, True = real token) and, with
`causal`, keys after the query's own position. The softmax weights are returned per head, [B, H, Tq, Tk], when asked
for; otherwise (`fused`) the inner product may run through `torch.nn.functional.scaled_dot_product_attention`, which
computes the same softmax(QKᵀ/√d_k + M)V without materializing the weights for the caller.

Keys and values can be projected once and reused (`keys_values`, then `attend`): the Transformer decoder projects the
encoder output once per sentence, and caches its own past keys and values while it decodes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnmt.models.dropout import dropout as drop


def causal_mask(query_length: int, key_length: int, device: torch.device | None = None) -> torch.Tensor:
    """allowed[i, j] = j ≤ i + (Tk − Tq): query i sits at position Tk − Tq + i of the keys (the last Tq of them), and
    reads that position and the ones before it. [Tq, Tk], True = may attend."""
    offset = key_length - query_length
    rows = torch.arange(query_length, device=device).unsqueeze(1)  # [Tq, 1]
    columns = torch.arange(key_length, device=device).unsqueeze(0)  # [1, Tk]
    return columns <= rows + offset


class MultiHeadAttention(nn.Module):
    """MultiHead(X, Y) = [head_1; ...; head_h] W_o,  head_i = softmax(Q_i K_iᵀ / √d_k + M) V_i.

    model_size: d_model, the width of X, Y and the output; heads: h; d_k = d_v = d_model / h.
    dropout: on the attention weights (training only). fused: compute the inner product with
    `F.scaled_dot_product_attention` when the weights are not requested (`takes_fused_path`).
    """

    def __init__(self, model_size: int, heads: int, dropout: float = 0.0, bias: bool = True, fused: bool = True
                 ) -> None:
        super().__init__()
        if model_size % heads != 0:
            raise ValueError(f"model_size ({model_size}) must be a multiple of heads ({heads})")
        self.heads = heads
        self.head_size = model_size // heads  # d_k
        self.dropout = dropout
        self.fused = fused
        self.query = nn.Linear(model_size, model_size, bias=bias)  # W_q, all heads side by side
        self.key = nn.Linear(model_size, model_size, bias=bias)  # W_k
        self.value = nn.Linear(model_size, model_size, bias=bias)  # W_v
        self.output = nn.Linear(model_size, model_size, bias=bias)  # W_o

    # --- heads ---------------------------------------------------------------------------------------------------

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] → [B, H, T, d_k]: column block i of x is head i."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_size).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, d_k] → [B, T, d_model]: the heads side by side, [head_1; ...; head_h]."""
        batch, heads, length, head_size = x.shape
        return x.transpose(1, 2).reshape(batch, length, heads * head_size)

    # --- projections ---------------------------------------------------------------------------------------------

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Q = X W_q, split into heads: [B, Tq, d_model] → [B, H, Tq, d_k]."""
        return self.split_heads(self.query(x))

    def keys_values(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K = Y W_k, V = Y W_v, split into heads: [B, Tk, d_model] → two [B, H, Tk, d_k]."""
        return self.split_heads(self.key(y)), self.split_heads(self.value(y))

    # --- attention -----------------------------------------------------------------------------------------------

    def takes_fused_path(self, q: torch.Tensor, dropout: float, need_weights: bool) -> bool:
        """Whether `attend` runs through `F.scaled_dot_product_attention`: with `fused`, when the weights are not
        requested, and not for attention dropout on CPU, where torch has no fused kernel for it and falls back to the
        same unfused softmax(QKᵀ/√d_k + M)V as ours, with a slower dropout mask (see attnmt/models/dropout.py)."""
        return self.fused and not need_weights and (dropout == 0.0 or q.device.type != "cpu")

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None,
               causal: bool = False, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(QKᵀ/√d_k + M)V for every head, merged and projected by W_o.

        q [B, H, Tq, d_k], k and v [B, H, Tk, d_k], key_mask [B, Tk] (True = real token) →
        output [B, Tq, d_model], weights [B, H, Tq, Tk] (None unless `need_weights`).
        """
        allowed = None  # M as booleans: True = may attend, [B or 1, 1, Tq or 1, Tk]
        if key_mask is not None:
            allowed = key_mask[:, None, None, :]  # [B, 1, 1, Tk]
        if causal:
            future = causal_mask(q.size(2), k.size(2), q.device)[None, None]  # [1, 1, Tq, Tk]
            allowed = future if allowed is None else allowed & future
        dropout = self.dropout if self.training else 0.0

        if self.takes_fused_path(q, dropout, need_weights):
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)  # [B, H, Tq, d_k]
            return self.output(self.merge_heads(context)), None

        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)  # QKᵀ/√d_k [B, H, Tq, Tk]
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))  # + M
        weights = torch.softmax(scores, dim=-1)  # [B, H, Tq, Tk]
        context = drop(weights, dropout, self.training) @ v  # head_i = Dropout(weights_i) V_i [B, H, Tq, d_k]
        output = self.output(self.merge_heads(context))  # [head_1; ...; head_h] W_o [B, Tq, d_model]
        return output, weights if need_weights else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, key_mask: torch.Tensor | None = None,
                causal: bool = False, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MultiHead(X, Y): x [B, Tq, d_model] asks, y [B, Tk, d_model] is read (default y = x, self-attention).

        Returns output [B, Tq, d_model] and the per-head weights [B, H, Tq, Tk] (None unless `need_weights`).
        """
        k, v = self.keys_values(x if y is None else y)
        return self.attend(self.queries(x), k, v, key_mask, causal, need_weights)
