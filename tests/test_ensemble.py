"""Tests of attnmt.models.ensemble: K models decoding as one, p(y) = (1/K) Σ_k p_k(y), through greedy and beam
search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnmt.config import RNNConfig, TransformerConfig
from attnmt.data import BOS_ID, EOS_ID, pad_sequences
from attnmt.errors import CheckpointError
from attnmt.models import Seq2SeqModel, build_model
from attnmt.models.ensemble import Ensemble
from attnmt.search import beam_search, greedy_search

VOCAB = 16


def tiny_rnn(seed: int, tgt_vocab_size: int = VOCAB, attention: str = "additive") -> torch.nn.Module:
    torch.manual_seed(seed)
    config = RNNConfig(embedding_size=8, hidden_size=16, bidirectional=True, dropout=0.0, attention=attention)
    return build_model(config, VOCAB, tgt_vocab_size)


def tiny_transformer(seed: int, tgt_vocab_size: int = VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = TransformerConfig(type="transformer", encoder_layers=1, decoder_layers=2, hidden_size=16, heads=2,
                               feed_forward_size=32, dropout=0.0)
    return build_model(config, VOCAB, tgt_vocab_size)


def random_batch(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids 4..VOCAB-1 (no special ids) of the given lengths, padded: src [B, S], src_mask [B, S]."""
    generator = torch.Generator().manual_seed(seed)
    return pad_sequences([torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in lengths])


def mixed_pair() -> tuple[torch.nn.Module, torch.nn.Module, Ensemble]:
    rnn, transformer = tiny_rnn(seed=1), tiny_transformer(seed=2)
    return rnn, transformer, Ensemble([rnn, transformer])


