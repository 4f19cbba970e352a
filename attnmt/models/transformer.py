"""The encoder-decoder Transformer (Vaswani et al. 2017), top to bottom.

    embeddings   x_i = E[y_i] · √d_model + PE(i), then dropout
                 sinusoidal  PE(i, 2j) = sin(i / 10000^(2j/d_model)),  PE(i, 2j+1) = cos(i / 10000^(2j/d_model))
                 learned     PE(i) = P[min(i, max_positions − 1)]
    sublayer     post-norm   x ← LN(x + Dropout(F(x)))          (the paper)
                 pre-norm    x ← x + Dropout(F(LN(x)))          (a final LN closes each stack)
    encoder      N × [ self-attention MultiHead(X, X) with the source padding masked ; feed-forward ]
    decoder      N × [ causal self-attention MultiHead(Y, Y) ; cross-attention MultiHead(Y, H_enc) ; feed-forward ]
    feed-forward FFN(x) = max(0, x W_1 + b_1) W_2 + b_2            (d_model → d_ff → d_model, dropout after the ReLU)
    output       p(y_t | y_<t, x) = softmax(W_o h_t)              W_o may be the target embedding matrix (tied)

Multi-head attention is `attnmt.models.multihead.MultiHeadAttention`; dropout is `attnmt.models.dropout` (torch's,
with the mask drawn faster on CPU).

`TransformerSeq2Seq` implements the model contract (`attnmt.models.contract.Seq2SeqModel`), so search, training,
the translator and the edges use it as they use the RNN:

    encode(src, src_mask) → memory      encoder output, the mask, and the cross-attention keys and values of every
                                        decoder layer, projected once per sentence:
                                        "encoder_output" [B, S, D], "mask" [B, S],
                                        "cross_keys_{l}", "cross_values_{l}" [B, H, S, d_k] for l = 0..L−1
    start_state(memory) → state         empty self-attention caches "self_keys_{l}", "self_values_{l}" [B, H, 0, d_k]
                                        and the target position "position" [B]
    step(prev, state, memory)           only the new position: its keys/values are appended to the caches (time axis
                                        2), its query reads the cache (self-attention) and the precomputed memory
                                        keys/values (cross-attention). → log_probs [B, V], state, attention [B, L, H, S]
    forward(src, src_mask, tgt_in)      teacher forcing over all positions with a causal mask → logits [B, T, V], and
                                        (with return_attention=True) attention [B, T, L, H, S], else None

Attention contract: `step` returns the cross-attention weights of every decoder layer and head, [B, L, H, S];
`forward` stacks the same per-step tensors along time, [B, T, L, H, S]. Search keeps them per step
([T, L, H, S] per hypothesis), and the translator exposes `Translation.attention_heads` [L, H, T, S] and
`Translation.attention` [T, S], the mean over the heads of the last layer.

All states and memories are dicts of batch-first tensors, so beam search reorders them with one `index_select`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnmt.config import TransformerConfig
from attnmt.data.tokenizer import PAD_ID
from attnmt.errors import ConfigError
from attnmt.models.contract import ModelDescription, SelfAttention, State, count_parameters, log_probabilities
from attnmt.models.dropout import Dropout
from attnmt.models.multihead import MultiHeadAttention


class Positions(nn.Module):
    """PE(i): sinusoidal (no parameters, any position) or learned (a table of `max_positions` rows)."""

    def __init__(self, kind: str, model_size: int, max_positions: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "learned":
            self.table = nn.Embedding(max_positions, model_size)  # P
        else:
            # 1 / 10000^(2j/d_model) for j = 0..d_model/2 − 1
            frequencies = torch.exp(-math.log(10000.0) * torch.arange(0, model_size, 2).float() / model_size)
            self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B, T] (0-based) → PE [B, T, d_model]."""
        if self.kind == "learned":
            return self.table(positions.clamp(max=self.table.num_embeddings - 1))  # P[min(i, max − 1)]
        angles = positions.unsqueeze(-1).float() * self.frequencies  # i / 10000^(2j/d_model) [B, T, d_model/2]
        # PE(i, 2j) = sin, PE(i, 2j+1) = cos: interleave the two along the last axis
        return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [B, T, d_model]


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied to each position separately."""

    def __init__(self, model_size: int, inner_size: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(model_size, inner_size)  # W_1, b_1
        self.outer = nn.Linear(inner_size, model_size)  # W_2, b_2
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.dropout(torch.relu(self.inner(x))))


class Sublayer(nn.Module):
    """A residual connection around F with layer normalization, before (pre-norm) or after (post-norm) it:

        pre:  x + Dropout(F(LN(x)))          post: LN(x + Dropout(F(x)))
    """

    def __init__(self, model_size: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.pre_norm = norm == "pre"
        self.norm = nn.LayerNorm(model_size)
        self.dropout = Dropout(dropout)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """What F reads: LN(x) with pre-norm, x with post-norm."""
        return self.norm(x) if self.pre_norm else x

    def output(self, x: torch.Tensor, f_x: torch.Tensor) -> torch.Tensor:
        """The sublayer's result from its input x and F's output."""
        if self.pre_norm:
            return x + self.dropout(f_x)  # x + Dropout(F(LN(x)))
        return self.norm(x + self.dropout(f_x))  # LN(x + Dropout(F(x)))


class EncoderLayer(nn.Module):
    """x ← Sublayer(x, MultiHead(x, x)) ; x ← Sublayer(x, FFN(x))"""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.self_attention = MultiHeadAttention(d, config.heads, config.attention_dropout,
                                                 fused=config.fused_attention)
        self.attention_sublayer = Sublayer(d, config.norm, config.dropout)
        self.feed_forward = FeedForward(d, config.feed_forward_size, config.dropout)
        self.feed_forward_sublayer = Sublayer(d, config.norm, config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, S, D], mask [B, S] (True = real token) → [B, S, D], and the self-attention weights [B, H, S, S]
        (None unless `need_weights`). Padding positions are never read."""
        h = self.attention_sublayer.input(x)
        attended, weights = self.self_attention(h, key_mask=mask, need_weights=need_weights)  # MultiHead(h, h)
        x = self.attention_sublayer.output(x, attended)
        return self.feed_forward_sublayer.output(x, self.feed_forward(self.feed_forward_sublayer.input(x))), weights


