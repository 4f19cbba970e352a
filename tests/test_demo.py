"""`attnmt demo` end to end on the bundled corpus, with a few steps instead of the demo's budget: it trains, scores
the held-out pairs, reports where the attention looks, and draws the heatmap of a held-out sentence."""

from __future__ import annotations

import re

from attnmt.cli import main
from attnmt.config import load_config
from attnmt.translator import Translator

PNG = b"\x89PNG\r\n\x1a\n"


def test_demo_trains_scores_and_draws(capsys, tmp_path):
    model_dir = tmp_path / "demo"
    assert main(["demo", "--model-dir", str(model_dir), "--max-steps", "20", "--max-minutes", "60"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"held-out test \(\d+ pairs never seen in training\), beam 5: BLEU \d+\.\d\d, chrF", out), out
    share = re.search(r"attention: (\d+\.\d)% of target words look hardest at the last source token", out)
    assert share and 0.0 <= float(share.group(1)) <= 100.0, out
    assert "20 steps" in out and "wall-clock guard" not in out
    assert (model_dir / "attention.png").read_bytes()[:8] == PNG
    assert Translator.load(model_dir).describe().summary in out  # the model it trained is the one it describes


def test_demo_says_when_the_wall_clock_guard_stopped_it(capsys, tmp_path):
    assert main(["demo", "--model-dir", str(tmp_path / "demo"), "--max-steps", "100000",
                 "--max-minutes", "0.05"]) == 0
    assert "the wall-clock guard (0.05 min) stopped training at step" in capsys.readouterr().out


def test_the_demo_budget_is_steps_and_the_study_notes_model_stays_a_config():
    demo = load_config("pkg://configs/ko_en_demo.yaml")
    assert demo.training.max_steps and demo.model.bidirectional and demo.model.uses_attention
    seed = load_config("pkg://configs/ko_en_seed001.yaml")
    assert (seed.model.bidirectional, seed.model.hidden_size, seed.model.attention.score) == (False, 512, "dot")
