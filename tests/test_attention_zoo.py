"""Tests of the attention zoo: all ten scores against their formulas, the three normalizers against their definitions,
local attention (local_m, local_p), and every variant training inside a real model built from a config."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from attnmt.attention import NORMALIZERS, SCORERS, WINDOWS, Attention, build
from attnmt.attention.normalizers import Normalizer, masked_entmax15, masked_softmax, masked_sparsemax
from attnmt.config import RNNConfig, parse_config
from attnmt.data import BOS_ID, EOS_ID, pad_sequences
from attnmt.errors import ConfigError
from attnmt.models import build_model
from attnmt.search import beam_search, greedy_search
from attnmt.training import Trainer

B, TQ, TK = 3, 4, 6
LENGTHS = [6, 2, 4]  # real source positions per row; the rest is padding
EQUAL_SIZE = {"similarity", "dot", "scaled_dot"}
ACTIVATED = ["activated_general", "concat", "additive", "deep"]  # the scores with an `activation`
SCORES = sorted(SCORERS)
NORMS = sorted(NORMALIZERS)
WINDOW_NAMES = ["none", *WINDOWS]
ACT = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def sizes(name: str) -> tuple[int, int]:
    """(query size, key size): different where the score allows it."""
    return (5, 5) if name in EQUAL_SIZE else (5, 3)


def score_options(name: str) -> dict:
    return {"similarity": {"learn_temperature": True}, "location": {"max_source_length": TK + 2},
            "deep": {"depth": 3, "hidden_size": 4}, "concat": {"hidden_size": 4},
            "additive": {"hidden_size": 4}}.get(name, {})


def built(name: str, seed: int = 0, **options) -> Attention:
    """The attention for `name` in float64, every parameter (biases, temperatures too) random and away from 0."""
    torch.manual_seed(seed)
    module = build(name, *sizes(name), **{**score_options(name), **options}).double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.7)
    return module


def inputs(query_size: int, key_size: int, tq: int = TQ, tk: int = TK, lengths=LENGTHS, value_size: int = 2,
           seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(len(lengths), tq, query_size, generator=generator, dtype=torch.float64)
    keys = torch.randn(len(lengths), tk, key_size, generator=generator, dtype=torch.float64)
    values = torch.randn(len(lengths), tk, value_size, generator=generator, dtype=torch.float64)
    mask = torch.arange(tk).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # [B, Tk]
    return query, keys, values, mask


# --- scorers: the formulas -------------------------------------------------------------------------------------------

def reference_energy(name: str, scorer, q: torch.Tensor, k: torch.Tensor, j: int, act) -> torch.Tensor:
    """f(q, k_j) written directly from the formula in the scorer's docstring, for one query and one key."""
    if name == "similarity":
        return (q @ k) / (q.norm() * k.norm()) / torch.exp(scorer.log_temperature)
    if name == "dot":
        return q @ k
    if name == "scaled_dot":
        return q @ k / math.sqrt(k.numel())
    if name == "general":
        return q @ scorer.key_projection.weight @ k  # qᵀWk
    if name == "biased_general":
        return k @ (scorer.query_projection.weight @ q + scorer.query_projection.bias)  # kᵀ(Wq + b)
    if name == "activated_general":
        return act(q @ scorer.key_projection.weight @ k + scorer.bias)  # act(qᵀWk + b)
    if name == "concat":
        hidden = act(scorer.projection.weight @ torch.cat([k, q]) + scorer.projection.bias)  # act(W[k; q] + b)
        return scorer.energy.weight[0] @ hidden
    if name == "additive":
        hidden = act(scorer.key_projection.weight @ k + scorer.query_projection.weight @ q
                     + scorer.query_projection.bias)
        return scorer.energy.weight[0] @ hidden
    if name == "deep":
        hidden = act(scorer.projection.weight @ torch.cat([k, q]) + scorer.projection.bias)
        for layer in scorer.layers:
            hidden = act(layer.weight @ hidden + layer.bias)
        return scorer.energy.weight[0] @ hidden
    if name == "location":
        return scorer.positions.weight[j] @ q + scorer.positions.bias[j]  # (Wq + b)_j
    raise AssertionError(f"no reference formula for {name}")


