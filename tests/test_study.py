"""The study runner: grid parsing, and a two-cell study on the tiny corpus that writes its tables and plots."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

from attnmt.errors import ConfigError
from attnmt.study import grid_cells, run_study


def test_grid_cells_product_then_explicit_cells_with_budget():
    grid = {"budget": {"training.max_steps": 5},
            "vary": {"model.cell": ["gru", "lstm"], "model.combine": ["concat", "add"]},
            "cells": [{"name": "plain", "set": {"model.attention": "none"}}]}
    cells = grid_cells(grid, "grid.yaml")
    assert [name for name, _ in cells] == ["cell=gru__combine=concat", "cell=gru__combine=add",
                                           "cell=lstm__combine=concat", "cell=lstm__combine=add", "plain"]
    assert all(overrides["training.max_steps"] == 5 for _, overrides in cells)
    assert cells[-1][1]["model.attention"] == "none"


@pytest.mark.parametrize("grid, message", [
    ({"cels": []}, "unknown keys"),
    ({}, "no cells"),
    ({"cells": [{"name": "x"}]}, "cells[0] needs `set"),
    ({"cells": [{"name": "x", "set": {}}, {"name": "x", "set": {}}]}, "share a name"),
])
def test_bad_grids_say_what_is_wrong(grid, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        grid_cells(grid, "grid.yaml")


def test_two_cell_study_writes_tables_plots_and_heatmaps(tmp_path, tiny_config_file):
    config_path, data = tiny_config_file
    data["data"]["test"] = data["data"]["dev"]
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"budget": {"training.max_steps": 3},
                                    "cells": [{"name": "none", "set": {"model.attention": "none"}},
                                              {"name": "dot", "set": {"model.attention": {"score": "dot"},
                                                                      "model.encoder_hidden_size": 16,
                                                                      "model.hidden_size": 32}}]}))
    out = tmp_path / "study"
    rows = run_study(str(config_path), str(grid), out)
    assert [row["cell"] for row in rows] == ["none", "dot"]
    saved = json.loads((out / "results.json").read_text())
    assert [row["cell"] for row in saved["rows"]] == ["none", "dot"]
    assert np.isnan(rows[0]["attention_entropy"]) and rows[1]["attention_entropy"] >= 0
    assert "| none |" in (out / "results.md").read_text()
    assert (out / "bleu_by_length.png").stat().st_size > 1000
    assert list((out / "heatmaps").glob("dot_*.png")) and not list((out / "heatmaps").glob("none_*.png"))
    # a second run reuses the finished cells instead of training them again
    steps_before = [row["steps"] for row in rows]
    assert [row["steps"] for row in run_study(str(config_path), str(grid), out)] == steps_before


def test_cells_with_the_same_config_are_trained_once_across_grids(tmp_path, tiny_config_file):
    config_path, data = tiny_config_file
    data["data"]["test"] = data["data"]["dev"]
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    attention = {"score": "dot", "normalizer": "softmax"}
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({"budget": {"training.max_steps": 2},
                                     "cells": [{"name": "dot", "set": {"model.attention": {"score": "dot"}}}]}))
    second.write_text(yaml.safe_dump({"budget": {"training.max_steps": 2},
                                      "cells": [{"name": "softmax", "set": {"model.attention": attention}},
                                                {"name": "none", "set": {"model.attention": "none"}}]}))
    cells = tmp_path / "cells"
    run_study(str(config_path), str(first), tmp_path / "a", cells_dir=cells)
    assert len([d for d in cells.iterdir() if d.is_dir()]) == 1
    rows = run_study(str(config_path), str(second), tmp_path / "b", cells_dir=cells)
    # `dot` with the default normalizer is the same config as `softmax`: reused, so only `none` was trained
    assert len([d for d in cells.iterdir() if d.is_dir()]) == 2
    first_rows = json.loads((tmp_path / "a" / "results.json").read_text())["rows"]
    assert rows[0]["bleu"] == first_rows[0]["bleu"] and rows[0]["steps"] == first_rows[0]["steps"]
    assert (tmp_path / "b" / "heatmaps" / "softmax_0.png").exists()
    assert not list(cells.glob("*.lock"))


def test_a_cell_locked_by_a_dead_process_is_taken_over(tmp_path):
    from attnmt.study import _claim

    lock = tmp_path / "cell.lock"
    assert _claim(lock) and not _claim(lock)  # held by this live process
    lock.write_text("999999999")  # no such process
    assert _claim(lock) and lock.read_text() == str(os.getpid())


def test_heatmaps_show_the_longest_test_sentences_in_test_order():
    from attnmt.study import heatmap_sentences

    sources = ["a b", "a b c d e", "a", "a b c d", "a b c d e f"]
    assert heatmap_sentences(sources) == [1, 4]
