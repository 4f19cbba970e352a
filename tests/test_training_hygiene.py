"""What a run leaves and says, for both model families: the dev and test parts a `data.split` cuts are written into
the model directory, the test set is scored at the end (test_scores.json, printed), `attnmt train --resume` of a run
whose budget is spent says how to raise it (exit status 3), and TensorBoard gets sample translations and an attention
heatmap at every validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attnmt.cli import main
from attnmt.config import parse_config
from attnmt.data import read_corpora, read_lines
from attnmt.errors import BudgetSpent
from attnmt.training import TEST_SCORES, Trainer, train
from conftest import TINY_TRANSFORMER, tiny_config_dict

BASE = {"model.embedding_size": 16, "model.hidden_size": 32, "model.encoder_hidden_size": 16,
        "training.batch_tokens": 200, "training.max_steps": 2, "training.validate_every": 1,
        "training.save_every_minutes": None, "data.src_lang": "ko", "data.tgt_lang": "en"}
FAMILIES = {"rnn": {}, "transformer": {"model": dict(TINY_TRANSFORMER)}}


def config_dict(corpus, family: str, model_dir: Path, overrides: dict | None = None, split: bool = False) -> dict:
    data = tiny_config_dict(*corpus, model_dir, {**BASE, **FAMILIES[family], **(overrides or {})})
    if split:
        del data["data"]["dev"]
        data["data"]["split"] = {"dev_size": 10, "test_size": 8, "seed": 3}
    return data


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ---- data.split and the test scores ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_a_split_is_written_and_its_test_part_scored_at_the_end(corpus, tmp_path, capsys, family):
    model_dir = tmp_path / "model"
    data = config_dict(corpus, family, model_dir, split=True)
    code, out, err = run(capsys, "train", write_config(tmp_path / "split.yaml", data), "--quiet")
    assert code == 0, err
    parts = read_corpora(parse_config(data))
    for part, pairs in (("dev", parts.dev), ("test", parts.test)):
        assert read_lines(model_dir / f"{part}.ko") == [source for source, _ in pairs]
        assert read_lines(model_dir / f"{part}.en") == [target for _, target in pairs]
    scores = json.loads((model_dir / TEST_SCORES).read_text(encoding="utf-8"))
    assert scores["sentences"] == len(parts.test) == 8
    assert "test.ko + test.en" in scores["test_set"] and "tok:13a" in scores["bleu_signature"]
    assert scores["search"]["beam_size"] == 5 and "chrf_signature" in scores
    assert f"BLEU = {scores['bleu']:.2f}" in out and f"chrF = {scores['chrf']:.2f}" in out
    assert "search: beam_size 5" in out
    # the same figures as `attnmt evaluate` of the best model on the files the split wrote
    code, report, _ = run(capsys, "evaluate", model_dir, "--src", model_dir / "test.ko", "--ref",
                          model_dir / "test.en", "--json")
    assert code == 0
    report = json.loads(report)
    assert (report["bleu"], report["chrf"], report["search"]) == (scores["bleu"], scores["chrf"], scores["search"])


def test_a_configured_test_set_is_scored_and_score_test_false_skips_it(corpus, tmp_path):
    overrides = {"data.test": {"tsv": str(corpus[1])}}
    summary = train(parse_config(config_dict(corpus, "rnn", tmp_path / "a", overrides)), show_progress=False)
    assert summary["test"] == json.loads((tmp_path / "a" / TEST_SCORES).read_text(encoding="utf-8"))
    assert summary["test"]["sentences"] == 12 and str(corpus[1]) in summary["test"]["test_set"]
    summary = train(parse_config(config_dict(corpus, "rnn", tmp_path / "b", {**overrides,
                                                                              "training.score_test": False})),
                    show_progress=False)
    assert summary["test"] is None and not (tmp_path / "b" / TEST_SCORES).exists()


def test_language_names_that_are_no_file_names_are_refused(corpus, tmp_path):
    with pytest.raises(Exception, match="data.tgt_lang.*no language name"):
        parse_config(config_dict(corpus, "rnn", tmp_path, {"data.tgt_lang": "../en"}))


# ---- a spent budget -------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("family", FAMILIES)
def test_resuming_a_finished_run_says_how_to_raise_the_budget(corpus, tmp_path, capsys, family):
    config = write_config(tmp_path / "run.yaml", config_dict(corpus, family, tmp_path / "model"))
    assert run(capsys, "train", config, "--quiet")[0] == 0
    before = snapshot(tmp_path / "model")
    code, out, err = run(capsys, "train", config, "--resume", "--quiet")
    assert code == 3 and out == ""
    assert "has trained 2 steps, its whole `training.max_steps` (2)" in err
    assert "--resume --set training.max_steps=4" in err and "Traceback" not in err
    assert snapshot(tmp_path / "model") == before  # nothing trained, nothing written
    code, out, err = run(capsys, "train", config, "--resume", "--quiet", "--set", "training.max_steps=3")
    assert code == 0, err
    assert "trained 3 steps" in out


def test_every_kind_of_spent_budget_is_named(corpus, tmp_path):
    model_dir = tmp_path / "model"
    train(parse_config(config_dict(corpus, "rnn", model_dir)), show_progress=False)

    def resumed(overrides: dict) -> Trainer:
        return Trainer(parse_config(config_dict(corpus, "rnn", model_dir, overrides)), resume=True,
                       show_progress=False)

    assert resumed({"training.max_steps": 3}).spent() is None
    epochs = resumed({"training.max_steps": 3, "training.max_epochs": 2})
    epochs.progress.epoch = 2
    assert "its whole `training.max_epochs` (2)" in epochs.spent() and "training.max_epochs=4" in epochs.spent()
    assert "--set training.max_minutes=" in resumed({"training.max_steps": None, "training.max_minutes": 1e-9}).spent()
    stopped = resumed({"training.max_steps": 3})
    stopped.validations.stopped_early = True
    assert f"--set training.init_from={model_dir}" in stopped.spent()
    with pytest.raises(BudgetSpent, match="nothing to train"):
        train(parse_config(config_dict(corpus, "rnn", model_dir)), resume=True, show_progress=False,
              refuse_spent=True)


# ---- TensorBoard ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tensorboard_gets_sample_translations_and_an_attention_heatmap_at_each_validation(corpus, tmp_path, family):
    model_dir = tmp_path / "model"
    train(parse_config(config_dict(corpus, family, model_dir, {"training.tensorboard": True})), show_progress=False)
    events = EventAccumulator(str(model_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    texts = events.Tensors("dev/translations/text_summary")
    assert [event.step for event in texts] == [1, 2]
    text = texts[-1].tensor_proto.string_val[0].decode("utf-8")
    source, reference = read_corpora(parse_config(config_dict(corpus, family, model_dir))).dev[0]
    assert f"**source:** {source}" in text and f"**reference:** {reference}" in text
    assert text.count("**translation:**") == 3
    images = events.Images("dev/attention")
    assert [event.step for event in images] == [1, 2]
    assert images[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[-1].width > 100
    assert np.isfinite(events.Scalars("dev/bleu")[-1].value)