def check_against_formula(name: str, activation: str = "tanh") -> None:
    options = {"activation": activation} if name in ACTIVATED else {}
    module = built(name, **options)
    query, keys, _, _ = inputs(*sizes(name))
    energies = module.scorer(query, module.prepare_keys(keys))  # [B, TQ, TK]
    expected = torch.empty_like(energies)
    for b, i, j in itertools.product(range(B), range(TQ), range(TK)):
        expected[b, i, j] = reference_energy(name, module.scorer, query[b, i], keys[b, j], j, ACT[activation])
    relative = (energies - expected).abs().max() / expected.abs().max()
    assert relative < 1e-6, f"{name}: relative error {relative:.2e}"


def test_every_score_normalizer_and_window_is_named():
    assert set(SCORERS) == {"similarity", "dot", "scaled_dot", "general", "biased_general", "activated_general",
                            "concat", "additive", "deep", "location"}
    assert set(NORMALIZERS) == {"softmax", "sparsemax", "entmax15"}
    assert set(WINDOWS) == {"local_m", "local_p"}


@pytest.mark.parametrize("name", SCORES)
def test_score_matches_its_formula(name):
    check_against_formula(name)


@pytest.mark.parametrize("name, activation", list(itertools.product(ACTIVATED, ["relu", "sigmoid", "gelu"])))
def test_activation_option_matches_the_formula(name, activation):
    check_against_formula(name, activation)


def test_keys_are_prepared_once_per_sentence_where_they_do_not_depend_on_the_query():
    """prepare_keys holds the key-only part: W_K K + b for concat and deep, [WᵀK; bᵀK] for biased_general."""
    query, keys, _, _ = inputs(5, 3)
    concat = built("concat").scorer
    torch.testing.assert_close(concat.prepare_keys(keys), keys @ concat.projection.weight[:, :3].T
                               + concat.projection.bias)
    biased = built("biased_general").scorer
    prepared = biased.prepare_keys(keys)
    assert prepared.shape == (B, TK, 5 + 1)
    torch.testing.assert_close(prepared[..., -1], keys @ biased.query_projection.bias)
    assert built("deep").scorer.prepare_keys(keys).shape == (B, TK, 4)


@pytest.mark.parametrize("name", sorted(EQUAL_SIZE))
def test_equal_size_scores_name_the_fix(name):
    with pytest.raises(ConfigError, match="general` or `additive"):
        build(name, 8, 6)


def test_scorer_options_are_checked_and_routed():
    with pytest.raises(ConfigError, match="is used by activated_general, concat, additive, deep"):
        build("dot", 4, 4, activation="relu")
    with pytest.raises(ConfigError, match="choose one of tanh, relu"):
        build("additive", 4, 4, activation="swish")
    with pytest.raises(ConfigError, match="max_source_length"):
        build("location", 4, 4)
    with pytest.raises(ConfigError, match="choose one of softmax, sparsemax, entmax15"):
        build("dot", 4, 4, normalizer="sparse")
    with pytest.raises(ConfigError, match="local_m, local_p"):
        build("dot", 4, 4, window="local")
    # the options of the normalizer and the window go to the Attention, None means the scorer's default
    module = build("deep", 4, 6, normalizer="entmax15", temperature=0.5, window="local_p", window_size=3,
                   hidden_size=None, depth=None, activation=None)
    assert module.normalizer.name == "entmax15" and module.normalizer.temperature == 0.5
    assert module.window.kind == "local_p" and module.window.half_width == 3
    assert len(module.scorer.layers) == 1  # depth 2 by default
    assert build("deep", 4, 6, depth=1).scorer.layers.__len__() == 0  # depth 1 is concat


def test_location_scores_positions_past_its_length_with_zero_weight():
    module = built("location", max_source_length=3)
    query, keys, values, mask = inputs(5, 3)  # TK = 6 > 3
    _, weights = module(query, keys, values, mask)
    assert torch.all(weights[..., 3:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, TQ, dtype=weights.dtype))