class DecoderLayer(nn.Module):
    """y ← Sublayer(y, causal MultiHead(y, y)) ; y ← Sublayer(y, MultiHead(y, H_enc)) ; y ← Sublayer(y, FFN(y))"""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.self_attention = MultiHeadAttention(d, config.heads, config.attention_dropout,
                                                 fused=config.fused_attention)
        self.self_attention_sublayer = Sublayer(d, config.norm, config.dropout)
        self.cross_attention = MultiHeadAttention(d, config.heads, config.attention_dropout,
                                                  fused=config.fused_attention)
        self.cross_attention_sublayer = Sublayer(d, config.norm, config.dropout)
        self.feed_forward = FeedForward(d, config.feed_forward_size, config.dropout)
        self.feed_forward_sublayer = Sublayer(d, config.norm, config.dropout)

    def forward(self, y: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor],
                cross: tuple[torch.Tensor, torch.Tensor], src_mask: torch.Tensor, need_weights: bool,
                need_self_weights: bool = False
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """The new positions y [B, T, D] given the cached keys/values of the earlier ones, past ([B, H, P, d_k] × 2),
        and the encoder's projected keys/values, cross ([B, H, S, d_k] × 2).

        Returns y [B, T, D], the cache grown by T positions ([B, H, P + T, d_k] × 2), the cross-attention
        weights [B, H, T, S] (None unless `need_weights`) and the self-attention weights [B, H, T, P + T] (None
        unless `need_self_weights`).
        """
        # causal self-attention: position P + i reads the cache and the new positions up to itself
        h = self.self_attention_sublayer.input(y)
        k, v = self.self_attention.keys_values(h)  # K = h W_k, V = h W_v of the new positions [B, H, T, d_k]
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [B, H, P + T, d_k]
        attended, self_weights = self.self_attention.attend(self.self_attention.queries(h), k, v,
                                                            causal=y.size(1) > 1, need_weights=need_self_weights)
        y = self.self_attention_sublayer.output(y, attended)

        # cross-attention: queries from the decoder, keys and values of the encoder output (projected in `encode`)
        h = self.cross_attention_sublayer.input(y)
        attended, weights = self.cross_attention.attend(self.cross_attention.queries(h), cross[0], cross[1],
                                                        key_mask=src_mask, need_weights=need_weights)
        y = self.cross_attention_sublayer.output(y, attended)

        y = self.feed_forward_sublayer.output(y, self.feed_forward(self.feed_forward_sublayer.input(y)))
        return y, (k, v), weights, self_weights


