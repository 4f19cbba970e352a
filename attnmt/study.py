"""Studies: train one model per grid cell on the same data with the same budget, then compare them.

    attnmt study configs/multi30k_de_en_rnn.yaml --grid studies/scorers.yaml --out docs/studies/scorers

A grid file names the cells, either as a product of values or one by one; each cell is a set of config overrides
(dotted keys, as `attnmt train --set`):

    budget: {training.max_minutes: 10}            # applied to every cell
    vary:                                         # the product of these lists
      model.attention: [none, dot, general, additive]
    cells:                                        # and/or explicit cells
      - {name: bahdanau_additive, set: {model.decoder_style: bahdanau, model.attention: additive}}

The output folder gets results.json and results.md (BLEU, chrF, parameters, train tokens/s and mean attention
entropy per cell), bleu_by_length.png (one line per cell, the shape of Bahdanau et al. 2015, Fig. 2) and
heatmaps/CELL.png for the same test sentences in every cell.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import yaml

from attnmt.config import load_config
from attnmt.data import read_corpus
from attnmt.errors import ConfigError
from attnmt.evaluation import bleu_by_length, corpus_scores, markdown_table, source_word_lengths
from attnmt.plotting import plot_attention, plot_lines
from attnmt.training import Trainer
from attnmt.translator import Translator

HEATMAP_SENTENCES = 2


def attention_entropy(weights: np.ndarray) -> float:
    """Mean over target steps of H(α_t) = −Σ_s α_ts log α_ts (nats): low = focused, log(S) = uniform."""
    clipped = np.clip(weights, 1e-12, 1.0)
    return float(np.mean(-(weights * np.log(clipped)).sum(axis=-1)))


def _cell_name(overrides: dict) -> str:
    return "__".join(f"{key.split('.')[-1]}={value}" for key, value in overrides.items()) or "base"


def grid_cells(grid: dict, origin: str) -> list[tuple[str, dict]]:
    """The (name, overrides) of every cell: the product of `vary`, then the explicit `cells`, each with `budget`."""
    unknown = set(grid) - {"budget", "vary", "cells"}
    if unknown:
        raise ConfigError(f"{origin}: unknown keys {sorted(unknown)}; a grid has budget, vary and cells")
    budget = grid.get("budget") or {}
    cells = []
    vary = grid.get("vary") or {}
    for values in itertools.product(*vary.values()) if vary else []:
        overrides = dict(zip(vary, values))
        cells.append((_cell_name(overrides), {**budget, **overrides}))
    for index, cell in enumerate(grid.get("cells") or []):
        if not isinstance(cell, dict) or "set" not in cell:
            raise ConfigError(f"{origin}: cells[{index}] needs `set: {{key: value}}` (and optionally `name`)")
        cells.append((cell.get("name") or _cell_name(cell["set"]), {**budget, **cell["set"]}))
    if not cells:
        raise ConfigError(f"{origin}: the grid has no cells; give `vary` or `cells`")
    names = [name for name, _ in cells]
    if len(set(names)) != len(names):
        raise ConfigError(f"{origin}: two cells share a name: {names}")
    return cells


def run_cell(config_path: str, name: str, overrides: dict, out: Path) -> dict:
    """Train one cell (or reuse a finished one) and measure it on the test set."""
    config = load_config(config_path, {**overrides, "training.tensorboard": False})
    if config.data.test is None and config.data.split is None:
        raise ConfigError(f"{config_path}: a study measures on the test set; give `data.test` or `data.split`")
    model_dir = out / "cells" / name
    finished = (model_dir / "train_state").exists()
    trainer = Trainer(config, model_dir, resume=finished, show_progress=False)
    summary = trainer.train()
    test = trainer.corpora.test if config.data.split else read_corpus(config.data.test)
    sources, references = [s for s, _ in test], [r for _, r in test]
    translations = Translator.load(model_dir).translate(sources, beam_size=config.search.beam_size)
    hypotheses = [t.text for t in translations]
    scores = corpus_scores(hypotheses, references)
    with_attention = [t.attention for t in translations if t.attention is not None and t.attention.size]
    row = {"cell": name, "bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
           "parameters": sum(p.numel() for p in trainer.model.parameters()),
           "train_tgt_tokens_per_s": round(summary["target_tokens_per_second"]),
           "steps": summary["steps"], "train_minutes": round(summary["seconds"] / 60, 1),
           "attention_entropy": round(float(np.mean([attention_entropy(a) for a in with_attention])), 3)
           if with_attention else math.nan,
           "bleu_by_length": bleu_by_length(source_word_lengths(sources), hypotheses, references),
           "bleu_signature": scores["bleu_signature"]}
    examples = sorted(range(len(sources)), key=lambda i: -len(source_word_lengths([sources[i]])))[:HEATMAP_SENTENCES]
    for rank, i in enumerate(sorted(examples)):
        if translations[i].attention is not None and translations[i].attention.size:
            plot_attention(translations[i].attention, translations[i].source_tokens,
                           translations[i].target_tokens_with_eos, out / "heatmaps" / f"{name}_{rank}.png",
                           title=f"{name}: {translations[i].text}")
    return row


COLUMNS = [("cell", "cell"), ("bleu", "BLEU"), ("chrf", "chrF"), ("parameters", "params"),
           ("train_tgt_tokens_per_s", "train tgt tok/s"), ("steps", "steps"), ("train_minutes", "train min"),
           ("attention_entropy", "attention entropy (nats)")]


def run_study(config_path: str, grid_path: str, out: str | Path) -> list[dict]:
    """Run every cell of the grid and write the tables and plots; finished cells are reused."""
    grid_file = Path(grid_path)
    if not grid_file.is_file():
        raise ConfigError(f"grid file {grid_file} does not exist")
    cells = grid_cells(yaml.safe_load(grid_file.read_text(encoding="utf-8")) or {}, str(grid_file))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in cells:
        print(f"cell {name}: {overrides}", flush=True)
        rows.append(run_cell(config_path, name, overrides, out))
        print(f"  BLEU {rows[-1]['bleu']}, chrF {rows[-1]['chrf']}", flush=True)
        (out / "results.json").write_text(json.dumps({"config": config_path, "grid": grid_path, "rows": rows},
                                                     indent=1), encoding="utf-8")
    table = markdown_table(rows, COLUMNS)
    (out / "results.md").write_text(f"Config `{config_path}`, grid `{grid_path}`; test BLEU "
                                    f"`{rows[0]['bleu_signature']}`.\n\n{table}\n", encoding="utf-8")
    series = {row["cell"]: [((b["low"] + b["high"]) / 2, b["bleu"]) for b in row["bleu_by_length"]] for row in rows}
    plot_lines(series, "source length (words)", "BLEU", "BLEU by source sentence length", out / "bleu_by_length.png")
    return rows