def test_similarity_without_learned_temperature_is_the_plain_cosine():
    module = build("similarity", 5, 5).double()
    assert list(module.parameters()) == []
    query, keys, _, _ = inputs(5, 5)
    expected = F.cosine_similarity(query.unsqueeze(2), keys.unsqueeze(1), dim=-1)
    torch.testing.assert_close(module.scorer(query, module.prepare_keys(keys)), expected)


# --- normalizers: the definitions ------------------------------------------------------------------------------------

def row(*values: float) -> torch.Tensor:
    return torch.tensor([[values]], dtype=torch.float64)  # [1, 1, n]


def everything(energies: torch.Tensor) -> torch.Tensor:
    return torch.ones(energies.shape[0], energies.shape[-1], dtype=torch.bool)


def test_sparsemax_on_hand_checked_vectors():
    # z = (1, 0.5, -1): k = 2 (1 + 2·0.5 > 1.5, 1 + 3·(-1) < 0.5), τ = (1.5 - 1) / 2 = 0.25
    for energies, expected in [((1.0, 0.5, -1.0), (0.75, 0.25, 0.0)),
                               ((0.0, 0.0, 0.0), (1 / 3, 1 / 3, 1 / 3)),
                               ((3.0, 0.0, 0.0), (1.0, 0.0, 0.0)),  # a gap > 1: one-hot
                               ((0.3, 0.1), (0.6, 0.4))]:  # two within 1 of each other: p₁ - p₂ = z₁ - z₂
        weights = masked_sparsemax(row(*energies), everything(row(*energies)))
        torch.testing.assert_close(weights, row(*expected), rtol=0, atol=1e-15)
    energies = row(1.0, 100.0, 0.5, -1.0)  # a huge masked energy changes nothing
    weights = masked_sparsemax(energies, torch.tensor([[True, False, True, True]]))
    torch.testing.assert_close(weights, row(0.75, 0.0, 0.25, 0.0), rtol=0, atol=1e-15)


def entmax15_pair(z1: float, z2: float) -> tuple[float, float]:
    """The closed form for two energies: with a = z₁/2 − τ, b = z₂/2 − τ, a² + b² = 1 and a − b = d = (z₁ − z₂)/2,
    so a = (d + √(2 − d²)) / 2 while |d| ≤ 1 (both in the support); else all weight on the larger one."""
    d = (z1 - z2) / 2
    if abs(d) > 1:
        return (1.0, 0.0) if d > 0 else (0.0, 1.0)
    return ((d + math.sqrt(2 - d * d)) / 2) ** 2, ((-d + math.sqrt(2 - d * d)) / 2) ** 2


@pytest.mark.parametrize("z1, z2", [(1.0, 0.0), (0.0, 0.0), (0.3, -1.2), (-2.0, -0.5), (1.9, 0.0), (2.5, 0.0),
                                    (-4.0, 1.0)])
def test_entmax15_matches_the_closed_form_on_two_elements(z1, z2):
    weights = masked_entmax15(row(z1, z2), everything(row(z1, z2)))
    torch.testing.assert_close(weights, row(*entmax15_pair(z1, z2)), rtol=0, atol=1e-14)


def test_entmax15_on_a_hand_solved_vector():
    # z = (2, 1, -2), z/2 = (1, 0.5, -1): the support {1, 2} is the pair above with d = 0.5, τ = 1 - a ≈ 0.0886,
    # and -1 < τ keeps the third out
    a = (0.5 + math.sqrt(1.75)) / 2
    weights = masked_entmax15(row(2.0, 1.0, -2.0), everything(row(0, 0, 0)))
    torch.testing.assert_close(weights, row(a ** 2, (a - 0.5) ** 2, 0.0), rtol=0, atol=1e-14)
    torch.testing.assert_close(masked_entmax15(row(1.0, 1.0, 1.0, -5.0), everything(row(0, 0, 0, 0))),
                               row(1 / 3, 1 / 3, 1 / 3, 0.0), rtol=0, atol=1e-15)


def tsallis15(p: torch.Tensor) -> torch.Tensor:
    """H₁.₅(p) = (1 − Σ p^1.5) / (1.5 · 0.5), the Tsallis entropy of entmax15."""
    return (1 - p.clamp(min=0).pow(1.5).sum(-1)) / 0.75


