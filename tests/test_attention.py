"""Tests of attnmt.attention: the `build` interface, every score function, masking and normalization."""

from __future__ import annotations

import math

import pytest
import torch

from attnmt import attention
from attnmt.attention import NORMALIZERS, SCORERS, WINDOWS, build, masked_softmax
from attnmt.errors import ConfigError

B, TQ, TK = 3, 4, 6
LENGTHS = [6, 2, 4]  # real source positions per row; the rest is padding
QUERY_SIZE, KEY_SIZE, VALUE_SIZE = 8, 5, 7
REQUIRED_OPTIONS = {"location": {"max_source_length": 9}}  # options a score cannot do without


def needs_equal_sizes(name: str) -> bool:
    try:
        build(name, QUERY_SIZE, KEY_SIZE, **REQUIRED_OPTIONS.get(name, {}))
    except ConfigError:
        return True
    return False


EQUAL_SIZE = sorted(name for name in SCORERS if needs_equal_sizes(name))


def sizes(name: str) -> tuple[int, int]:
    """(query size, key size): different where the score allows it."""
    return (QUERY_SIZE, QUERY_SIZE) if name in EQUAL_SIZE else (QUERY_SIZE, KEY_SIZE)


def inputs(query_size: int, key_size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(B, TQ, query_size, generator=generator, dtype=torch.float64)
    keys = torch.randn(B, TK, key_size, generator=generator, dtype=torch.float64)
    values = torch.randn(B, TK, VALUE_SIZE, generator=generator, dtype=torch.float64)
    mask = torch.arange(TK).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)  # [B, TK]
    return query, keys, values, mask


def built(name: str, **options) -> attention.Attention:
    torch.manual_seed(0)
    module = build(name, *sizes(name), **{**REQUIRED_OPTIONS.get(name, {}), **options}).double()
    with torch.no_grad():  # biases start at zero in some scorers: make every parameter matter
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return module


def reference_energy(name: str, scorer, q: torch.Tensor, k: torch.Tensor, j: int) -> torch.Tensor:
    """The energy of key k (at source position j) for query q, written out from the score's formula."""
    if name == "similarity":
        return q @ k / (q.norm() * k.norm())
    if name == "dot":
        return q @ k
    if name == "scaled_dot":
        return q @ k / math.sqrt(k.numel())
    if name == "general":
        return q @ (scorer.key_projection.weight @ k)
    if name == "biased_general":
        return k @ (scorer.query_projection.weight @ q + scorer.query_projection.bias)
    if name == "activated_general":
        return torch.tanh(q @ (scorer.key_projection.weight @ k) + scorer.bias)
    if name in ("concat", "deep"):
        hidden = torch.tanh(scorer.projection.weight @ torch.cat([k, q]) + scorer.projection.bias)
        for layer in getattr(scorer, "layers", []):
            hidden = torch.tanh(layer.weight @ hidden + layer.bias)
        return scorer.energy.weight[0] @ hidden
    if name == "additive":
        hidden = scorer.key_projection.weight @ k + scorer.query_projection.weight @ q + scorer.query_projection.bias
        return scorer.energy.weight[0] @ torch.tanh(hidden)
    if name == "location":
        return scorer.positions.weight[j] @ q + scorer.positions.bias[j]
    raise AssertionError(f"no reference formula for the score {name!r}: add one to this test")


def reference_energies(name: str, module: attention.Attention, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    energies = torch.empty(query.size(0), query.size(1), keys.size(1), dtype=query.dtype)
    for b in range(query.size(0)):
        for i in range(query.size(1)):
            for j in range(keys.size(1)):
                energies[b, i, j] = reference_energy(name, module.scorer, query[b, i], keys[b, j], j)
    return energies


every_score = pytest.mark.parametrize("name", sorted(SCORERS))


def test_the_classic_scores_are_there():
    assert {"dot", "scaled_dot", "general", "additive"} <= set(SCORERS)
    assert {"dot", "scaled_dot"} <= set(EQUAL_SIZE)
    assert {"general", "additive"}.isdisjoint(EQUAL_SIZE)


@every_score
def test_build_returns_module_with_documented_shapes(name):
    module = built(name)
    assert isinstance(module, torch.nn.Module)
    query, keys, values, mask = inputs(*sizes(name))
    context, weights = module(query, keys, values, mask)
    assert context.shape == (B, TQ, VALUE_SIZE)
    assert weights.shape == (B, TQ, TK)


@every_score
def test_weights_sum_to_one_and_are_exactly_zero_on_padding(name):
    module = built(name)
    query, keys, values, mask = inputs(*sizes(name))
    _, weights = module(query, keys, values, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, TQ, dtype=weights.dtype), rtol=0, atol=1e-12)
    for b, length in enumerate(LENGTHS):
        assert torch.all(weights[b, :, length:] == 0.0)
        assert torch.all(weights[b, :, :length] > 0.0)  # softmax: every real position gets some weight