class TransformerSeq2Seq(nn.Module):
    """Embeddings, encoder stack, decoder stack and output layer, with the interface of `attnmt.models`."""

    def __init__(self, config: TransformerConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        if config.share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ConfigError(
                f"`model.share_embeddings` uses one embedding matrix for both sides, but the source vocabulary has "
                f"{src_vocab_size} entries and the target {tgt_vocab_size}; use a joint vocabulary "
                f"(`tokenizer.joint: true`), or set `model.share_embeddings: false`.")
        # With shared embeddings the source side reads the target matrix, so that it is one parameter (registered
        # once: the checkpoint stores it once); the tied output layer is registered after it, as `output`.
        self.target_embedding = nn.Embedding(tgt_vocab_size, d, padding_idx=PAD_ID)  # E (target)
        self.source_embedding = None if config.share_embeddings else nn.Embedding(src_vocab_size, d,
                                                                                  padding_idx=PAD_ID)
        self.source_positions = Positions(config.positions, d, config.max_positions)
        self.target_positions = Positions(config.positions, d, config.max_positions)
        self.dropout = Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        pre_norm = config.norm == "pre"  # pre-norm leaves the residual stream unnormalized: one LN closes each stack
        self.encoder_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d) if pre_norm else nn.Identity()
        self.output = nn.Linear(d, tgt_vocab_size, bias=False)  # W_o
        self._initialize()
        if config.tie_target_embeddings:
            self.output.weight = self.target_embedding.weight

    def _initialize(self) -> None:
        """Glorot-uniform weight matrices, zero biases; embeddings N(0, 1/d_model), so that E[y] · √d_model has unit
        scale; the padding row stays zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embedding in (self.source_embedding, self.target_embedding):
            if embedding is not None:
                nn.init.normal_(embedding.weight, std=self.config.hidden_size ** -0.5)
                with torch.no_grad():
                    embedding.weight[PAD_ID].zero_()

    # --- pieces --------------------------------------------------------------------------------------------------

    def _embed(self, table: nn.Embedding, positions: Positions, ids: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """x_i = E[y_i] · √d_model + PE(i), then dropout. ids, at [B, T] → [B, T, D]."""
        return self.dropout(table(ids) * math.sqrt(self.config.hidden_size) + positions(at))

    def _decode(self, tgt: torch.Tensor, state: State, memory: State, need_weights: bool,
                need_self_weights: bool = False
                ) -> tuple[torch.Tensor, State, torch.Tensor | None, torch.Tensor | None]:
        """Run the decoder over the new target positions tgt [B, T], after the ones cached in `state`.

        Returns the top states h [B, T, D], the state with T more positions, the cross-attention weights of every
        layer and head [B, T, L, H, S] (None unless `need_weights`), and the self-attention weights [B, L, H, T,
        P + T] (None unless `need_self_weights`). Teacher forcing calls it once with all positions and empty caches,
        search once per step with one position.
        """
        position = state["position"]  # [B]
        at = position.unsqueeze(1) + torch.arange(tgt.size(1), device=tgt.device)  # target positions [B, T]
        y = self._embed(self.target_embedding, self.target_positions, tgt, at)  # [B, T, D]
        new_state = {"position": position + tgt.size(1)}
        layer_weights, layer_self_weights = [], []
        for l, layer in enumerate(self.decoder_layers):
            past = (state[f"self_keys_{l}"], state[f"self_values_{l}"])  # [B, H, P, d_k] × 2
            cross = (memory[f"cross_keys_{l}"], memory[f"cross_values_{l}"])  # [B, H, S, d_k] × 2
            y, (k, v), weights, self_weights = layer(y, past, cross, memory["mask"], need_weights, need_self_weights)
            new_state[f"self_keys_{l}"], new_state[f"self_values_{l}"] = k, v  # [B, H, P + T, d_k]
            layer_weights.append(weights)
            layer_self_weights.append(self_weights)
        attention = None
        if need_weights:
            attention = torch.stack(layer_weights, dim=1).permute(0, 3, 1, 2, 4)  # [B, L, H, T, S] → [B, T, L, H, S]
        self_attention = torch.stack(layer_self_weights, dim=1) if need_self_weights else None  # [B, L, H, T, P + T]
        return self.decoder_norm(y), new_state, attention, self_attention

    # --- the model interface -------------------------------------------------------------------------------------

    def _encode(self, src: torch.Tensor, src_mask: torch.Tensor, need_weights: bool
                ) -> tuple[State, torch.Tensor | None]:
        """The memory (`encode`), and the encoder's self-attention weights [B, L, H, S, S] (None unless
        `need_weights`)."""
        at = torch.arange(src.size(1), device=src.device).expand_as(src)  # source positions [B, S]
        table = self.source_embedding if self.source_embedding is not None else self.target_embedding
        x = self._embed(table, self.source_positions, src, at)  # [B, S, D]
        layer_weights = []
        for layer in self.encoder_layers:
            x, weights = layer(x, src_mask, need_weights)
            layer_weights.append(weights)
        x = self.encoder_norm(x)  # H_enc [B, S, D]
        memory = {"encoder_output": x, "mask": src_mask}
        for l, layer in enumerate(self.decoder_layers):
            # K = H_enc W_k, V = H_enc W_v of each decoder layer's cross-attention: once per sentence
            memory[f"cross_keys_{l}"], memory[f"cross_values_{l}"] = layer.cross_attention.keys_values(x)
        return memory, torch.stack(layer_weights, dim=1) if need_weights else None  # [B, L, H, S, S]

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        """src [B, S], src_mask [B, S] → the memory the decoder reads (see the module docstring)."""
        return self._encode(src, src_mask, need_weights=False)[0]

    def start_state(self, memory: State) -> State:
        """Empty self-attention caches [B, H, 0, d_k] for every decoder layer, and the target position t = 0 [B]."""
        batch, device = memory["mask"].size(0), memory["mask"].device
        heads, head_size = self.config.heads, self.config.hidden_size // self.config.heads
        empty = memory["encoder_output"].new_zeros(batch, heads, 0, head_size)
        state = {"position": torch.zeros(batch, dtype=torch.long, device=device)}
        for l in range(len(self.decoder_layers)):
            state[f"self_keys_{l}"], state[f"self_values_{l}"] = empty, empty
        return state

    def step(self, prev_tokens: torch.Tensor, state: State, memory: State, need_weights: bool = True
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """prev_tokens [B] → log p(y_t | y_<t, x) [B, V], the state one position longer, and the cross-attention
        weights of every layer and head [B, L, H, S] (None unless `need_weights`: then attention may take the fused
        path)."""
        h, state, attention, _ = self._decode(prev_tokens.unsqueeze(1), state, memory, need_weights)
        log_probs = log_probabilities(self.output(h[:, -1]))  # [B, V]
        return log_probs, state, None if attention is None else attention[:, -1]

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: src [B, S], tgt_in [B, T] → logits [B, T, V], and the cross-attention weights
        [B, T, L, H, S] with `return_attention` (else None, so that attention can take the fused path)."""
        memory = self.encode(src, src_mask)
        h, _, attention, _ = self._decode(tgt_in, self.start_state(memory), memory, need_weights=return_attention)
        return self.output(h), attention

    def self_attention(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> SelfAttention:
        """Teacher forcing over tgt_in [B, T], keeping every self-attention weight: the encoder's [B, Le, H, S, S]
        (source position i over the source) and the decoder's [B, Ld, H, T, T] (target input position i over
        positions ≤ i), as search's steps compute them one position at a time."""
        memory, encoder = self._encode(src, src_mask, need_weights=True)
        _, _, _, decoder = self._decode(tgt_in, self.start_state(memory), memory, need_weights=False,
                                        need_self_weights=True)
        return SelfAttention(encoder=encoder, decoder=decoder)

    def int8_modules(self) -> set[str]:
        """What dynamic int8 quantization replaces (`attnmt.quantization`): every Linear layer, i.e. W_q, W_k, W_v,
        W_o of each attention, both feed-forward matrices and the output layer over the vocabulary; embeddings,
        positions and layer norms stay float32."""
        return {name for name, module in self.named_modules() if isinstance(module, nn.Linear)}

    def describe(self) -> ModelDescription:
        c = self.config
        summary = (f"Transformer {c.encoder_layers} + {c.decoder_layers} layers, d_model {c.hidden_size}, "
                   f"{c.heads} heads, d_ff {c.feed_forward_size}, {c.norm}-norm")
        return ModelDescription(family=c.type, summary=summary, attention="scaled_dot",
                                attention_layers=c.decoder_layers, attention_heads=c.heads,
                                encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers,
                                hidden_size=c.hidden_size, parameters=count_parameters(self),
                                settings=c.model_dump(mode="json"), self_attention_heads=c.heads)