def test_sparse_normalizers_solve_their_optimization_problems():
    """sparsemax = argmin_{p ∈ Δ} ‖p − z‖², entmax15 = argmax_{p ∈ Δ} pᵀz + H₁.₅(p): no point of the simplex does
    better, and the optimality conditions hold (p = [z − τ]₊, p = [z/2 − τ]₊², one τ per row)."""
    generator = torch.Generator().manual_seed(1)
    energies = torch.randn(20, 1, 7, generator=generator, dtype=torch.float64) * 2
    mask = torch.ones(20, 7, dtype=torch.bool)
    candidates = torch.distributions.Dirichlet(torch.full((7,), 0.3, dtype=torch.float64)).sample((500,))  # [N, 7]
    sparse, ent = masked_sparsemax(energies, mask)[:, 0], masked_entmax15(energies, mask)[:, 0]
    z = energies[:, 0]
    for r in range(20):
        assert ((sparse[r] - z[r]).pow(2).sum() <= (candidates - z[r]).pow(2).sum(-1) + 1e-12).all()
        assert (ent[r] @ z[r] + tsallis15(ent[r]) >= candidates @ z[r] + tsallis15(candidates) - 1e-12).all()
        support = sparse[r] > 0
        tau = (z[r] - sparse[r])[support]
        torch.testing.assert_close(tau, tau[:1].expand_as(tau))  # one threshold over the support
        assert (z[r][~support] <= tau[0] + 1e-12).all()
        support = ent[r] > 0
        tau = (z[r] / 2 - ent[r].sqrt())[support]
        torch.testing.assert_close(tau, tau[:1].expand_as(tau))
        assert (z[r][~support] / 2 <= tau[0] + 1e-12).all()
    assert (sparse == 0).any() and (ent == 0).any()  # both are sparse on these vectors, softmax never is


@pytest.mark.parametrize("name", NORMS)
def test_temperature_divides_the_energies(name):
    energies = torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(Normalizer(name, 0.25)(energies, mask), NORMALIZERS[name](energies * 4, mask))
    with pytest.raises(ConfigError, match="> 0"):
        Normalizer(name, 0.0)