def stepwise(model: Seq2SeqModel, src, src_mask, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed tokens [B, T] one step at a time: log-probs [B, T, V] and attention [B, T, L, H, S] of every step."""
    memory = model.encode(src, src_mask)
    state = model.start_state(memory)
    log_probs, weights = [], []
    for t in range(tokens.size(1)):
        step_log_probs, state, step_weights = model.step(tokens[:, t], state, memory)
        log_probs.append(step_log_probs)
        weights.append(step_weights)
    return torch.stack(log_probs, dim=1), torch.stack(weights, dim=1)


# ---- the mixture ----------------------------------------------------------------------------------------------------

@torch.inference_mode()
def test_rnn_plus_transformer_steps_mix_the_members_probabilities():
    rnn, transformer, ensemble = mixed_pair()
    src, src_mask = random_batch([6, 4, 5], seed=3)
    tokens = torch.cat([torch.full((3, 1), BOS_ID), torch.randint(4, VOCAB, (3, 4))], dim=1)  # [B, 5]
    mixed, mixed_attention = stepwise(ensemble, src, src_mask, tokens)  # [B, T, V], [B, T, 1, 1, S]
    rnn_log_probs, rnn_attention = stepwise(rnn, src, src_mask, tokens)  # [B, T, 1, 1, S]
    transformer_log_probs, transformer_attention = stepwise(transformer, src, src_mask, tokens)  # [B, T, 2, 2, S]

    expected = torch.log((rnn_log_probs.double().exp() + transformer_log_probs.double().exp()) / 2)
    assert mixed.dtype == torch.float32 and mixed.shape == (3, 5, VOCAB)
    torch.testing.assert_close(mixed.double(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mixed.double().exp().sum(dim=-1), torch.ones(3, 5, dtype=torch.float64))
    # the members' distributions differ, so the mixture is neither of them
    assert (mixed - rnn_log_probs).abs().max() > 1e-2 and (mixed - transformer_log_probs).abs().max() > 1e-2

    expected_attention = (rnn_attention[:, :, 0, 0] + transformer_attention.mean(dim=(2, 3))) / 2  # [B, T, S]
    assert mixed_attention.shape == (3, 5, 1, 1, src.size(1))
    torch.testing.assert_close(mixed_attention[:, :, 0, 0], expected_attention)
    torch.testing.assert_close(mixed_attention.sum(dim=-1), torch.ones(3, 5, 1, 1))
    assert mixed_attention[~src_mask[:, None, None, None, :].expand_as(mixed_attention)].abs().max() == 0.0

    memory = ensemble.encode(src, src_mask)
    _, _, no_weights = ensemble.step(tokens[:, 0], ensemble.start_state(memory), memory, need_weights=False)
    assert no_weights is None


@torch.inference_mode()
def test_teacher_forcing_gives_the_steps_log_probabilities_and_attention():
    _, _, ensemble = mixed_pair()
    src, src_mask = random_batch([5, 3], seed=4)
    tgt_in = torch.cat([torch.full((2, 1), BOS_ID), torch.randint(4, VOCAB, (2, 3))], dim=1)  # [B, 4]
    log_probs, attention = ensemble(src, src_mask, tgt_in, return_attention=True)
    step_log_probs, step_attention = stepwise(ensemble, src, src_mask, tgt_in)
    torch.testing.assert_close(log_probs, step_log_probs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.log_softmax(log_probs, dim=-1), log_probs, atol=1e-6, rtol=1e-6)
    assert attention.shape == (2, 4, 1, 1, src.size(1))
    torch.testing.assert_close(attention, step_attention, atol=1e-5, rtol=1e-5)
    assert ensemble(src, src_mask, tgt_in)[1] is None


# ---- search ---------------------------------------------------------------------------------------------------------

def encode_held_out(model_fixture, count: int = 6):
    translator = model_fixture.translator()
    ids = translator.tokenizer.encode_source([src for src, _ in model_fixture.test_pairs[:count]])
    return translator.model, *pad_sequences(ids)


def test_an_ensemble_of_a_model_with_itself_translates_as_the_model(family_model):
    model, src, src_mask = encode_held_out(family_model)
    ensemble = Ensemble([model, model])
    for search in (lambda m: greedy_search(m, src, src_mask),
                   lambda m: beam_search(m, src, src_mask, beam_size=3, n_best=2)):
        alone, together = search(model), search(ensemble)
        for single_hypotheses, ensemble_hypotheses in zip(alone, together):
            assert len(single_hypotheses) == len(ensemble_hypotheses)
            for single, mixed in zip(single_hypotheses, ensemble_hypotheses):
                assert mixed.tokens == single.tokens
                assert mixed.score == pytest.approx(single.score, abs=1e-4)
                # one layer of one head: the model's attention averaged over its layers and heads
                assert mixed.attention.shape == (len(single.tokens) + 1, 1, 1, single.attention.shape[-1])
                np.testing.assert_allclose(mixed.attention[:, 0, 0], single.attention.mean(axis=(1, 2)), atol=1e-5)
    assert sum(len(h[0].tokens) for h in alone) > 0  # the trained model says something


def teacher_forced_score(model: Seq2SeqModel, src, src_mask, tokens: list[int]) -> float:
    """Σ_t log p(y_t | y_<t, x) of tokens + EOS for one sentence, by teacher forcing."""
    tgt_in = torch.tensor([[BOS_ID, *tokens]])
    targets = torch.tensor([[*tokens, EOS_ID]])
    with torch.inference_mode():
        log_probs, _ = model(src, src_mask, tgt_in)  # [1, T + 1, V]
    return float(log_probs.double().gather(-1, targets.unsqueeze(-1)).sum())


def test_beam_search_over_an_ensemble_reorders_every_members_state():
    """Beam search moves prefixes between rows at every step and drops finished sentences: each hypothesis's score
    is right only if every member's state and memory followed its prefix."""
    _, _, ensemble = mixed_pair()
    lengths = [6, 3, 5]
    src, src_mask = random_batch(lengths, seed=5)
    results = beam_search(ensemble, src, src_mask, beam_size=3, length_penalty_alpha=0.0, n_best=3)
    assert len(results) == 3
    for i, hypotheses in enumerate(results):
        assert len(hypotheses) == 3
        assert len({tuple(h.tokens) for h in hypotheses}) == 3
        for hypothesis in hypotheses:
            assert hypothesis.attention.shape == (len(hypothesis.tokens) + 1, 1, 1, lengths[i])
            expected = teacher_forced_score(ensemble, src[i:i + 1, :lengths[i]], src_mask[i:i + 1, :lengths[i]],
                                            hypothesis.tokens)
            assert hypothesis.score == pytest.approx(expected, abs=1e-4)


# ---- construction and description -----------------------------------------------------------------------------------

def test_members_must_share_the_target_vocabulary_and_be_two_or_more():
    with pytest.raises(CheckpointError, match=r"runs/a: 16, runs/b: 20.*same tokenizer"):
        Ensemble([tiny_rnn(seed=1), tiny_transformer(seed=2, tgt_vocab_size=20)], names=["runs/a", "runs/b"])
    with pytest.raises(CheckpointError, match="at least 2 models, got 1"):
        Ensemble([tiny_rnn(seed=1)])


def test_an_ensemble_is_for_inference_only():
    rnn, transformer = tiny_rnn(seed=1), tiny_transformer(seed=2)
    assert rnn.training and transformer.training
    ensemble = Ensemble([rnn, transformer])
    assert not ensemble.training and not rnn.training and not transformer.training
    with pytest.raises(NotImplementedError, match="inference only"):
        ensemble.train()


def test_describe_combines_the_members():
    rnn, transformer, ensemble = mixed_pair()
    described, parts = ensemble.describe(), [rnn.describe(), transformer.describe()]
    assert isinstance(ensemble, Seq2SeqModel)
    assert described.family == "ensemble"
    assert described.summary == f"ensemble of 2: {parts[0].summary} + {parts[1].summary}"
    assert described.attention == "additive + scaled_dot"
    assert (described.attention_layers, described.attention_heads) == (1, 1)
    assert described.parameters == sum(p.numel() for p in ensemble.parameters()) == parts[0].parameters + \
        parts[1].parameters
    assert described.decoder_layers == 2 and described.hidden_size == 16
    assert described.settings == {"members": [parts[0].settings, parts[1].settings]}


@torch.inference_mode()
def test_members_without_attention_give_none():
    ensemble = Ensemble([tiny_rnn(seed=1, attention="none"), tiny_rnn(seed=2, attention="none")])
    described = ensemble.describe()
    assert (described.attention, described.attention_layers, described.attention_heads) == ("none", 0, 0)
    src, src_mask = random_batch([4, 2], seed=6)
    memory = ensemble.encode(src, src_mask)
    log_probs, _, weights = ensemble.step(torch.full((2,), BOS_ID), ensemble.start_state(memory), memory)
    assert weights is None and log_probs.shape == (2, VOCAB)
    assert math.isclose(float(log_probs.double().exp().sum(dim=-1)[0]), 1.0, abs_tol=1e-6)
