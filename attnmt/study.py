"""Studies: train one model per grid cell on the same data with the same budget, then compare them.

    attnmt study configs/multi30k_de_en_rnn.yaml --grid studies/scorers.yaml --out docs/studies/scorers

A grid file names the cells, either as a product of values or one by one; each cell is a set of config overrides
(dotted keys, as `attnmt train --set`):

    budget: {training.max_minutes: 10}            # applied to every cell
    vary:                                         # the product of these lists
      model.attention: [none, dot, general, additive]
    cells:                                        # and/or explicit cells
      - {name: bahdanau_additive, set: {model.decoder_style: bahdanau, model.attention: additive}}

Trained cells go to --cells (default OUT/cells), one folder per distinct config, so a cell two grids share is
trained once; two study processes started on the same --cells split the cells between them (one thread each on two
cores is faster than one process with two threads). The output folder gets results.json and results.md (BLEU, chrF, parameters, train tokens/s and mean attention
entropy per cell), bleu_by_length.png (one line per cell, the shape of Bahdanau et al. 2015, Fig. 2) and
heatmaps/CELL.png for the same test sentences in every cell.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from attnmt import checkpoint
from attnmt.alignment import attention_entropy
from attnmt.config import load_config
from attnmt.data import read_corpora
from attnmt.errors import ConfigError
from attnmt.evaluation import bleu_by_length, corpus_scores, markdown_table, source_word_lengths
from attnmt.plotting import plot_attention, plot_lines
from attnmt.training import Trainer
from attnmt.translator import Translator

HEATMAP_SENTENCES = 2
LENGTH_BUCKET = 5  # words per bucket of the BLEU-by-length plot
MIN_BUCKET_SENTENCES = 20  # smaller buckets are in results.json but not on the plot
RESULT_FILE = "study_result.json"
POLL_SECONDS = 10


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


def cell_key(config) -> str:
    """Cells whose configs agree share one trained model: a hash of the config, less its name, model_dir and
    `training.device` (where a cell trains, not what). Settings left at their defaults are left out, so a config key
    added later (with a default) keeps the keys of the cells trained before it."""
    settings = config.model_dump(mode="json", exclude_defaults=True)
    settings.pop("name", None), settings.pop("model_dir", None), settings.get("training", {}).pop("device", None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _claim(lock: Path) -> bool:
    """Take the lock file of a cell (another study process may be training it); a dead owner's lock is taken over."""
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = int(lock.read_text() or 0)
            os.kill(owner, 0)
            return False
        except (ValueError, ProcessLookupError, FileNotFoundError):
            lock.unlink(missing_ok=True)
            return _claim(lock)
        except PermissionError:
            return False
    with os.fdopen(descriptor, "w") as handle:
        handle.write(str(os.getpid()))
    return True


def train_and_measure(config, model_dir: Path) -> dict:
    """Train one cell (resuming an interrupted one), measure it on the test set and draw its heatmaps; the result
    file, written last, marks the cell finished."""
    trainer = Trainer(config, model_dir, resume=checkpoint.has_train_state(model_dir), show_progress=False)
    summary = trainer.train()
    sources, references = zip(*trainer.corpora.test)
    translator = Translator.load(model_dir, config.training.device)
    translations = translator.translate(sources, beam_size=config.search.beam_size)
    hypotheses = [t.text for t in translations]
    scores = corpus_scores(hypotheses, references)
    with_attention = [t.attention for t in translations if t.attention is not None and t.attention.size]
    result = {"bleu": round(scores["bleu"], 2), "chrf": round(scores["chrf"], 2),
              "parameters": trainer.model.describe().parameters,
              "train_tgt_tokens_per_s": round(summary["target_tokens_per_second"]),
              "steps": summary["steps"], "train_minutes": round(summary["seconds"] / 60, 1),
              "attention_entropy": round(float(np.mean([attention_entropy(a) for a in with_attention])), 3)
              if with_attention else math.nan,
              "bleu_by_length": bleu_by_length(source_word_lengths(sources), hypotheses, references,
                                               bucket_width=LENGTH_BUCKET),
              "bleu_signature": scores["bleu_signature"]}
    if config.model.uses_attention:
        draw_heatmaps(config, model_dir)
    checkpoint.write_text(model_dir / RESULT_FILE, json.dumps(result, indent=1))
    return result


def heatmap_sentences(sources: list[str]) -> list[int]:
    """The test sentences every cell draws: the HEATMAP_SENTENCES longest (in words), in test-set order."""
    lengths = source_word_lengths(sources)
    return sorted(sorted(range(len(sources)), key=lambda i: -lengths[i])[:HEATMAP_SENTENCES])