def test_softmax_normalizer_is_the_masked_softmax():
    energies = torch.randn(2, 3, 5, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    expected = torch.softmax(energies.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)
    torch.testing.assert_close(masked_softmax(energies, mask), expected, rtol=0, atol=0)


# --- every score × normalizer (× window): distributions, padding, gradients -----------------------------------------

@pytest.mark.parametrize("name, normalizer, window", list(itertools.product(SCORES, NORMS, WINDOW_NAMES)))
def test_weights_are_a_distribution_over_real_positions_and_padding_does_not_matter(name, normalizer, window):
    module = built(name, normalizer=normalizer, window=window, window_size=1)
    query, keys, values, mask = inputs(*sizes(name))
    context, weights = module(query, keys, values, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, TQ, dtype=weights.dtype), rtol=0, atol=1e-12)
    assert torch.all(weights >= 0)
    for b, length in enumerate(LENGTHS):
        assert torch.all(weights[b, :, length:] == 0.0)
    noisy_keys, noisy_values = keys.clone(), values.clone()  # whatever sits in the padding
    noisy_keys[~mask], noisy_values[~mask] = 1e3, -1e3
    noisy_context, noisy_weights = module(query, noisy_keys, noisy_values, mask)
    assert torch.equal(weights, noisy_weights)
    torch.testing.assert_close(noisy_context, context, rtol=0, atol=1e-12)
    for b, length in enumerate(LENGTHS):  # each row alone, unpadded
        alone_context, alone_weights = module(query[b:b + 1], keys[b:b + 1, :length], values[b:b + 1, :length],
                                              mask[b:b + 1, :length])
        torch.testing.assert_close(alone_weights[0], weights[b, :, :length], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(alone_context[0], context[b], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, normalizer", list(itertools.product([s for s in SCORES if s != "location"], NORMS)))
def test_permuting_the_keys_permutes_the_weights(name, normalizer):
    module = built(name, normalizer=normalizer)
    query, keys, values, mask = inputs(*sizes(name))
    context, weights = module(query, keys, values, mask)
    permutation = torch.randperm(TK, generator=torch.Generator().manual_seed(3))
    permuted_context, permuted_weights = module(query, keys[:, permutation], values[:, permutation],
                                                mask[:, permutation])
    torch.testing.assert_close(permuted_weights, weights[..., permutation], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(permuted_context, context, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name, normalizer", list(itertools.product(SCORES, NORMS)))
def test_gradients_are_correct(name, normalizer):
    module = built(name, normalizer=normalizer)
    query, keys, values, mask = inputs(*sizes(name), tq=2, tk=4, lengths=[4, 2], seed=5)
    for tensor in (query, keys, values):
        tensor.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k, v: module(q, k, v, mask), (query, keys, values))
    context, _ = module(query, keys, values, mask)  # and every parameter is reached
    context.sum().backward()
    for parameter_name, parameter in module.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("name, normalizer, window",
                         list(itertools.product(["general", "additive", "location"], NORMS, WINDOWS)))
def test_gradients_are_correct_with_windows(name, normalizer, window):
    module = built(name, normalizer=normalizer, window=window, window_size=1)
    query, keys, values, mask = inputs(*sizes(name), tq=3, tk=5, lengths=[5, 3], seed=6)
    positions = torch.tensor([[0, 1, 2], [2, 3, 4]])
    for tensor in (query, keys, values):
        tensor.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k, v: module(q, k, v, mask, positions), (query, keys, values))


# --- local attention ------------------------------------------------------------------------------------------------

@torch.no_grad()
def reference_local(module: Attention, query, keys, values, mask, positions) -> torch.Tensor:
    """α_t(s) ∝ align(q_t, k_s) · exp(−(s − p_t)² / 2σ²) over the real s with |s − p_t| ≤ D, align normalized over
    that window, written one query row at a time."""
    window, half_width = module.window, module.window.half_width
    energies = module.scorer(query, module.prepare_keys(keys))
    expected = torch.zeros_like(energies)
    for b, t in itertools.product(range(query.size(0)), range(query.size(1))):
        length = int(mask[b].sum())
        if window.kind == "local_m":
            aligned = float(min(int(positions[b, t]), length - 1))
        else:
            hidden = torch.tanh(window.position_hidden.weight @ query[b, t])  # p_t = (S_x − 1) σ(v_pᵀ tanh(W_p q_t))
            aligned = float((length - 1) * torch.sigmoid(window.position_score.weight[0] @ hidden))
        inside = [s for s in range(length) if abs(s - aligned) <= half_width]
        align = NORMALIZERS[module.normalizer.name](energies[b:b + 1, t:t + 1, inside],
                                                    torch.ones(1, len(inside), dtype=torch.bool))[0, 0]
        for s, a in zip(inside, align):
            expected[b, t, s] = a * math.exp(-(s - aligned) ** 2 / (2 * (half_width / 2) ** 2))
        expected[b, t] /= expected[b, t].sum()
    return expected


@pytest.mark.parametrize("window, normalizer", list(itertools.product(WINDOWS, NORMS)))
def test_local_attention_matches_its_formula_and_is_zero_outside_the_window(window, normalizer):
    lengths = [12, 5, 9]
    module = built("general", normalizer=normalizer, window=window, window_size=2)
    query, keys, values, mask = inputs(5, 3, tq=14, tk=12, lengths=lengths)  # the target outgrows short sources
    positions = torch.arange(14).expand(3, -1)
    context, weights = module(query, keys, values, mask, positions)
    torch.testing.assert_close(weights, reference_local(module, query, keys, values, mask, positions),
                               rtol=1e-10, atol=1e-12)
    aligned = module.window.aligned_positions(query, positions, mask)  # p_t [B, Tq]
    distance = (torch.arange(12) - aligned.unsqueeze(-1)).abs()
    assert torch.all(weights[distance > 2] == 0)
    assert torch.all(weights[~mask.unsqueeze(1).expand_as(weights)] == 0)
    if window == "local_m":  # p_t = t, kept inside the source
        torch.testing.assert_close(aligned, torch.minimum(positions, torch.tensor(lengths).unsqueeze(1) - 1).double())
    else:
        assert torch.all(aligned >= 0) and torch.all(aligned <= torch.tensor(lengths).unsqueeze(1) - 1)
    if normalizer == "softmax":  # softmax leaves nothing in the window out
        inside = (distance <= 2) & mask.unsqueeze(1)
        assert torch.all(weights[inside] > 0)


def test_local_m_needs_the_positions_of_single_steps():
    """A step's query is one row: its position comes from `query_positions`, and equals the row of the full query."""
    module = built("dot", window="local_m", window_size=1)
    query, keys, values, mask = inputs(5, 5)
    prepared = module.prepare_keys(keys)
    _, weights = module(query, keys, values, mask)  # positions 0..Tq − 1 by default
    for t in range(TQ):
        step = torch.full((B, 1), t)
        _, step_weights = module.attend(query[:, t:t + 1], prepared, values, mask, step)
        torch.testing.assert_close(step_weights, weights[:, t:t + 1], rtol=1e-12, atol=1e-14)


# --- in a real model, from a config ---------------------------------------------------------------------------------

SOURCES = [[5, 6, 7, 8, 9, 10, 4], [4, 10], [11, 4, 6, 7, 8], [9]]
TARGETS = [[4, 5, 6, 7, 8, 9, 10, 4], [7, 8, 9], [6], [4, 9, 10, 8, 5]]
VOCAB = 12

# one model per score, per normalizer and per window, over both decoder styles and both teacher-forcing paths
MODELS = {
    **{f"{score}": {"score": score} for score in SCORES},
    "sparsemax-general-bahdanau": {"score": "general", "normalizer": "sparsemax", "decoder_style": "bahdanau"},
    "entmax15-additive-feeding": {"score": "additive", "normalizer": "entmax15", "input_feeding": True},
    "temperature-dot": {"score": "dot", "temperature": 0.5},
    "local_m-dot": {"score": "dot", "window": "local_m", "window_size": 1},
    "local_p-concat-entmax15": {"score": "concat", "normalizer": "entmax15", "window": "local_p", "window_size": 2},
    "local_m-general-bahdanau": {"score": "general", "window": "local_m", "window_size": 2,
                                 "decoder_style": "bahdanau"},
    "local_p-location-sparsemax-feeding": {"score": "location", "normalizer": "sparsemax", "window": "local_p",
                                           "window_size": 1, "input_feeding": True},
}
MODEL_KEYS = {"decoder_style", "input_feeding"}


def model_from_config(options: dict, seed: int = 0):
    attention = {key: value for key, value in options.items() if key not in MODEL_KEYS}
    model_section = {"embedding_size": 6, "hidden_size": 8, "encoder_hidden_size": 4, "bidirectional": True,
                     "dropout": 0.0, "attention": attention,
                     **{key: value for key, value in options.items() if key in MODEL_KEYS}}
    config = parse_config({"data": {"train": {"tsv": "train.tsv"}, "dev": {"tsv": "dev.tsv"}, "max_length": 10},
                           "model": model_section, "training": {"max_steps": 1}}, origin="zoo test config")
    torch.manual_seed(seed)
    return build_model(config.model, VOCAB, VOCAB)


def batch(sources=SOURCES, targets=TARGETS):
    src, src_mask = pad_sequences(sources)
    tgt, _ = pad_sequences([[BOS_ID, *target, EOS_ID] for target in targets])
    return src, src_mask, tgt[:, :-1], tgt[:, 1:]


@pytest.mark.parametrize("options", MODELS.values(), ids=MODELS.keys())
def test_every_variant_trains_in_a_model_built_from_config(options):
    model = model_from_config(options)
    assert model.decoder.attention.normalizer.name == options.get("normalizer", "softmax")
    assert (model.decoder.attention.window is None) == ("window" not in options)
    src, src_mask, tgt_in, tgt_out = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(6):
        logits, weights = model(src, src_mask, tgt_in, return_attention=True)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        if not losses:  # the attention's own parameters learn too
            for name, parameter in model.decoder.attention.named_parameters():
                assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
                assert parameter.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), rtol=0, atol=1e-5)


