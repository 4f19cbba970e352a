"""An ensemble of K models that share one source and one target vocabulary, decoding as one `Seq2SeqModel`.

Each step mixes the members' next-token distributions with equal weights:

    p(y | y_<t, x) = (1/K) Σ_k p_k(y | y_<t, x)
    log p          = logsumexp_k log p_k(y | y_<t, x) − log K            (in float32 at least, as every member's)

so greedy and beam search (`attnmt.search`) decode an ensemble as they decode one model. The members may be of any
family (an RNN beside a Transformer): the ensemble asks them nothing but the contract.

Memory and state are the members' dicts merged, each member's keys prefixed by its number ("0.keys",
"1.cross_keys_0", ...), so that search's one `index_select` per step reorders every member at once.

Attention: the members' layouts differ (an RNN 1 × 1, a Transformer L × H), so the ensemble's attention is one
layer of one head: the mean, over the members that attend, of each member's mean over its layers and heads,
[B, 1, 1, S] from `step` and [B, T, 1, 1, S] from `forward`. Each row is a mean of distributions over the source,
so it still sums to 1. None when no member attends (or when weights are not asked for).

The ensemble is for inference only: its members stay in eval mode, and `train()` is refused (train each member on
its own, then ensemble them). The target vocabulary size is checked at construction; that the members share the
source vocabulary, and the same pieces behind the same ids on both sides, is for the caller to ensure (models
trained with the same tokenizer files).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from attnmt import devices
from attnmt.data.tokenizer import BOS_ID, EOS_ID
from attnmt.errors import CheckpointError
from attnmt.models.contract import ModelDescription, Seq2SeqModel, State, log_probabilities


def mixture_log_probs(member_log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """log (1/K) Σ_k p_k(y) = logsumexp_k log p_k(y) − log K: K tensors [..., V] → [..., V], in the widest of their
    dtypes."""
    stacked = torch.stack(list(member_log_probs))  # [K, ..., V]
    return torch.logsumexp(stacked, dim=0) - math.log(len(member_log_probs))


def mean_attention(member_weights: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """ā = mean_k (mean over the L_k layers and H_k heads of member k), over the members with attention:
    K tensors [..., L_k, H_k, S] (or None) → [..., 1, 1, S], or None if every one is None."""
    means = [weights.mean(dim=(-3, -2)) for weights in member_weights if weights is not None]  # [..., S] each
    if not means:
        return None
    return torch.stack(means).mean(dim=0)[..., None, None, :]  # [..., 1, 1, S]


@torch.inference_mode()
def target_vocabulary_size(model: Seq2SeqModel) -> int:
    """V of a model's next-token distribution [B, V], asked through the contract alone: one step from BOS over a
    one-token source."""
    device = devices.model_device(model)
    src = torch.full((1, 1), EOS_ID, dtype=torch.long, device=device)  # [1, 1]
    memory = model.encode(src, torch.ones(1, 1, dtype=torch.bool, device=device))
    prev = torch.full((1,), BOS_ID, dtype=torch.long, device=device)  # [1]
    log_probs, _, _ = model.step(prev, model.start_state(memory), memory, need_weights=False)  # [1, V]
    return log_probs.size(-1)


def _prefixed(index: int, tensors: State) -> State:
    """Member `index`'s memory or state, its keys prefixed "index."."""
    return {f"{index}.{name}": tensor for name, tensor in tensors.items()}