def draw_heatmaps(config, model_dir: Path) -> None:
    """model_dir/heatmap_R.png: the cell's attention on the chosen test sentences (beam search does not depend on
    what else is in the batch, so translating these alone gives what the test run gave)."""
    sources = [source for source, _ in read_corpora(config).test]
    chosen = [sources[i] for i in heatmap_sentences(sources)]
    translations = Translator.load(model_dir, config.training.device).translate(chosen, beam_size=config.search.beam_size)
    for rank, translation in enumerate(translations):
        plot_attention(translation.attention, translation.source_tokens, translation.target_tokens_with_eos,
                       model_dir / f"heatmap_{rank}.png", title=translation.text)


COLUMNS = [("cell", "cell"), ("bleu", "BLEU"), ("chrf", "chrF"), ("parameters", "params"),
           ("train_tgt_tokens_per_s", "train tgt tok/s"), ("steps", "steps"), ("train_minutes", "train min"),
           ("attention_entropy", "attention entropy (nats)")]


def run_study(config_path: str, grid_path: str, out: str | Path, cells_dir: str | Path | None = None) -> list[dict]:
    """Run every cell of the grid and write the tables and plots.

    Trained cells live in `cells_dir` (default OUT/cells) under a hash of their config, so a cell that another grid
    already trained with the same config is reused, and a finished study re-runs in seconds. Several study processes
    may share one `cells_dir`: each trains the cells nobody else has claimed (a lock file per cell) and waits for
    the rest, so two processes with one thread each split a grid between them.
    """
    grid_file = Path(grid_path)
    if not grid_file.is_file():
        raise ConfigError(f"grid file {grid_file} does not exist")
    cells = grid_cells(yaml.safe_load(grid_file.read_text(encoding="utf-8")) or {}, str(grid_file))
    out = Path(out)
    cells_root = Path(cells_dir) if cells_dir is not None else out / "cells"
    cells_root.mkdir(parents=True, exist_ok=True)
    (out / "heatmaps").mkdir(parents=True, exist_ok=True)
    configs = {}
    for name, overrides in cells:
        config = load_config(config_path, {**overrides, "training.tensorboard": False})
        if config.data.test is None and config.data.split is None:
            raise ConfigError(f"{config_path}: a study measures on the test set; give `data.test` or `data.split`")
        configs[name] = config
    results: dict[str, dict] = {}
    while len(results) < len(cells):
        waiting = False
        for name, overrides in cells:
            if name in results:
                continue
            model_dir = cells_root / cell_key(configs[name])
            lock = cells_root / f"{model_dir.name}.lock"
            if not (model_dir / RESULT_FILE).exists() and _claim(lock):
                try:
                    if not (model_dir / RESULT_FILE).exists():  # another process may have finished it meanwhile
                        print(f"cell {name} ({model_dir}): {overrides}", flush=True)
                        result = train_and_measure(configs[name], model_dir)
                        print(f"  BLEU {result['bleu']}, chrF {result['chrf']}", flush=True)
                finally:
                    lock.unlink(missing_ok=True)
            if not (model_dir / RESULT_FILE).exists():
                waiting = True
                continue
            results[name] = json.loads((model_dir / RESULT_FILE).read_text(encoding="utf-8"))
            if configs[name].model.uses_attention and not (model_dir / "heatmap_0.png").exists():
                draw_heatmaps(configs[name], model_dir)  # a finished cell whose heatmaps were deleted
            for heatmap in sorted(model_dir.glob("heatmap_*.png")):
                shutil.copyfile(heatmap, out / "heatmaps" / f"{name}_{heatmap.stem.split('_')[-1]}.png")
        if waiting and len(results) < len(cells):
            time.sleep(POLL_SECONDS)
    rows = [{"cell": name, **results[name]} for name, _ in cells]
    checkpoint.write_text(out / "results.json", json.dumps({"config": config_path, "grid": grid_path, "rows": rows},
                                                      indent=1))
    table = markdown_table(rows, COLUMNS)
    checkpoint.write_text(out / "results.md", f"Config `{config_path}`, grid `{grid_path}`; test BLEU "
                                         f"`{rows[0]['bleu_signature']}`.\n\n{table}\n")
    series = {row["cell"]: [((b["low"] + b["high"]) / 2, b["bleu"]) for b in row["bleu_by_length"]
                            if b["sentences"] >= MIN_BUCKET_SENTENCES] for row in rows}
    plot_lines(series, "source length (words, bucket middle)", "BLEU", "BLEU by source sentence length",
               out / "bleu_by_length.png")
    return rows
