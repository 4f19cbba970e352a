"""Softmax dilution (seed 002): the same score margin buys less and less weight as the source grows.

Seed 002 (Long-Term Dependency) argues: give one encoder state a score of 3 and the others a score of 1; with
10 inputs that state gets about 66.7 % of the context vector (= exp(3) / (exp(3) + 10)), with 100 inputs only
about 16.8 % (= exp(3) / (exp(3) + 99)). This script checks that arithmetic and puts it in a general form.

One relevant source position scores m above the S − 1 others (energies e = [m, 0, …, 0]; softmax ignores a common
shift, so only the margin m matters). Its softmax weight is

    α = e^m / (e^m + S − 1)

which falls towards 0 as S grows, and it stays ≥ 1/2 only while m ≥ ln(S − 1). The sparse normalizers of
`attnmt.attention.normalizers` behave differently: sparsemax gives the relevant position everything (and the others
exactly 0) once m ≥ 1, entmax15 once m ≥ 2, whatever S is. Below those margins every position keeps some weight,
but the relevant one never drops under m (sparsemax) or (m/2)² (entmax15), however long the source, while softmax
goes to 0; and the margin they need for weight 1/2 stays bounded (below 1/2 for sparsemax, below √2 for entmax15)
instead of growing like ln(S − 1). (The closed forms assume m ≥ 0: the relevant position scores highest.)

    python studies/softmax_dilution.py            # markdown tables (the ones in docs/attention.md)
    python studies/softmax_dilution.py --json     # the same numbers as JSON

Every closed form here is also computed with torch (torch.softmax, masked_sparsemax, masked_entmax15) on the energy
vector itself; the tables show both, and tests/test_softmax_dilution.py checks that they agree.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

try:
    from attnmt.attention.normalizers import masked_entmax15, masked_sparsemax
except ModuleNotFoundError:  # run from a checkout without installing attnmt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from attnmt.attention.normalizers import masked_entmax15, masked_sparsemax

LENGTHS = (5, 10, 20, 50, 100)  # S, the number of source positions
MARGINS = (3.0, 0.5)  # m: seed 002's margin (3 over the rest), and a small one where the sparse maps spread too


# --- closed forms ----------------------------------------------------------------------------------------------------

def _check(margin: float, length: int) -> None:
    if length < 1:
        raise ValueError(f"a source needs at least one position, not S = {length}")
    if margin < 0:
        raise ValueError(f"the margin m is how far the relevant position scores above the others, so m ≥ 0, "
                         f"not {margin}")


def softmax_weight(margin: float, length: int) -> float:
    """α = e^m / (e^m + S − 1): the softmax weight of the one position that scores m above the S − 1 others."""
    _check(margin, length)
    return 1.0 / (1.0 + (length - 1) * math.exp(-margin))  # the same, without overflow for large m


def softmax_margin_for(weight: float, length: int) -> float:
    """The margin m that gives the relevant position softmax weight `weight`: m = ln(weight (S − 1) / (1 − weight)).

    For weight 1/2 this is ln(S − 1): it grows without bound as the source grows.
    """
    if not 0 < weight < 1:
        raise ValueError(f"a softmax weight lies strictly between 0 and 1, not {weight}")
    if length < 2:
        raise ValueError("with one position the weight is always 1")
    return max(0.0, math.log(weight * (length - 1) / (1 - weight)))


def sparsemax_weight(margin: float, length: int) -> float:
    """Sparsemax weight of the position m above the S − 1 others.

    Sparsemax is [e_i − τ]₊ with Σ = 1. For m ≥ 1 the support is the one position (τ = m − 1): weight 1, the
    others exactly 0. For m < 1 every position is in the support, τ = (m − 1) / S, and the weight is
    m − τ = m (S − 1) / S + 1 / S.
    """
    _check(margin, length)
    if margin >= 1 or length == 1:
        return 1.0
    return margin - (margin - 1) / length


def sparsemax_margin_for(weight: float, length: int) -> float:
    """The margin that gives weight `weight` < 1 under sparsemax: m = (weight · S − 1) / (S − 1), so below 1/2
    for weight 1/2 (0 for a weight ≤ 1/S, which a tie already gives)."""
    if not 0 < weight < 1:
        raise ValueError(f"ask for a weight strictly between 0 and 1, not {weight}")
    if length < 2:
        raise ValueError("with one position the weight is always 1")
    return max(0.0, (weight * length - 1) / (length - 1))


def entmax15_weight(margin: float, length: int) -> float:
    """1.5-entmax weight of the position m above the S − 1 others.

    1.5-entmax is [z_i − τ]₊² with z = e / 2 and Σ = 1. With a = m / 2: for a ≥ 1 the one position takes
    everything (τ = a − 1 ≥ 0 = the others' z). For a < 1 all S positions share: (a − τ)² + (S − 1) τ² = 1 gives
    τ = (a − √(S − (S − 1) a²)) / S < 0, and the weight is (a − τ)².
    """
    _check(margin, length)
    half = margin / 2
    if half >= 1 or length == 1:
        return 1.0
    tau = (half - math.sqrt(length - (length - 1) * half ** 2)) / length
    return (half - tau) ** 2


def entmax15_margin_for(weight: float, length: int) -> float:
    """The margin that gives weight `weight` < 1 under 1.5-entmax (0 for a weight ≤ 1/S).

    The others get τ² = (1 − weight) / (S − 1) each, so a − τ = √weight, τ = −√((1 − weight) / (S − 1)) and
    m = 2 (√weight − √((1 − weight) / (S − 1))). For weight 1/2: √2 (1 − 1 / √(S − 1)), below √2 for every S.
    """
    if not 0 < weight < 1:
        raise ValueError(f"ask for a weight strictly between 0 and 1, not {weight}")
    if length < 2:
        raise ValueError("with one position the weight is always 1")
    return max(0.0, 2 * (math.sqrt(weight) - math.sqrt((1 - weight) / (length - 1))))


# --- the same with torch, on the energy vector itself ----------------------------------------------------------------

def energies(margin: float, length: int, rest: float = 0.0) -> torch.Tensor:
    """e = [rest + m, rest, …, rest] as [1, 1, S] (batch, query, source), float64."""
    _check(margin, length)
    e = torch.full((1, 1, length), float(rest), dtype=torch.float64)
    e[..., 0] += margin
    return e


def torch_weights(margin: float, length: int, rest: float = 0.0) -> dict[str, torch.Tensor]:
    """The weights [S] of e = [rest + m, rest, …] under softmax, sparsemax and entmax15 (attnmt's normalizers)."""
    e = energies(margin, length, rest)
    mask = torch.ones(1, length, dtype=torch.bool)
    return {"softmax": torch.softmax(e, dim=-1)[0, 0],
            "sparsemax": masked_sparsemax(e, mask)[0, 0],
            "entmax15": masked_entmax15(e, mask)[0, 0]}


# --- seed 002's worked example ---------------------------------------------------------------------------------------

def seed_example() -> list[dict]:
    """Seed 002's two figures, computed as the seed writes them, and two consistent readings of its example.

    The seed says "one score 3, the others 1" but divides by exp(3) + 10 and exp(3) + 99, i.e. it counts each other
    position as exp(0) = 1 (others scoring 0, margin 3), with 10 others for "10 inputs" and 99 others for "100
    inputs". The two readings: margin 3 with S = 10 and S = 100 positions in all; and the literal scores 3 vs 1
    (margin 2).
    """
    rows = []
    for length_words, denominator_rest, seed_percent in (("10 inputs", 10, 66.7), ("100 inputs", 99, 16.8)):
        rows.append({"case": f"seed, {length_words}: exp(3) / (exp(3) + {denominator_rest})",
                     "margin": 3.0, "positions": denominator_rest + 1,
                     "computed": softmax_weight(3.0, denominator_rest + 1),
                     "torch": float(torch_weights(3.0, denominator_rest + 1)["softmax"][0]),
                     "seed_percent": seed_percent})
    for margin, rest, what in ((3.0, 0.0, "scores 3 vs 0"), (2.0, 1.0, "scores 3 vs 1, as the seed's words say")):
        for length in (10, 100):
            rows.append({"case": f"S = {length} in all, {what}: exp({margin:g}) / (exp({margin:g}) + {length - 1})",
                         "margin": margin, "positions": length, "computed": softmax_weight(margin, length),
                         "torch": float(torch_weights(margin, length, rest)["softmax"][0]), "seed_percent": None})
    return rows


def dilution_table(margin: float, lengths=LENGTHS) -> list[dict]:
    """One row per S: the relevant position's weight under each normalizer (closed form and torch), the weight each
    other position keeps, how many positions get exactly 0, and the margin each normalizer needs for weight 1/2."""
    rows = []
    for length in lengths:
        weights = torch_weights(margin, length)
        rows.append({
            "S": length,
            "softmax": softmax_weight(margin, length),
            "softmax_torch": float(weights["softmax"][0]),
            "softmax_other": float(weights["softmax"][1]) if length > 1 else 0.0,
            "sparsemax": sparsemax_weight(margin, length),
            "sparsemax_torch": float(weights["sparsemax"][0]),
            "sparsemax_zeros": int((weights["sparsemax"] == 0).sum()),
            "entmax15": entmax15_weight(margin, length),
            "entmax15_torch": float(weights["entmax15"][0]),
            "entmax15_zeros": int((weights["entmax15"] == 0).sum()),
            "softmax_margin_half": softmax_margin_for(0.5, length),
            "sparsemax_margin_half": sparsemax_margin_for(0.5, length),
            "entmax15_margin_half": entmax15_margin_for(0.5, length),
        })
    return rows


# --- output ----------------------------------------------------------------------------------------------------------

def markdown_seed(rows: list[dict]) -> str:
    lines = ["| case | S | weight (closed form) | weight (torch.softmax) | seed 002 says |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        seed = f"≈ {row['seed_percent']:.1f} %" if row["seed_percent"] is not None else "—"
        lines.append(f"| {row['case']} | {row['positions']} | {100 * row['computed']:.2f} % "
                     f"| {100 * row['torch']:.2f} % | {seed} |")
    return "\n".join(lines)


def markdown_dilution(margin: float, rows: list[dict]) -> str:
    lines = [f"| S | softmax e^m/(e^m+S−1), m = {margin:g} | torch.softmax | softmax, each other position "
             "| sparsemax (positions at exactly 0) | entmax15 (positions at exactly 0) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['S']} | {r['softmax']:.4f} | {r['softmax_torch']:.4f} | {r['softmax_other']:.4f} "
                     f"| {r['sparsemax_torch']:.4f} ({r['sparsemax_zeros']}) "
                     f"| {r['entmax15_torch']:.4f} ({r['entmax15_zeros']}) |")
    return "\n".join(lines)


def markdown_margins(rows: list[dict]) -> str:
    lines = ["| S | softmax: ln(S−1) | sparsemax: (S/2−1)/(S−1) | entmax15: √2 (1 − 1/√(S−1)) |",
             "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['S']} | {r['softmax_margin_half']:.3f} | {r['sparsemax_margin_half']:.3f} "
                     f"| {r['entmax15_margin_half']:.3f} |")
    return "\n".join(lines)


def report(margins=MARGINS, lengths=LENGTHS) -> dict:
    return {"seed_example": seed_example(),
            "dilution": {f"{margin:g}": dilution_table(margin, lengths) for margin in margins}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON instead of markdown tables")
    parser.add_argument("--margins", type=float, nargs="+", default=list(MARGINS), help="margins m (default 3 0.5)")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="source lengths S")
    args = parser.parse_args(argv)
    data = report(args.margins, args.lengths)
    if args.json:
        print(json.dumps(data, indent=1))
        return
    print("Seed 002's example: the softmax weight of the one position that scores 3 when the others score 0 (or 1).\n")
    print(markdown_seed(data["seed_example"]))
    for margin, rows in data["dilution"].items():
        print(f"\nOne position scores m = {margin} above the S − 1 others: its weight under each normalizer.\n")
        print(markdown_dilution(float(margin), rows))
    first = next(iter(data["dilution"].values()))
    print("\nThe margin m the relevant position needs for weight ½ (it depends on S only).\n")
    print(markdown_margins(first))

if __name__ == "__main__":
    main()
