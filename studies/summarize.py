"""Gather the study results of both datasets into the tables of docs/studies/README.md.

    python studies/summarize.py        # after studies/run_all.sh; rewrites the part between the markers

One table per grid: each cell's test BLEU / chrF and mean attention entropy on Multi30k de→en, its BLEU on the
Tatoeba long-sentence split, and that split's BLEU per source-length bucket (the buckets with enough sentences), so
a reader sees in one row how a model that never saw a sentence over 8 words does on longer ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "docs" / "studies"
GRIDS = {"scorers": "(a) no attention vs every score function (Luong decoder, softmax)",
         "decoders": "(b) Bahdanau vs Luong decoders × additive / general / dot",
         "normalizers": "(c) softmax vs sparsemax vs entmax15 (additive score, Luong decoder)"}
DATASETS = ("multi30k_de_en", "tatoeba_en_fr_long")
MIN_SENTENCES = 20
BEGIN, END = "<!-- study-tables:begin -->", "<!-- study-tables:end -->"


def load_rows(dataset: str, grid: str) -> dict[str, dict]:
    path = STUDIES / dataset / grid / "results.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `bash studies/run_all.sh` first")
    return {row["cell"]: row for row in json.loads(path.read_text(encoding="utf-8"))["rows"]}


def _number(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def grid_table(grid: str) -> str:
    multi30k, tatoeba = load_rows(DATASETS[0], grid), load_rows(DATASETS[1], grid)
    buckets = [b["bucket"] for b in next(iter(tatoeba.values()))["bleu_by_length"] if b["sentences"] >= MIN_SENTENCES]
    header = (["cell", "M30k BLEU", "M30k chrF", "M30k entropy", "M30k tok/s", "long BLEU", "long chrF"]
              + [f"long {bucket} w" for bucket in buckets])
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for cell, row in multi30k.items():
        long = tatoeba[cell]
        by_bucket = {b["bucket"]: b["bleu"] for b in long["bleu_by_length"]}
        values = [cell, _number(row["bleu"]), _number(row["chrf"]), _number(row["attention_entropy"], 2),
                  f"{row['train_tgt_tokens_per_s']:,}", _number(long["bleu"]), _number(long["chrf"])]
        values += [_number(by_bucket.get(bucket)) for bucket in buckets]
        lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parts = [BEGIN]
    for grid, title in GRIDS.items():
        parts += [f"### {title}", "", grid_table(grid), "",
                  f"Plots: [Multi30k BLEU by length]({DATASETS[0]}/{grid}/bleu_by_length.png), "
                  f"[long-sentence BLEU by length]({DATASETS[1]}/{grid}/bleu_by_length.png); heatmaps in "
                  f"`{DATASETS[0]}/{grid}/heatmaps/` and `{DATASETS[1]}/{grid}/heatmaps/`.", ""]
    parts.append(END)
    readme = STUDIES / "README.md"
    text = readme.read_text(encoding="utf-8")
    before, rest = text.split(BEGIN, 1)
    readme.write_text(before + "\n".join(parts) + rest.split(END, 1)[1], encoding="utf-8")
    print(f"wrote the tables into {readme}")


if __name__ == "__main__":
    main()