WINDOWED = {name: options for name, options in MODELS.items() if "window" in options}


@pytest.mark.parametrize("options", WINDOWED.values(), ids=WINDOWED.keys())
def test_windowed_models_padded_batch_equals_one_by_one_and_stepping(options):
    model = model_from_config(options).double().eval()
    src, src_mask, tgt_in, _ = batch()
    with torch.no_grad():
        logits, attention = model(src, src_mask, tgt_in, return_attention=True)
        for i, (source, target) in enumerate(zip(SOURCES, TARGETS)):
            s, t = len(source), len(target) + 1
            one_src, one_mask, one_tgt, _ = batch([source], [target])
            one_logits, one_attention = model(one_src, one_mask, one_tgt, return_attention=True)
            torch.testing.assert_close(logits[i, :t], one_logits[0], rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(attention[i, :t, ..., :s], one_attention[0], rtol=1e-9, atol=1e-10)
        memory = model.encode(src, src_mask)  # the search path: the state counts the target position
        state = model.start_state(memory)
        for t in range(tgt_in.size(1)):
            assert torch.all(state["position"] == t)
            log_probs, state, weights = model.step(tgt_in[:, t], state, memory)
            torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], dim=-1), rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(weights, attention[:, t], rtol=1e-9, atol=1e-10)


