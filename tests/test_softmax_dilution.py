"""studies/softmax_dilution.py: seed 002's softmax-dilution arithmetic, its closed forms against torch and attnmt's
normalizers, and the sparse normalizers' exact zeros."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from attnmt.attention.normalizers import masked_entmax15, masked_sparsemax

SCRIPT = Path(__file__).resolve().parents[1] / "studies" / "softmax_dilution.py"


def _load():
    spec = importlib.util.spec_from_file_location("softmax_dilution", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dilution = _load()

LENGTHS = [1, 2, 5, 10, 20, 50, 100, 1000]
MARGINS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 7.0]


def _vector(margin: float, length: int) -> torch.Tensor:
    e = torch.zeros(1, 1, length, dtype=torch.float64)
    e[..., 0] = margin
    return e


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("length", LENGTHS)
def test_softmax_closed_form_matches_torch_softmax(margin, length):
    expected = torch.softmax(_vector(margin, length), dim=-1)[0, 0, 0].item()
    assert dilution.softmax_weight(margin, length) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # only the margin matters: shifting every energy by the same amount changes nothing
    shifted = dilution.torch_weights(margin, length, rest=-4.0)["softmax"][0].item()
    assert shifted == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("length", LENGTHS)
def test_sparse_closed_forms_match_attnmt_normalizers(margin, length):
    mask = torch.ones(1, length, dtype=torch.bool)
    sparse = masked_sparsemax(_vector(margin, length), mask)[0, 0]
    ent = masked_entmax15(_vector(margin, length), mask)[0, 0]
    assert dilution.sparsemax_weight(margin, length) == pytest.approx(sparse[0].item(), abs=1e-9)
    assert dilution.entmax15_weight(margin, length) == pytest.approx(ent[0].item(), abs=1e-9)
    assert sparse.sum().item() == pytest.approx(1.0) and ent.sum().item() == pytest.approx(1.0)


def test_seed_002_worked_example():
    # The seed: exp(3) / (exp(3) + 10) ≈ 66.7 % and exp(3) / (exp(3) + 99) ≈ 16.8 % (it truncates: 66.76, 16.87).
    ten, hundred = dilution.seed_example()[:2]
    assert ten["computed"] == pytest.approx(math.exp(3) / (math.exp(3) + 10), rel=1e-12)
    assert hundred["computed"] == pytest.approx(math.exp(3) / (math.exp(3) + 99), rel=1e-12)
    assert 100 * ten["computed"] == pytest.approx(ten["seed_percent"], abs=0.1)
    assert 100 * hundred["computed"] == pytest.approx(hundred["seed_percent"], abs=0.1)
    for row in dilution.seed_example():
        assert row["torch"] == pytest.approx(row["computed"], rel=1e-12)
    # the same score margin loses most of its weight when the source is ten times longer
    assert hundred["computed"] < ten["computed"] / 3


@pytest.mark.parametrize("margin", [0.0, 0.5, 3.0, 10.0])
def test_softmax_weight_falls_strictly_as_the_source_grows(margin):
    weights = [dilution.softmax_weight(margin, length) for length in range(1, 300)]
    assert weights[0] == 1.0
    assert all(later < earlier for earlier, later in zip(weights, weights[1:]))
    assert weights[-1] < 1.5 * math.exp(margin) / 299  # towards 0, like e^m / S


@pytest.mark.parametrize("length", [2, 5, 10, 20, 50, 100, 1000])
def test_margin_for_half_is_ln_s_minus_1(length):
    margin = dilution.softmax_margin_for(0.5, length)
    assert margin == pytest.approx(math.log(length - 1))
    assert dilution.softmax_weight(margin, length) == pytest.approx(0.5)
    assert dilution.softmax_weight(margin + 0.01, length) > 0.5
    if margin > 0.01:  # S = 2: a tie already gives ½
        assert dilution.softmax_weight(margin - 0.01, length) < 0.5
    for weight in (0.3, 0.9):  # above 1/S (a tie), so the margin is positive
        if weight > 1 / length:
            assert dilution.softmax_weight(dilution.softmax_margin_for(weight, length), length) == pytest.approx(weight)


@pytest.mark.parametrize("length", [3, 5, 10, 20, 50, 100, 1000])
def test_sparse_margins_for_half_stay_bounded(length):
    sparse, ent = dilution.sparsemax_margin_for(0.5, length), dilution.entmax15_margin_for(0.5, length)
    assert dilution.sparsemax_weight(sparse, length) == pytest.approx(0.5)
    assert dilution.entmax15_weight(ent, length) == pytest.approx(0.5)
    assert sparse < 0.5 and ent < math.sqrt(2)
    assert ent == pytest.approx(math.sqrt(2) * (1 - 1 / math.sqrt(length - 1)))
    if length > 5:
        assert sparse < ent < dilution.softmax_margin_for(0.5, length)


@pytest.mark.parametrize("length", [2, 5, 10, 100, 1000])
def test_sparse_normalizers_give_irrelevant_positions_exactly_zero(length):
    weights = dilution.torch_weights(3.0, length)  # seed 002's margin
    for name in ("sparsemax", "entmax15"):
        assert weights[name][0].item() == 1.0
        assert (weights[name][1:] == 0).all()
    assert (weights["softmax"][1:] > 0).all()
    # below the threshold margins every position shares, but the relevant one keeps at least m, resp. (m/2)²
    assert dilution.sparsemax_weight(0.99, length) < 1 and dilution.entmax15_weight(1.99, length) < 1
    assert dilution.sparsemax_weight(1.0, length) == 1.0 and dilution.entmax15_weight(2.0, length) == 1.0
    assert dilution.sparsemax_weight(0.5, length) >= 0.5
    assert dilution.entmax15_weight(0.5, length) > 0.25 ** 2


def test_table_rows_and_cli(capsys):
    rows = dilution.dilution_table(3.0, [5, 10, 20, 50, 100])
    assert [r["S"] for r in rows] == [5, 10, 20, 50, 100]
    softmax = [r["softmax"] for r in rows]
    assert softmax == sorted(softmax, reverse=True) and softmax[0] > 0.8 and softmax[-1] < 0.17
    assert all(r["softmax"] == pytest.approx(r["softmax_torch"]) for r in rows)
    assert [r["sparsemax_zeros"] for r in rows] == [4, 9, 19, 49, 99]
    dilution.main(["--margins", "3", "--lengths", "10", "100"])
    out = capsys.readouterr().out
    assert "| 10 | 0.6906 |" in out and "| 100 | 0.1687 |" in out and "≈ 66.7 %" in out
    dilution.main(["--json", "--margins", "3"])
    data = json.loads(capsys.readouterr().out)
    assert data["dilution"]["3"][-1]["softmax"] == pytest.approx(math.exp(3) / (math.exp(3) + 99))


def test_rejects_meaningless_inputs():
    with pytest.raises(ValueError):
        dilution.softmax_weight(-1.0, 10)
    with pytest.raises(ValueError):
        dilution.softmax_weight(1.0, 0)
    with pytest.raises(ValueError):
        dilution.softmax_margin_for(1.0, 10)