def _member_part(index: int, tensors: State) -> State:
    """The part of the ensemble's memory or state that belongs to member `index`, under the member's own keys."""
    prefix = f"{index}."
    return {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


class Ensemble(nn.Module):
    """K ≥ 2 models over one source and one target vocabulary, as one `Seq2SeqModel` that averages their next-token
    probabilities (see the module docstring). For inference only: training an ensemble is not supported.

    `names` (default "member 1", "member 2", ...) say which model is which in errors: pass the model directories.
    """

    def __init__(self, members: Sequence[Seq2SeqModel], names: Sequence[str] | None = None) -> None:
        super().__init__()
        names = list(names) if names is not None else [f"member {k + 1}" for k in range(len(members))]
        if len(members) < 2:
            raise CheckpointError(f"an ensemble needs at least 2 models, got {len(members)} ({', '.join(names)}): "
                                  f"give two or more model directories")
        self.members = nn.ModuleList(members)
        self.eval()
        sizes = [target_vocabulary_size(member) for member in self.members]
        if len(set(sizes)) > 1:
            listed = ", ".join(f"{name}: {size}" for name, size in zip(names, sizes))
            raise CheckpointError(f"the models of an ensemble must share one target vocabulary, but their target "
                                  f"vocabulary sizes differ ({listed}): ensemble models trained with the same "
                                  f"tokenizer")

    def train(self, mode: bool = True) -> "Ensemble":
        """Only eval mode: an ensemble is for inference (train each member on its own, then ensemble them)."""
        if mode:
            raise NotImplementedError("an Ensemble is for inference only: train its members one by one, "
                                      "then ensemble them")
        return super().train(False)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        """src [B, S], src_mask [B, S] → every member's memory, its keys prefixed by the member's number."""
        memory: State = {}
        for k, member in enumerate(self.members):
            memory.update(_prefixed(k, member.encode(src, src_mask)))
        return memory

    def start_state(self, memory: State) -> State:
        state: State = {}
        for k, member in enumerate(self.members):
            state.update(_prefixed(k, member.start_state(_member_part(k, memory))))
        return state

    def step(self, prev_tokens: torch.Tensor, state: State, memory: State, need_weights: bool = True
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """prev_tokens [B] → log (1/K) Σ_k p_k(y_t | y_<t, x) [B, V], every member's next state, and the mean
        attention [B, 1, 1, S] (None without attention or unless `need_weights`)."""
        log_probs, weights, new_state = [], [], {}
        for k, member in enumerate(self.members):
            member_log_probs, member_state, member_weights = member.step(
                prev_tokens, _member_part(k, state), _member_part(k, memory), need_weights)  # [B, V], [B, L, H, S]
            log_probs.append(member_log_probs)
            weights.append(member_weights)
            new_state.update(_prefixed(k, member_state))
        return mixture_log_probs(log_probs), new_state, mean_attention(weights)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: src [B, S], tgt_in [B, T] → the mixture's log-probabilities [B, T, V] as the "logits"
        (log_softmax leaves them as they are), and with `return_attention` the mean attention [B, T, 1, 1, S]."""
        outputs = [member(src, src_mask, tgt_in, return_attention) for member in self.members]  # [B, T, V], ...
        log_probs = mixture_log_probs([log_probabilities(logits) for logits, _ in outputs])  # [B, T, V]
        return log_probs, mean_attention([weights for _, weights in outputs])

    def self_attention(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> None:
        """None: the members' self-attentions are theirs alone (the contract's optional `self_attention`)."""
        return None

    def describe(self) -> ModelDescription:
        """The members' descriptions combined: their summaries joined by " + ", parameters summed, the largest
        member's layers and size, one attention layer of one head (none if no member attends)."""
        members = [member.describe() for member in self.members]
        attending = [d for d in members if d.has_attention]
        layers = 1 if attending else 0
        return ModelDescription(
            family="ensemble", summary=f"ensemble of {len(members)}: " + " + ".join(d.summary for d in members),
            attention=" + ".join(dict.fromkeys(d.attention for d in attending)) or "none",
            attention_layers=layers, attention_heads=layers,
            encoder_layers=max(d.encoder_layers for d in members),
            decoder_layers=max(d.decoder_layers for d in members),
            hidden_size=max(d.hidden_size for d in members),
            parameters=sum(d.parameters for d in members),
            settings={"members": [d.settings for d in members]})