def test_local_m_window_holds_through_beam_search():
    """Beam search reorders the state (the target position included): every hypothesis still attends only to
    |s − min(t, S − 1)| ≤ D."""
    model = model_from_config(MODELS["local_m-dot"]).eval()
    src, src_mask, _, _ = batch()
    for results in (beam_search(model, src, src_mask, beam_size=3, n_best=3), greedy_search(model, src, src_mask)):
        for source, hypotheses in zip(SOURCES, results):
            for hypothesis in hypotheses:
                steps = torch.arange(hypothesis.attention.shape[0]).unsqueeze(1)
                aligned = steps.clamp(max=len(source) - 1)
                outside = (torch.arange(len(source)) - aligned).abs() > 1
                assert (torch.from_numpy(hypothesis.attention[:, 0, 0])[outside] == 0).all()  # [T, L=1, H=1, S]


def test_config_keys_validate_and_location_defaults_to_the_data_length():
    base = {"data": {"train": {"tsv": "t"}, "dev": {"tsv": "d"}, "max_length": 33}, "training": {"max_steps": 1}}
    config = parse_config({**base, "model": {"attention": {"score": "location"}}})
    assert config.model.attention.max_source_length == 33
    assert "max_source_length: 33" in config.to_yaml()  # saved with the model, so loading rebuilds the same one
    for key, value, allowed in [("score", "cosine", "biased_general"), ("normalizer", "sparse", "entmax15"),
                                ("window", "local", "local_p"), ("activation", "swish", "gelu")]:
        with pytest.raises(ConfigError, match=allowed) as caught:
            parse_config({**base, "model": {"attention": {"score": "dot", key: value}}})
        assert f"model.attention.{key}" in str(caught.value)
    with pytest.raises(ConfigError, match="allowed here: score, normalizer"):
        parse_config({**base, "model": {"attention": {"score": "dot", "windw": "local_m"}}})
    with pytest.raises(ConfigError, match="does not take"):
        build_model(RNNConfig(hidden_size=8, attention={"score": "dot", "depth": 3}), VOCAB, VOCAB)


def test_trainer_runs_a_zoo_model_from_config(tiny_config, tmp_path):
    """The whole path: YAML-shaped config → Trainer (training steps, validation with beam search) → saved model."""
    config = tiny_config(tmp_path / "zoo", {"model.attention": {"score": "location", "normalizer": "entmax15",
                                                                "window": "local_p", "window_size": 3}})
    trainer = Trainer(config, show_progress=False)
    trainer.train()
    assert trainer.progress.step == 4
    assert trainer.model.decoder.attention.scorer.max_source_length == config.data.max_length
