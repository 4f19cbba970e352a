"""The model contract: what search, training, the translator, the server, studies and the CLI may ask of a model.

Every sequence-to-sequence model implements `Seq2SeqModel` with the same signatures:

    encode(src [B, S], src_mask [B, S]) -> memory              dict of batch-first tensors, once per sentence
    start_state(memory) -> state                                 dict of batch-first tensors
    step(prev_tokens [B], state, memory, need_weights=True)
        -> (log_probs [B, V], state, attention [B, L, H, S] or None)
    forward(src, src_mask, tgt_in [B, T], return_attention=False)
        -> (logits [B, T, V], attention [B, T, L, H, S] or None)      teacher forcing
    describe() -> ModelDescription                               what the model is, in family-neutral terms

and may offer (`self_attention` below asks it, None where a model does not):

    self_attention(src, src_mask, tgt_in [B, T]) -> SelfAttention or None
        teacher forcing, keeping the weights of every self-attention layer and head: the encoder's [B, Le, H, S, S]
        and the (causal) decoder's [B, Ld, H, T, T]; None for a model without self-attention (an RNN)

Attention always has the same layout: L attention layers × H heads per layer, the source positions last. An RNN
has one layer of one head (L = H = 1); a Transformer returns the cross-attention of each of its L decoder layers
and H heads. A model without attention returns None (and describes itself with L = H = 0), and so does every model
when `need_weights` / `return_attention` is false (a Transformer may then take a fused attention path).

States and memories are dicts of batch-first tensors, so beam search reorders any model's state with one
`index_select`; the log-probabilities of `step` are at least float32, so that search sums exact scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, runtime_checkable

import torch
from pydantic import Field

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ModelDescription:
    """A model described without knowing its family: for `/info` (whose schema takes these descriptions), the page,
    the study tables and the CLI."""

    family: Annotated[str, Field(description="the config's model.type: rnn or transformer")]
    summary: Annotated[str, Field(description="one line for people, e.g. \"bidirectional GRU encoder 2 × 256, GRU "
                                              "decoder 512, additive attention, Luong style\"")]
    attention: Annotated[str, Field(description="the attention score (e.g. additive, scaled_dot), or none")]
    attention_layers: Annotated[int, Field(description="L of the attention layout [.., L, H, S] (an RNN: 1, a "
                                                       "Transformer: its decoder layers); 0 without attention")]
    attention_heads: Annotated[int, Field(description="H, heads per attention layer; 0 without attention")]
    encoder_layers: int
    decoder_layers: int
    hidden_size: Annotated[int, Field(description="the decoder's state size (RNN) or d_model (Transformer)")]
    parameters: int
    settings: Annotated[dict[str, Any], Field(description="the model section of the config, as validated")] = \
        field(default_factory=dict)
    self_attention_heads: Annotated[int, Field(description="H of the encoder's and the decoder's self-attention (a "
                                                           "Transformer: its heads, in encoder_layers and "
                                                           "decoder_layers layers); 0 without self-attention (an "
                                                           "RNN)")] = 0

    @property
    def has_attention(self) -> bool:
        return self.attention_layers > 0


@runtime_checkable
class Seq2SeqModel(Protocol):
    """The interface every model family implements (see the module docstring for shapes)."""

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State: ...

    def start_state(self, memory: State) -> State: ...

    def step(self, prev_tokens: torch.Tensor, state: State, memory: State, need_weights: bool = True
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]: ...

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def describe(self) -> ModelDescription: ...


@dataclass(frozen=True)
class SelfAttention:
    """Every self-attention weight of one teacher-forced pass: row i of a head is query position i's distribution
    over the key positions (masked ones 0)."""

    encoder: torch.Tensor  # [B, Le, H, S, S]: source position over source positions
    decoder: torch.Tensor  # [B, Ld, H, T, T]: target input position over itself and the ones before (causal)


def self_attention(model: Seq2SeqModel, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor
                   ) -> SelfAttention | None:
    """The model's self-attention weights with teacher forcing over tgt_in [B, T] (`self_attention` of the
    contract), or None: a model without self-attention (an RNN), or one that does not offer them."""
    method = getattr(model, "self_attention", None)
    return None if method is None else method(src, src_mask, tgt_in)


def log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """log p(y | y_<t, x) = log_softmax(logits), in at least float32 (under bf16/fp16 autocast too), so that search
    sums exact log-probabilities; float64 models stay float64."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())
