"""Tests of attnmt.models: shapes and masks, padding invariance, teacher forcing = stepping, config checks."""

from __future__ import annotations

import pytest
import torch

from attnmt.config import RNNConfig
from attnmt.data import BOS_ID, PAD_ID, pad_sequences
from attnmt.errors import ConfigError
from attnmt.models import RNNSeq2Seq, build_model

SRC_VOCAB, TGT_VOCAB = 13, 11
EMBED, HIDDEN = 8, 12
SOURCES = [[5, 6, 7, 8, 9], [4, 10], [12, 11, 4, 6, 7, 8, 5], [9], [6, 6, 7, 4]]
TARGETS = [[4, 5, 6], [7, 8, 9, 10, 4, 5], [6], [4, 9, 10, 8], [5, 5]]

# (id, config): every cell, both directions, Luong (with and without input feeding) and Bahdanau decoders, every
# score where the sizes allow it, both ways of combining, no attention, and deeper stacks.
CONFIGS = {
    "gru-uni-luong-dot-concat": dict(cell="gru", attention="dot"),
    "gru-bi-luong-dot-add": dict(cell="gru", bidirectional=True, encoder_hidden_size=HIDDEN // 2,
                                 attention="dot", combine="add"),
    "gru-bi-luong-general-concat": dict(cell="gru", bidirectional=True, attention="general"),
    "gru-uni-luong-feed-additive-concat": dict(cell="gru", attention="additive", input_feeding=True),
    "gru-bi-bahdanau-additive-concat": dict(cell="gru", bidirectional=True, attention="additive",
                                            decoder_style="bahdanau"),
    "lstm-uni-luong-scaled_dot-add": dict(cell="lstm", attention="scaled_dot", combine="add"),
    "lstm-bi-luong-feed-general-concat": dict(cell="lstm", bidirectional=True, attention="general",
                                              input_feeding=True),
    "lstm-bi-bahdanau-scaled_dot-add": dict(cell="lstm", bidirectional=True, encoder_hidden_size=HIDDEN // 2,
                                            attention="scaled_dot", decoder_style="bahdanau", combine="add"),
    "lstm-uni-bahdanau-dot-concat-2layers": dict(cell="lstm", attention="dot", decoder_style="bahdanau",
                                                 encoder_layers=2, decoder_layers=2),
    "rnn-uni-luong-additive-add": dict(cell="rnn", attention={"score": "additive", "hidden_size": 5},
                                       combine="add"),
    "rnn-bi-bahdanau-general-concat": dict(cell="rnn", bidirectional=True, attention="general",
                                           decoder_style="bahdanau"),
    "rnn-uni-luong-feed-dot-concat-2layers": dict(cell="rnn", attention="dot", input_feeding=True,
                                                  encoder_layers=2, decoder_layers=2),
    "gru-bi-none-2layers": dict(cell="gru", bidirectional=True, attention="none", encoder_layers=2,
                                decoder_layers=2),
    "lstm-uni-none": dict(cell="lstm", attention="none"),
    "rnn-bi-none": dict(cell="rnn", bidirectional=True, attention="none"),
    "gru-uni-luong-general-concat-tied": dict(cell="gru", embedding_size=HIDDEN, attention="general",
                                              tie_target_embeddings=True),
    # the other scores, normalizers and local windows (local_m needs the target position at each step)
    "gru-uni-luong-location-local_m": dict(cell="gru", attention={"score": "location", "max_source_length": 10,
                                                                  "window": "local_m", "window_size": 2}),
    "lstm-bi-bahdanau-concat-sparsemax-local_p": dict(cell="lstm", bidirectional=True, decoder_style="bahdanau",
                                                      attention={"score": "concat", "normalizer": "sparsemax",
                                                                 "window": "local_p", "window_size": 2}),
    "gru-uni-luong-feed-deep-entmax15-local_m": dict(cell="gru", input_feeding=True,
                                                     attention={"score": "deep", "normalizer": "entmax15",
                                                                "window": "local_m", "window_size": 1}),
    "rnn-bi-luong-similarity-add": dict(cell="rnn", bidirectional=True, encoder_hidden_size=HIDDEN // 2,
                                        attention={"score": "similarity", "learn_temperature": True},
                                        combine="add"),
    "gru-bi-bahdanau-biased_general": dict(cell="gru", bidirectional=True, decoder_style="bahdanau",
                                           attention="biased_general"),
    "lstm-uni-luong-activated_general-2layers": dict(cell="lstm", attention="activated_general", encoder_layers=2,
                                                     decoder_layers=2),
}


