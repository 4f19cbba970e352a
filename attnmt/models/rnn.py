"""RNN encoder-decoder with attention (seeds 000-002), top to bottom.

    encoder      h_1..h_n = RNN(embed(x_1..x_n))                   keys and values of the attention
    bridge       s_0 = tanh(W_b h_n)   (identity when sizes already match: the seeds' plain context vector)
    decoder, Luong style (Luong et al. 2015), query = current state s_t:
                 s_t = RNN(s_{t-1}, [embed(y_{t-1}); h̃_{t-1} if input feeding])
                 c_t, α_t = attention(s_t, H)
                 h̃_t = combine(c_t, s_t)
    decoder, Bahdanau style (Bahdanau et al. 2015), query = previous state s_{t-1}:
                 c_t, α_t = attention(s_{t-1}, H)
                 s_t = RNN(s_{t-1}, [embed(y_{t-1}); c_t])
                 h̃_t = combine(c_t, s_t)
    combine      concat: h̃_t = tanh(W_c [c_t; s_t])      add: h̃_t = c_t + s_t   (seed 000, step 4a / 4b)
    output       p(y_t | y_<t, x) = softmax(W_o h̃_t)
    no attention h̃_t = s_t: the decoder sees the source only through s_0, the fixed context vector.

`RNNSeq2Seq` implements the model contract (`attnmt.models.contract.Seq2SeqModel`): `encode`, `start_state`, `step`,
`forward` (teacher forcing) and `describe`. Its attention is one layer of one head, so it comes out as [B, 1, 1, S]
per step (the contract's layout). The state also counts the target position t (`position` [B]), which local
attention (`local_m`: p_t = t) reads.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnmt import attention
from attnmt.config import RNNConfig
from attnmt.data.tokenizer import PAD_ID
from attnmt.errors import ConfigError
from attnmt.models.contract import ModelDescription, State, count_parameters, log_probabilities

RNN_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def _to_batch_first(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.transpose(0, 1).contiguous()  # [L, B, H] → [B, L, H]


def _to_layer_first(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.transpose(0, 1).contiguous()  # [B, L, H] → [L, B, H]


class Encoder(nn.Module):
    """h_1..h_n = RNN(embed(x)); a bidirectional RNN concatenates both directions, h_i = [→h_i; ←h_i]."""

    def __init__(self, vocab_size: int, config: RNNConfig) -> None:
        super().__init__()
        hidden = config.encoder_hidden_size or config.hidden_size
        self.embed = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.state_dropout = nn.Dropout(config.dropout) if config.encoder_state_dropout else nn.Identity()
        self.rnn = RNN_CELLS[config.cell](
            config.embedding_size, hidden, num_layers=config.encoder_layers, batch_first=True,
            bidirectional=config.bidirectional, dropout=config.dropout if config.encoder_layers > 1 else 0.0)
        self.directions = 2 if config.bidirectional else 1
        self.output_size = hidden * self.directions

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """src [B, S], src_mask [B, S] → states [B, S, H·dirs], final states of the top layer ([B, H·dirs], ...).

        Sequences are packed, so padding changes neither the states nor the final state.
        """
        lengths = src_mask.sum(dim=1).cpu()
        embedded = self.dropout(self.embed(src))  # [B, S, E]
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        packed_states, final = self.rnn(packed)
        states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=src.size(1))
        finals = final if isinstance(final, tuple) else (final,)  # (h_n,) or (h_n, c_n) of an LSTM
        return self.state_dropout(states), tuple(self._top_layer(f) for f in finals)

    def _top_layer(self, final: torch.Tensor) -> torch.Tensor:
        # final [layers·dirs, B, H] → top layer, directions concatenated [B, H·dirs]
        top = final[-self.directions:]
        return torch.cat(list(top), dim=-1)


class Bridge(nn.Module):
    """s_0 = tanh(W_b h_n): the encoder's final state becomes the decoder's first state, one per decoder layer.

    When the sizes already match (a unidirectional encoder as wide as the decoder) the final state is passed on
    unchanged, as in the seeds' plain seq2seq.
    """

    def __init__(self, encoder_size: int, decoder_size: int, layers: int) -> None:
        super().__init__()
        self.layers = layers
        self.projection = None
        if encoder_size != decoder_size:
            self.projection = nn.Linear(encoder_size, decoder_size)

    def forward(self, final: torch.Tensor, squash: bool = True) -> torch.Tensor:
        """final [B, He] → initial decoder state [B, L, H]."""
        if self.projection is not None:
            final = self.projection(final)
            final = torch.tanh(final) if squash else final
        return final.unsqueeze(1).expand(-1, self.layers, -1).contiguous()


class Combine(nn.Module):
    """The attentional state h̃_t from the attention value c_t and the decoder state s_t.

    concat: h̃_t = tanh(W_c [c_t; s_t])         add: h̃_t = c_t + s_t (needs equal sizes)
    """

    def __init__(self, kind: str, context_size: int, state_size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "concat":
            self.projection = nn.Linear(context_size + state_size, state_size, bias=False)
        elif context_size != state_size:
            raise ConfigError(
                f"`model.combine: add` sums the attention value ({context_size}) and the decoder state "
                f"({state_size}), so their sizes must match; use `combine: concat`, or make the encoder output "
                f"(hidden size × directions) equal to `model.hidden_size`.")

    def forward(self, context: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return torch.tanh(self.projection(torch.cat([context, state], dim=-1)))
        return context + state


class Decoder(nn.Module):
    """The decoder RNN, its attention and the output layer; Luong or Bahdanau style, or no attention."""

    def __init__(self, vocab_size: int, encoder_size: int, config: RNNConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.style = config.decoder_style
        self.input_feeding = config.input_feeding
        self.is_lstm = config.cell == "lstm"
        self.embed = nn.Embedding(vocab_size, config.embedding_size, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.attention = None
        self.combine = None
        rnn_input = config.embedding_size
        if config.uses_attention:
            options = config.attention.model_dump(exclude={"score"})  # normalizer, window, scorer options
            self.attention = attention.build(config.attention.score, hidden, encoder_size, **options)
            self.combine = Combine(config.combine, encoder_size, hidden)
            if self.style == "bahdanau":
                rnn_input += encoder_size  # [embed(y_{t-1}); c_t]
            elif self.input_feeding:
                rnn_input += hidden  # [embed(y_{t-1}); h̃_{t-1}]
        self.rnn = RNN_CELLS[config.cell](
            rnn_input, hidden, num_layers=config.decoder_layers, batch_first=True,
            dropout=config.dropout if config.decoder_layers > 1 else 0.0)
        self.output = nn.Linear(hidden, vocab_size, bias=False)  # W_o
        if config.tie_target_embeddings:
            if config.embedding_size != hidden:
                raise ConfigError(
                    f"`model.tie_target_embeddings` shares one matrix between the target embedding "
                    f"({config.embedding_size}) and the output layer ({hidden}); set `model.embedding_size` "
                    f"equal to `model.hidden_size`, or turn tying off.")
            self.output.weight = self.embed.weight

    @property
    def parallel_over_time(self) -> bool:
        """Teacher forcing can run the RNN over all positions at once: no step feeds attention back into the RNN."""
        return self.attention is None or (self.style == "luong" and not self.input_feeding)

    # --- one step ------------------------------------------------------------------------------------------------

    def _run_rnn(self, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """inputs [B, T, I] → outputs of the top layer [B, T, H] and the new state."""
        hidden = _to_layer_first(state["hidden"])
        if self.is_lstm:
            outputs, (hidden, cell) = self.rnn(inputs, (hidden, _to_layer_first(state["cell"])))
            return outputs, {**state, "hidden": _to_batch_first(hidden), "cell": _to_batch_first(cell)}
        outputs, hidden = self.rnn(inputs, hidden)
        return outputs, {**state, "hidden": _to_batch_first(hidden)}

    def _attend(self, query: torch.Tensor, memory: State, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, Tq]: the target positions t of the query rows (local attention's p_t = t)."""
        return self.attention.attend(query, memory["keys"], memory["values"], memory["mask"], positions)

    def step(self, prev_embedded: torch.Tensor, state: State, memory: State
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """One target position. prev_embedded [B, 1, E] → attentional state h̃_t [B, 1, H], new state, α_t [B, 1, S]."""
        position = state["position"]  # t [B]
        state = {**state, "position": position + 1}
        if self.attention is None:
            outputs, state = self._run_rnn(prev_embedded, state)
            return self.dropout(outputs), state, None
        if self.style == "bahdanau":
            query = state["hidden"][:, -1:]  # s_{t-1} of the top layer [B, 1, H], attending for position t
            context, weights = self._attend(query, memory, position.unsqueeze(1))
            outputs, state = self._run_rnn(torch.cat([prev_embedded, context], dim=-1), state)
        else:
            inputs = prev_embedded
            if self.input_feeding:
                inputs = torch.cat([prev_embedded, state["attentional"]], dim=-1)
            outputs, state = self._run_rnn(inputs, state)  # s_t [B, 1, H]
            context, weights = self._attend(outputs, memory, position.unsqueeze(1))
        attentional = self.combine(context, outputs)  # h̃_t [B, 1, H]
        if self.input_feeding:
            state = {**state, "attentional": attentional}
        return self.dropout(attentional), state, weights

    # --- all positions (teacher forcing) -------------------------------------------------------------------------

    def forward(self, tgt_in: torch.Tensor, state: State, memory: State
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """tgt_in [B, T] → logits [B, T, V], attention [B, T, S] (None without attention)."""
        embedded = self.dropout(self.embed(tgt_in))  # [B, T, E]
        if self.parallel_over_time:
            outputs, _ = self._run_rnn(embedded, state)  # s_1..s_T [B, T, H]
            weights = None
            if self.attention is not None:
                positions = torch.arange(tgt_in.size(1), device=tgt_in.device).expand_as(tgt_in)  # t [B, T]
                context, weights = self._attend(outputs, memory, positions)  # [B, T, dv], [B, T, S]
                outputs = self.combine(context, outputs)
            return self.output(self.dropout(outputs)), weights
        steps, all_weights = [], []
        for t in range(tgt_in.size(1)):
            attentional, state, weights = self.step(embedded[:, t:t + 1], state, memory)
            steps.append(attentional)
            all_weights.append(weights)
        return self.output(torch.cat(steps, dim=1)), torch.cat(all_weights, dim=1)


class RNNSeq2Seq(nn.Module):
    """Encoder, bridge and decoder: the RNN encoder-decoder of the study notes, with or without attention; a
    `Seq2SeqModel`."""

    def __init__(self, config: RNNConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(src_vocab_size, config)
        self.decoder = Decoder(tgt_vocab_size, self.encoder.output_size, config)
        self.bridge = Bridge(self.encoder.output_size, config.hidden_size, config.decoder_layers)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> State:
        """The memory the decoder reads: keys projected once per sentence, values, mask, and the final state."""
        states, finals = self.encoder(src, src_mask)
        memory = {"mask": src_mask, "final": finals[0]}
        if self.config.cell == "lstm":
            memory["final_cell"] = finals[1]
        if self.decoder.attention is not None:
            memory["keys"] = self.decoder.attention.prepare_keys(states)  # [B, S, *]
            memory["values"] = states  # [B, S, H·dirs]
        return memory

    def start_state(self, memory: State) -> State:
        batch = memory["final"].size(0)
        state = {"hidden": self.bridge(memory["final"]),  # s_0 [B, L, H]
                 "position": torch.zeros(batch, dtype=torch.long, device=memory["final"].device)}  # t [B]
        if self.config.cell == "lstm":
            state["cell"] = self.bridge(memory["final_cell"], squash=False)
        if self.decoder.input_feeding:
            state["attentional"] = memory["final"].new_zeros(batch, 1, self.config.hidden_size)
        return state

    def step(self, prev_tokens: torch.Tensor, state: State, memory: State, need_weights: bool = True
             ) -> tuple[torch.Tensor, State, torch.Tensor | None]:
        """prev_tokens [B] → log p(y_t | y_<t, x) [B, V], new state, attention weights [B, 1, 1, S] (None without
        attention, or unless `need_weights`)."""
        embedded = self.decoder.embed(prev_tokens).unsqueeze(1)  # [B, 1, E]
        attentional, state, weights = self.decoder.step(embedded, state, memory)
        log_probs = log_probabilities(self.decoder.output(attentional).squeeze(1))  # [B, V]
        return log_probs, state, weights.unsqueeze(1) if weights is not None and need_weights else None

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing: src [B, S], tgt_in [B, T] → logits [B, T, V], and with `return_attention` the
        attention [B, T, 1, 1, S] (None without attention)."""
        memory = self.encode(src, src_mask)
        logits, weights = self.decoder(tgt_in, self.start_state(memory), memory)  # weights [B, T, S]
        return logits, weights[:, :, None, None] if weights is not None and return_attention else None

    def int8_modules(self) -> set[str]:
        """What dynamic int8 quantization replaces (`attnmt.quantization`): the encoder and decoder RNNs when they are
        GRUs or LSTMs (torch has no int8 plain RNN), the bridge W_b, the combine layer W_c and the output layer W_o
        (V × H per step: often the largest cost of decoding). The attention's scorer stays float32: some scorers read
        their matrices directly (concat splits W into W_K and W_q), and its keys are projected once per sentence."""
        names = {"decoder.output"}
        if self.config.cell in ("gru", "lstm"):
            names |= {"encoder.rnn", "decoder.rnn"}
        if self.bridge.projection is not None:
            names.add("bridge.projection")
        if self.decoder.combine is not None and self.decoder.combine.kind == "concat":
            names.add("decoder.combine.projection")
        return names

    def self_attention(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> None:
        """None: an RNN has no self-attention (its recurrence carries what came before; the contract's optional
        `self_attention`)."""
        return None

    def describe(self) -> ModelDescription:
        c = self.config
        cell, encoder = c.cell.upper(), c.encoder_hidden_size or c.hidden_size
        attention = c.attention.score if c.uses_attention else "none"
        encoder_text = f"bidirectional {cell} encoder 2 × {encoder}" if c.bidirectional else f"{cell} encoder {encoder}"
        summary = (f"{encoder_text}, {cell} decoder {c.hidden_size}, "
                   + (f"{attention} attention, {c.decoder_style.capitalize()} style" if c.uses_attention
                      else "no attention (a fixed context vector)"))
        layers = 1 if c.uses_attention else 0
        return ModelDescription(family=c.type, summary=summary, attention=attention, attention_layers=layers,
                                attention_heads=layers, encoder_layers=c.encoder_layers,
                                decoder_layers=c.decoder_layers, hidden_size=c.hidden_size,
                                parameters=count_parameters(self), settings=c.model_dump(mode="json"))
