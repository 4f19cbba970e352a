"""Checkpoint averaging in the practitioner's loop, for both model families: `training.keep_checkpoints` keeps the
parameters of the last N validations (the same set after a crash and --resume), `attnmt average` averages the last N
of them into a file or into the model directory (checked first, manifest rewritten), and `training.average_last`
makes the average the model at the end of training when its dev BLEU beats the best model's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnmt import checkpoint, manifest
from attnmt.averaging import average_tensors
from attnmt.cli import main
from attnmt.config import Config, parse_config
from attnmt.errors import ConfigError
from attnmt.training import AVERAGE_LOG, Trainer, train
from attnmt.translator import Translator
from conftest import TINY_TRANSFORMER, tiny_config_dict

BASE = {"model.embedding_size": 16, "model.hidden_size": 32, "model.encoder_hidden_size": 16, "model.dropout": 0.3,
        "training.batch_tokens": 200, "training.max_steps": 6, "training.validate_every": 2,
        "training.keep_checkpoints": 2, "training.save_every_minutes": None}
FAMILIES = {"rnn": {}, "transformer": {"model": dict(TINY_TRANSFORMER)}}


def make_config(corpus, family: str, model_dir: Path, overrides: dict | None = None) -> Config:
    return parse_config(tiny_config_dict(*corpus, model_dir, {**BASE, **FAMILIES[family], **(overrides or {})}))


@pytest.fixture(scope="module", params=list(FAMILIES))
def kept_run(request, corpus, tmp_path_factory) -> tuple[str, Path]:
    """A 6-step run validating every 2 steps, keeping the last 2 checkpoints."""
    model_dir = tmp_path_factory.mktemp(f"kept_{request.param}") / "model"
    train(make_config(corpus, request.param, model_dir), show_progress=False)
    return request.param, model_dir


def kept_steps(model_dir: Path) -> list[int]:
    return [step for step, _ in checkpoint.kept_checkpoints(model_dir)]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_same_tensors(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_the_last_validations_are_kept_and_older_ones_deleted(kept_run):
    _, model_dir = kept_run
    assert kept_steps(model_dir) == [4, 6]  # validations at 2, 4, 6: step 2's is gone
    assert sorted(path.name for path in (model_dir / checkpoint.CHECKPOINTS).iterdir()) == \
        ["step_4.safetensors", "step_6.safetensors"]
    assert_same_tensors(load_file(str(checkpoint.checkpoint_path(model_dir, 6))),  # the parameters of step 6
                        load_file(str(model_dir / checkpoint.TRAIN_STATE / checkpoint.MODEL_FILE)))


def test_attnmt_average_writes_the_mean_of_the_last_n(kept_run, tmp_path, capsys):
    _, model_dir = kept_run
    out = tmp_path / "average.safetensors"
    code, printed, err = run(capsys, "average", model_dir, "-n", 2, "-o", out)
    assert code == 0, err
    assert "steps 4, 6" in printed
    first, second = (load_file(str(checkpoint.checkpoint_path(model_dir, step))) for step in (4, 6))
    averaged = load_file(str(out))
    assert_same_tensors(averaged, average_tensors([checkpoint.checkpoint_path(model_dir, s) for s in (4, 6)]))
    name = next(iter(first))
    torch.testing.assert_close(averaged[name], (first[name] + second[name]) / 2)
    code, _, _ = run(capsys, "average", model_dir, "-n", 1, "-o", tmp_path / "last.safetensors")
    assert code == 0  # one checkpoint: itself, bit for bit
    assert_same_tensors(load_file(str(tmp_path / "last.safetensors")), second)


def test_average_into_the_model_directory_checks_it_loads_and_rewrites_the_manifest(kept_run, tmp_path, capsys):
    family, source = kept_run
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)
    code, printed, err = run(capsys, "average", model_dir, "--into-model")  # all kept: the last 2
    assert code == 0, err
    assert "model.safetensors is now the average of the checkpoints of steps 4, 6" in printed
    assert_same_tensors(load_file(str(model_dir / checkpoint.MODEL_FILE)),
                        average_tensors([checkpoint.checkpoint_path(model_dir, s) for s in (4, 6)]))
    assert all(check.problem is None for check in manifest.verify(model_dir))
    translator = Translator.load(model_dir, device="cpu")
    assert translator.describe().family == family
    assert len(translator.translate(["a b c"], beam_size=1)) == 1


def test_average_refusals_name_what_to_do_and_change_nothing(kept_run, tmp_path, capsys):
    family, source = kept_run
    model_dir = tmp_path / "model"
    shutil.copytree(source, model_dir)
    before = (model_dir / checkpoint.MODEL_FILE).read_bytes()
    code, _, err = run(capsys, "average", model_dir, "-n", 3, "-o", tmp_path / "x.safetensors")
    assert code == 2 and "holds 2 checkpoint(s) (steps 4, 6), not 3" in err and "-n 2" in err
    code, _, err = run(capsys, "average", model_dir, "-n", 2)
    assert code == 2 and "-o FILE.safetensors, and/or --into-model" in err
    code, _, err = run(capsys, "average", tmp_path, "-o", tmp_path / "x.safetensors")
    assert code == 2 and "keep_checkpoints" in err
    # checkpoints of the other family do not load into this model: refused before model.safetensors changes
    other = next(name for name in FAMILIES if name != family)
    foreign = tmp_path / "foreign"
    shutil.copytree(model_dir, foreign)
    train(make_config(corpus_of(source), other, tmp_path / "other", {"training.max_steps": 2}), show_progress=False)
    for path in (foreign / checkpoint.CHECKPOINTS).iterdir():
        path.unlink()
    shutil.copy(checkpoint.checkpoint_path(tmp_path / "other", 2), checkpoint.checkpoint_path(foreign, 2))
    code, _, err = run(capsys, "average", foreign, "--into-model")
    assert code == 2 and "does not fit the model" in err and "Traceback" not in err
    assert (foreign / checkpoint.MODEL_FILE).read_bytes() == before
    # a model directory whose files do not match its manifest is not blessed with a new one
    (model_dir / checkpoint.EXAMPLES_FILE).write_text("changed\n", encoding="utf-8")
    code, _, err = run(capsys, "average", model_dir, "--into-model")
    assert code == 2 and "examples.txt" in err
    assert (model_dir / checkpoint.MODEL_FILE).read_bytes() == before
    assert not (tmp_path / "x.safetensors").exists()


def corpus_of(model_dir: Path) -> tuple[Path, Path]:
    """The train and dev TSV files a run's config.yaml names."""
    from attnmt.config import load_config

    data = load_config(model_dir / checkpoint.CONFIG_FILE).data
    return Path(data.train.tsv), Path(data.dev.tsv)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_resumed_run_keeps_the_checkpoints_the_straight_run_keeps(corpus, tmp_path, family):
    """Stopped at step 4 (validations 2 and 4), then resumed to 6: the same checkpoints, bit for bit, as the straight
    run; one written after the state it resumes from (a kill between a validation and its save) is dropped and
    written again when the run gets there."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(make_config(corpus, family, straight), show_progress=False)
    train(make_config(corpus, family, stopped, {"training.max_steps": 4}), show_progress=False)
    assert kept_steps(stopped) == [2, 4]
    shutil.copy(checkpoint.checkpoint_path(stopped, 4), checkpoint.checkpoint_path(stopped, 5))  # beyond the state
    (stopped / checkpoint.CHECKPOINTS / ".step_6.safetensors.0a1b2c.tmp").write_bytes(b"cut short")
    train(make_config(corpus, family, stopped), resume=True, show_progress=False)
    assert sorted(path.name for path in (stopped / checkpoint.CHECKPOINTS).iterdir()) == \
        ["step_4.safetensors", "step_6.safetensors"]
    for step in (4, 6):
        assert checkpoint.checkpoint_path(straight, step).read_bytes() == \
            checkpoint.checkpoint_path(stopped, step).read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("average_wins", [True, False], ids=["average-wins", "best-stays"])
def test_average_last_replaces_the_best_model_only_when_its_dev_bleu_is_higher(corpus, tmp_path, monkeypatch, family,
                                                                              average_wins):
    original = Trainer.dev_scores

    def dev_scores(self, model=None, translations=None):
        scores = original(self, model, translations)
        if model is not None:  # the averaged model's
            scores["bleu"] = 101.0 if average_wins else -5.0
        return scores

    monkeypatch.setattr(Trainer, "dev_scores", dev_scores)
    model_dir = tmp_path / "model"
    overrides = {"training.max_steps": 4, "training.keep_checkpoints": 3, "training.average_last": 2}
    summary = train(make_config(corpus, family, model_dir, overrides), show_progress=False)
    record = json.loads((model_dir / AVERAGE_LOG).read_text(encoding="utf-8"))
    assert summary["average"] == record
    assert record["steps"] == [2, 4] and record["installed"] is average_wins
    assert record["dev_bleu"] == (101.0 if average_wins else -5.0)
    assert record["best_dev_bleu"] == round(summary["best_dev_bleu"], 2)
    model = load_file(str(model_dir / checkpoint.MODEL_FILE))
    averaged = average_tensors([checkpoint.checkpoint_path(model_dir, step) for step in (2, 4)])
    if average_wins:
        assert_same_tensors(model, averaged)
    else:
        assert any(not torch.equal(model[name], averaged[name]) for name in model)
    assert all(check.problem is None for check in manifest.verify(model_dir))
    Translator.load(model_dir, device="cpu")


def test_average_last_needs_as_many_kept_checkpoints(corpus, tmp_path):
    with pytest.raises(ConfigError, match="set `keep_checkpoints` to at least 3"):
        make_config(corpus, "rnn", tmp_path, {"training.average_last": 3, "training.keep_checkpoints": 2})
    with pytest.raises(ConfigError, match="average_last: 1"):
        make_config(corpus, "rnn", tmp_path, {"training.average_last": 1})