def make_model(options: dict, dropout: float = 0.0, seed: int = 0) -> RNNSeq2Seq:
    config = RNNConfig(**{"embedding_size": EMBED, "hidden_size": HIDDEN, "dropout": dropout, **options})
    torch.manual_seed(seed)
    model = build_model(config, SRC_VOCAB, TGT_VOCAB).double()
    with torch.no_grad():  # larger weights than the default init, so that differences are not lost in tiny numbers
        for parameter in model.parameters():
            parameter.mul_(2.0)
    return model.eval()


def batch(sources=SOURCES, targets=TARGETS, extra_padding: int = 0):
    src, src_mask = pad_sequences(sources)
    if extra_padding:
        src = torch.cat([src, torch.full((src.size(0), extra_padding), PAD_ID)], dim=1)
        src_mask = torch.cat([src_mask, torch.zeros(src.size(0), extra_padding, dtype=torch.bool)], dim=1)
    tgt_in, tgt_mask = pad_sequences([[BOS_ID, *target] for target in targets])
    return src, src_mask, tgt_in, tgt_mask


def config_params(attention_only: bool = False):
    names = [name for name, options in CONFIGS.items() if not attention_only or options["attention"] != "none"]
    return pytest.mark.parametrize("options", [CONFIGS[name] for name in names], ids=names)


def test_configs_cover_every_variant():
    models = {name: make_model(options) for name, options in CONFIGS.items()}
    configs = [m.config for m in models.values()]
    assert {c.cell for c in configs} == {"gru", "lstm", "rnn"}
    assert {c.bidirectional for c in configs} == {True, False}
    assert {c.decoder_style for c in configs if c.uses_attention} == {"luong", "bahdanau"}
    assert {c.input_feeding for c in configs} == {True, False}
    assert {c.attention.score for c in configs if c.uses_attention} >= {"dot", "scaled_dot", "general", "additive"}
    assert {c.combine for c in configs if c.uses_attention} == {"concat", "add"}
    assert any(not c.uses_attention for c in configs)
    # both teacher-forcing paths are exercised: all positions at once, and step by step
    assert {m.decoder.parallel_over_time for m in models.values()} == {True, False}


@config_params()
def test_shapes_of_the_model_interface(options):
    model = make_model(options)
    src, src_mask, tgt_in, _ = batch()
    b, s, t = src.size(0), src.size(1), tgt_in.size(1)
    logits, attention = model(src, src_mask, tgt_in, return_attention=True)
    assert logits.shape == (b, t, TGT_VOCAB)
    memory = model.encode(src, src_mask)
    assert all(tensor.size(0) == b for tensor in memory.values())  # batch-first, so search can reorder them
    state = model.start_state(memory)
    assert all(tensor.size(0) == b for tensor in state.values())
    log_probs, new_state, weights = model.step(tgt_in[:, 0], state, memory)
    assert log_probs.shape == (b, TGT_VOCAB)
    assert set(new_state) == set(state)
    assert all(new_state[name].shape == state[name].shape for name in state)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(b, dtype=log_probs.dtype))
    if model.config.uses_attention:
        assert attention.shape == (b, t, 1, 1, s)  # the contract's layout: one attention layer of one head
        assert weights.shape == (b, 1, 1, s)
        assert (model.describe().attention_layers, model.describe().attention_heads) == (1, 1)
    else:
        assert attention is None and weights is None