@every_score
def test_weights_are_softmax_of_the_score_formula_and_context_is_weighted_sum(name):
    module = built(name)
    query, keys, values, mask = inputs(*sizes(name))
    context, weights = module(query, keys, values, mask)
    energies = reference_energies(name, module, query, keys)
    for b, length in enumerate(LENGTHS):
        expected = torch.softmax(energies[b, :, :length], dim=-1)
        torch.testing.assert_close(weights[b, :, :length], expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(context[b], expected @ values[b, :length], rtol=1e-10, atol=1e-12)


@every_score
def test_prepare_keys_then_attend_equals_forward(name):
    module = built(name)
    query, keys, values, mask = inputs(*sizes(name))
    context, weights = module(query, keys, values, mask)
    prepared = module.prepare_keys(keys)
    for t in range(TQ):  # one decoder step at a time, keys prepared once
        step_context, step_weights = module.attend(query[:, t:t + 1], prepared, values, mask)
        torch.testing.assert_close(step_context, context[:, t:t + 1], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(step_weights, weights[:, t:t + 1], rtol=1e-12, atol=1e-14)


@every_score
def test_gradients_reach_query_and_real_positions_only(name):
    module = built(name)
    query, keys, values, mask = inputs(*sizes(name))
    for tensor in (query, keys, values):
        tensor.requires_grad_(True)
    context, _ = module(query, keys, values, mask)
    context.pow(2).sum().backward()
    assert torch.all(torch.isfinite(query.grad)) and query.grad.abs().sum() > 0
    assert torch.all(values.grad[~mask] == 0) and values.grad[mask].abs().sum() > 0
    if name == "location":  # scores positions, not keys
        assert keys.grad is None or torch.all(keys.grad == 0)
    else:
        assert torch.all(keys.grad[~mask] == 0) and keys.grad[mask].abs().sum() > 0


@pytest.mark.parametrize("name", EQUAL_SIZE)
def test_equal_size_scores_reject_different_sizes_with_helpful_message(name):
    with pytest.raises(ConfigError) as caught:
        build(name, 8, 16)
    message = str(caught.value)
    assert name in message
    assert "8" in message and "16" in message
    assert "general" in message and "additive" in message  # what to use instead
    assert "bidirectional" in message


def test_scaled_dot_is_dot_divided_by_square_root_of_key_size():
    query, keys, _, _ = inputs(16, 16)
    dot = build("dot", 16, 16).scorer(query, keys)
    scaled = build("scaled_dot", 16, 16).scorer(query, keys)
    torch.testing.assert_close(scaled, dot / 4.0, rtol=1e-12, atol=0)


def test_additive_hidden_size_option():
    module = build("additive", 8, 5, hidden_size=3)
    assert module.scorer.key_projection.out_features == 3
    assert module.scorer.query_projection.out_features == 3
    assert build("additive", 8, 5).scorer.key_projection.out_features == 8  # default: the query size
    assert build("additive", 8, 5, hidden_size=None).scorer.key_projection.out_features == 8


def test_unknown_score_and_option_raise_config_error():
    with pytest.raises(ConfigError, match="choose one of") as caught:
        build("cosine", 8, 8)
    assert all(name in str(caught.value) for name in SCORERS)
    with pytest.raises(ConfigError, match="hidden_size") as caught:
        build("dot", 8, 8, hidden_size=4)
    assert "additive" in str(caught.value)  # names a score that takes it


# ---- normalizers and windows -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, *WINDOWS])
@pytest.mark.parametrize("normalizer", sorted(NORMALIZERS))
def test_every_normalizer_and_window_gives_distributions_over_real_positions(normalizer, window):
    torch.manual_seed(0)
    module = build("general", QUERY_SIZE, KEY_SIZE, normalizer=normalizer, window=window, window_size=1,
                   temperature=0.7).double()
    query, keys, values, mask = inputs(QUERY_SIZE, KEY_SIZE)
    context, weights = module(query, keys, values, mask)
    assert weights.shape == (B, TQ, TK) and context.shape == (B, TQ, VALUE_SIZE)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, TQ, dtype=weights.dtype), rtol=0, atol=1e-10)
    torch.testing.assert_close(context, weights @ values, rtol=1e-12, atol=1e-12)
    noisy_keys, noisy_values = keys.clone(), values.clone()
    noisy_keys[~mask], noisy_values[~mask] = 1e3, -1e3
    noisy_context, noisy_weights = module(query, noisy_keys, noisy_values, mask)
    for b, length in enumerate(LENGTHS):
        assert torch.all(weights[b, :, length:] == 0.0)
        if window is not None:  # a window of 2 × 1 + 1 positions
            assert torch.all((weights[b] > 0).sum(-1) <= 3)
        alone_context, alone_weights = module(query[b:b + 1], keys[b:b + 1, :length], values[b:b + 1, :length],
                                              mask[b:b + 1, :length])
        torch.testing.assert_close(alone_weights[0], weights[b, :, :length], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(alone_context[0], context[b], rtol=1e-10, atol=1e-12)
    assert torch.equal(weights, noisy_weights)


def test_masked_softmax_ignores_huge_energies_on_padding():
    energies = torch.tensor([[[1.0, 2.0, 1e30, -1e30]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False]])
    weights = masked_softmax(energies, mask)
    expected = torch.softmax(torch.tensor([1.0, 2.0], dtype=torch.float64), dim=0)
    torch.testing.assert_close(weights[0, 0, :2], expected, rtol=1e-12, atol=0)
    assert torch.all(weights[0, 0, 2:] == 0)


def test_masked_softmax_single_real_position_gets_all_weight():
    energies = torch.randn(2, 3, 5)
    mask = torch.tensor([[True, False, False, False, False], [False, False, True, False, False]])
    weights = masked_softmax(energies, mask)
    assert torch.all(weights[0, :, 0] == 1) and torch.all(weights[1, :, 2] == 1)
    assert weights.sum() == 6
