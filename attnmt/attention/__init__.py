"""Attention: score every key against the query, normalize the energies into weights, take the weighted sum.

    e = f(q, K)                  energies             scores.py      (ten score functions)
    α = normalize(e / T) over real positions (padding gets exactly 0)   normalizers.py (softmax, sparsemax, entmax15)
        optionally only inside a window around an aligned position  local.py (local_m, local_p)
    c = Σ_i α_i v_i              attention value (context)

`build(name, query_size, key_size, **options)` gives the module for a score name in `SCORERS`; the options
`normalizer`, `temperature`, `window` and `window_size` shape the normalization, every other option goes to the
scorer (e.g. `hidden_size`, `activation`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from attnmt.attention.local import WINDOWS, LocalWindow
from attnmt.attention.normalizers import NORMALIZERS, Normalizer, masked_softmax
from attnmt.attention.scores import SCORERS, Scorer
from attnmt.errors import ConfigError

__all__ = ["Attention", "NORMALIZERS", "SCORERS", "WINDOWS", "build", "compare_normalizers", "masked_softmax",
           "recorded_energies"]


class Attention(nn.Module):
    """A scorer, a normalizer (softmax by default), an optional local window and the weighted sum, as one module.

    `forward(query, keys, values, mask)` is the whole computation. Decoders that call it once per step first call
    `prepare_keys(keys)` once per sentence and then `attend(query, prepared_keys, values, mask)` each step.
    `query_positions` [B, Tq] (long), the target positions of the query rows, matter only to the `local_m` window;
    when omitted they are 0..Tq − 1, right for a query of all target positions, wrong for a single decoder step.
    """

    def __init__(self, scorer: Scorer, normalizer: Normalizer | None = None, window: LocalWindow | None = None
                 ) -> None:
        super().__init__()
        self.scorer = scorer
        self.normalizer = normalizer if normalizer is not None else Normalizer("softmax")
        self.window = window
        self.energy_log: list[tuple[Attention, torch.Tensor]] | None = None  # set by `recorded_energies`

    def prepare_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return self.scorer.prepare_keys(keys)

    def attend(self, query: torch.Tensor, prepared_keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
               query_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        energies = self.scorer(query, prepared_keys)  # [B, Tq, Tk]
        if self.energy_log is not None:
            self.energy_log.append((self, energies.detach()))
        if self.window is None:
            weights = self.normalizer(energies, mask)  # [B, Tq, Tk]
        else:
            allowed, gaussian = self.window(query, query_positions, mask)  # [B, Tq, Tk] each
            weights = self.normalizer(energies, allowed) * gaussian  # align · exp(−(s − p_t)² / 2σ²)
            weights = weights / weights.sum(dim=-1, keepdim=True)  # [B, Tq, Tk]
        context = weights @ values  # [B, Tq, dv]
        return context, weights

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                query_positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, Tq, dq], keys [B, Tk, dk], values [B, Tk, dv], mask [B, Tk], query_positions [B, Tq] or None
        → (context [B, Tq, dv], weights [B, Tq, Tk])."""
        return self.attend(query, self.prepare_keys(keys), values, mask, query_positions)


@contextmanager
def recorded_energies(model: nn.Module) -> Iterator[list[tuple[Attention, torch.Tensor]]]:
    """While inside, every `Attention` module of `model` appends (itself, its energies e = f(q, K) [B, Tq, Tk]) to the
    list yielded, once per call, before the normalizer sees them (the lab's energies view, attnmt/trace.py). A model
    without such modules (a Transformer's heads are `MultiHeadAttention`) records nothing."""
    log: list[tuple[Attention, torch.Tensor]] = []
    modules = [module for module in model.modules() if isinstance(module, Attention)]
    for module in modules:
        module.energy_log = log
    try:
        yield log
    finally:
        for module in modules:
            module.energy_log = None


def compare_normalizers(energies: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
                        ) -> dict[str, torch.Tensor]:
    """α = normalize(e / T) for every normalizer of `NORMALIZERS` on the same energies [B, Tq, Tk] (mask [B, Tk]):
    what softmax, sparsemax and entmax15 would make of one step's scores. {name: weights [B, Tq, Tk]}"""
    return {name: Normalizer(name, temperature)(energies, mask) for name in NORMALIZERS}


def build(name: str, query_size: int, key_size: int, normalizer: str = "softmax", temperature: float = 1.0,
          window: str | None = None, window_size: int = 10, **options) -> Attention:
    """The attention module for score `name` (one of `SCORERS`).

    normalizer: one of `NORMALIZERS`; temperature: T in normalize(e / T); window: None / "none" (global attention)
    or one of `WINDOWS`, with half-width `window_size` D. The other `options` go to the scorer (e.g. hidden_size);
    options given as None take the scorer's default, so a whole `model.attention` config section can be passed.
    """
    if name not in SCORERS:
        raise ConfigError(f"unknown attention score {name!r}; choose one of {', '.join(SCORERS)}")
    options = {key: value for key, value in options.items() if value is not None}
    accepted = set(inspect.signature(SCORERS[name]).parameters) - {"query_size", "key_size"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        users = {option: [score for score, cls in SCORERS.items() if option in inspect.signature(cls).parameters]
                 for option in unknown}
        used_by = "; ".join(f"`{option}` is used by {', '.join(users[option]) or 'no score'}" for option in unknown)
        takes = ", ".join(sorted(accepted)) or "no options"
        raise ConfigError(f"attention score {name!r} does not take the option(s) {', '.join(unknown)} ({used_by}); "
                          f"remove them or choose another score. {name!r} takes: {takes}")
    scorer = SCORERS[name](query_size, key_size, **options)
    local = None if window in (None, "none") else LocalWindow(window, query_size, window_size)
    return Attention(scorer, Normalizer(normalizer, temperature), local)