@config_params()
def test_padded_batch_equals_sentences_one_by_one(options):
    model = make_model(options)
    src, src_mask, tgt_in, _ = batch(extra_padding=2)  # even more padding than the longest sentence needs
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, return_attention=True)
    for i, (source, target) in enumerate(zip(SOURCES, TARGETS)):
        s, t = len(source), len(target) + 1  # + BOS
        one_src, one_mask, one_tgt, _ = batch([source], [target])
        with torch.no_grad():
            one_logits, one_attention = model(one_src, one_mask, one_tgt, return_attention=True)
        torch.testing.assert_close(logits[i, :t], one_logits[0], rtol=1e-9, atol=1e-10)
        if model.config.uses_attention:
            torch.testing.assert_close(attention[i, :t, ..., :s], one_attention[0], rtol=1e-9, atol=1e-10)


@config_params(attention_only=True)
def test_model_attention_sums_to_one_and_is_zero_on_padding(options):
    model = make_model(options)
    src, src_mask, tgt_in, _ = batch(extra_padding=1)
    with torch.no_grad():
        _, attention = model(src, src_mask, tgt_in, return_attention=True)
    attention = attention[:, :, 0, 0]  # [B, T, S]
    torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2], dtype=attention.dtype),
                               rtol=0, atol=1e-12)
    dense = model.config.attention.normalizer == "softmax" and model.config.attention.window == "none"
    for i, source in enumerate(SOURCES):
        assert torch.all(attention[i, :, len(source):] == 0.0)
        assert torch.all(attention[i] >= 0.0)
        if dense:
            assert torch.all(attention[i, :, :len(source)] > 0.0)


@config_params()
def test_teacher_forcing_equals_stepping(options):
    """forward (all target positions at once) = start_state + step, one position after the other."""
    model = make_model(options)
    src, src_mask, tgt_in, _ = batch()
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, return_attention=True)
        memory = model.encode(src, src_mask)
        state = model.start_state(memory)
        for t in range(tgt_in.size(1)):
            log_probs, state, weights = model.step(tgt_in[:, t], state, memory)
            torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], dim=-1), rtol=1e-9, atol=1e-10)
            if model.config.uses_attention:
                torch.testing.assert_close(weights, attention[:, t], rtol=1e-9, atol=1e-10)


@config_params()
def test_source_and_earlier_tokens_matter(options):
    """A sanity check on the tests above: outputs do depend on the source and on earlier target tokens."""
    model = make_model(options)
    src, src_mask, tgt_in, _ = batch()
    with torch.no_grad():
        logits, _ = model(src, src_mask, tgt_in)
        other_src = src.clone()
        other_src[:, 0] = 4 + (other_src[:, 0] - 3) % (SRC_VOCAB - 4)  # change the first source token
        other_logits, _ = model(other_src, src_mask, tgt_in)
        other_tgt = tgt_in.clone()
        other_tgt[:, 1] = 4 + (other_tgt[:, 1] - 3) % (TGT_VOCAB - 4)  # change the first target token
        later_logits, _ = model(src, src_mask, other_tgt)
    assert not torch.allclose(logits, other_logits)
    # tgt_in[:, 1] is read at position 1: position 0 does not see it (no look-ahead), positions 1.. do
    torch.testing.assert_close(later_logits[:, :1], logits[:, :1], rtol=0, atol=0)
    assert not torch.allclose(later_logits[:, 1:], logits[:, 1:])


@config_params(attention_only=True)
def test_attention_query_is_the_documented_decoder_state(options):
    """Luong attends with the new top-layer state s_t, Bahdanau with the previous one s_{t-1}."""
    model = make_model(options)
    src, src_mask, tgt_in, _ = batch()
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        state = model.start_state(memory)
        for t in range(3):
            _, new_state, weights = model.step(tgt_in[:, t], state, memory)
            query_state = state if model.config.decoder_style == "bahdanau" else new_state
            positions = torch.full((src.size(0), 1), t)  # the target position (local_m centres its window there)
            _, expected = model.decoder.attention(query_state["hidden"][:, -1:], memory["values"], memory["values"],
                                                  src_mask, positions)
            torch.testing.assert_close(weights[:, 0, 0], expected[:, 0], rtol=1e-9, atol=1e-12)
            state = new_state


@pytest.mark.parametrize("name", ["gru-uni-luong-feed-additive-concat", "lstm-bi-luong-feed-general-concat"])
def test_input_feeding_feeds_the_attentional_state_back(name):
    model = make_model(CONFIGS[name])
    src, src_mask, tgt_in, _ = batch()
    with torch.no_grad():
        memory = model.encode(src, src_mask)
        state = model.start_state(memory)
        assert torch.all(state["attentional"] == 0)
        _, state, _ = model.step(tgt_in[:, 0], state, memory)
        assert state["attentional"].abs().sum() > 0
        log_probs, _, _ = model.step(tgt_in[:, 1], state, memory)
        without_feed, _, _ = model.step(tgt_in[:, 1], {**state, "attentional": torch.zeros_like(state["attentional"])},
                                        memory)
    assert not torch.allclose(log_probs, without_feed)


def test_dropout_is_active_in_training_mode_only():
    model = make_model(CONFIGS["gru-bi-bahdanau-additive-concat"], dropout=0.5)
    src, src_mask, tgt_in, _ = batch()
    with torch.no_grad():
        first, _ = model(src, src_mask, tgt_in)
        second, _ = model(src, src_mask, tgt_in)
        model.train()
        noisy, _ = model(src, src_mask, tgt_in)
    assert torch.equal(first, second)
    assert not torch.allclose(first, noisy)


@pytest.mark.parametrize("state_dropout", [True, False])
def test_encoder_state_dropout_zeroes_the_states_attention_reads_only_when_asked(state_dropout):
    """Dropout zeroes elements; a GRU state is almost never exactly 0. With `encoder_state_dropout` about half the
    states of real positions are 0 at p = 0.5, without it none (the embeddings are still dropped)."""
    model = make_model({**CONFIGS["gru-bi-bahdanau-additive-concat"], "encoder_state_dropout": state_dropout},
                       dropout=0.5).train()
    src, src_mask, _, _ = batch()
    torch.manual_seed(0)
    with torch.no_grad():
        states, _ = model.encoder(src, src_mask)  # [B, S, H·dirs]
    zero_fraction = (states[src_mask] == 0).double().mean().item()
    if state_dropout:
        assert 0.35 < zero_fraction < 0.65
    else:
        assert zero_fraction == 0.0


def test_tied_embeddings_share_one_matrix():
    model = make_model(CONFIGS["gru-uni-luong-general-concat-tied"])
    assert model.decoder.output.weight is model.decoder.embed.weight


@pytest.mark.parametrize("options", [
    dict(bidirectional=True, attention="dot"),  # keys 2 × 12, query 12
    dict(encoder_hidden_size=6, attention="scaled_dot"),
])
def test_equal_size_scores_with_different_sizes_raise_config_error(options):
    with pytest.raises(ConfigError, match="needs equal sizes"):
        make_model(options)


def test_add_combine_with_different_sizes_raises_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"model\.combine") as caught:
        make_model(dict(bidirectional=True, attention="general", combine="add"))
    assert "24" in str(caught.value) and "12" in str(caught.value)


def test_tied_embeddings_with_different_sizes_raise_config_error():
    with pytest.raises(ConfigError, match=r"model\.tie_target_embeddings") as caught:
        make_model(dict(attention="dot", tie_target_embeddings=True))  # embedding 8, hidden 12
    assert "embedding_size" in str(caught.value)


def test_attention_shorthand_and_hidden_size_reach_the_model():
    model = make_model(dict(attention={"score": "additive", "hidden_size": 5}))
    assert model.decoder.attention.scorer.key_projection.out_features == 5
    shorthand = RNNConfig(attention="additive")
    assert shorthand.attention.score == "additive"
    assert RNNConfig(attention="none").uses_attention is False
