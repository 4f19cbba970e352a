"""Fine-tuning (`training.init_from: MODEL_DIR`), for both model families: a fresh run starts from another model
directory's weights and tokenizer, with a fresh optimizer and schedule; a source of another architecture or
tokenizer, or one that is not a sound model directory, is refused by name before anything is written; --resume wins
over init_from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from attnmt import checkpoint, manifest
from attnmt.cli import main
from attnmt.config import load_config, parse_config
from attnmt.errors import CheckpointError, ConfigError
from attnmt.training import Trainer, train
from attnmt.translator import Translator


def fine_tune_config(source: Path, model_dir: Path, overrides: dict | None = None) -> dict:
    """The source model's own config, as a new run into `model_dir` that starts from it: 2 steps."""
    data = load_config(source / checkpoint.CONFIG_FILE).model_dump(mode="json")
    data["model_dir"] = str(model_dir)
    data["training"].update(init_from=str(source), max_steps=2, validate_every=1, tensorboard=False)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        data[section][key] = value
    return data


def test_a_fine_tuned_run_starts_from_the_source_weights_and_tokenizer_with_a_fresh_optimizer(family_model, tmp_path):
    source, target = family_model.model_dir, tmp_path / "fine_tuned"
    trainer = Trainer(parse_config(fine_tune_config(source, target)), show_progress=False)
    expected = load_file(str(source / checkpoint.MODEL_FILE))
    step_zero = checkpoint.model_tensors(trainer.model)
    assert step_zero.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(step_zero[name], tensor), name
    for name in trainer.tokenizer.files:  # the source's tokenizer, byte for byte, not a new one
        assert (target / name).read_bytes() == (source / name).read_bytes()
    assert trainer.progress.step == 0 and trainer.optimizer.state_dict()["state"] == {}  # no Adam moments yet
    assert trainer.schedule.decay == 1.0 and trainer.validations.best_bleu == -1.0
    manifest.check(target)  # config, tokenizer and examples written and listed


def test_attnmt_train_fine_tunes_and_the_model_translates(family_model, tmp_path, capsys):
    config = tmp_path / "fine_tune.yaml"
    config.write_text(yaml.safe_dump(fine_tune_config(family_model.model_dir, tmp_path / "fine_tuned")),
                      encoding="utf-8")
    assert main(["train", str(config), "--quiet"]) == 0, capsys.readouterr().err
    assert "trained 2 steps" in capsys.readouterr().out
    translator = Translator.load(tmp_path / "fine_tuned", device="cpu")
    assert load_config(tmp_path / "fine_tuned" / checkpoint.CONFIG_FILE).training.init_from == \
        str(family_model.model_dir)  # the model directory says where it came from
    sources = [source for source, _ in family_model.test_pairs[:4]]
    assert all(isinstance(t.text, str) for t in translator.translate(sources, beam_size=1))


@pytest.mark.parametrize("key", ["model.hidden_size", "model.encoder_layers", "tokenizer.vocab_size"])
def test_a_source_of_another_model_or_tokenizer_is_refused_naming_the_fields(family_model, tmp_path, key):
    source = family_model.model_dir
    section, name = key.split(".")
    before = getattr(getattr(load_config(source / checkpoint.CONFIG_FILE), section), name)
    target = tmp_path / "fine_tuned"
    with pytest.raises(ConfigError) as error:
        Trainer(parse_config(fine_tune_config(source, target, {key: before * 2})), show_progress=False)
    message = str(error.value)
    assert f"{key}: {before!r} there, {before * 2!r} here" in message and "training.init_from" in message
    assert not target.exists()  # refused before anything was written


def test_dropout_may_change_when_fine_tuning(family_model, tmp_path):
    target = tmp_path / "fine_tuned"
    trainer = Trainer(parse_config(fine_tune_config(family_model.model_dir, target, {"model.dropout": 0.25})),
                      show_progress=False)
    assert load_config(target / checkpoint.CONFIG_FILE).model.dropout == trainer.config.model.dropout == 0.25


def copy_model(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("train_state", "tensorboard", "checkpoints"))
    return folder


def test_a_source_that_is_no_sound_model_directory_is_refused_naming_it(family_model, tmp_path):
    config = fine_tune_config(family_model.model_dir, tmp_path / "a")
    config["training"]["init_from"] = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="nowhere.*is not a trained attnmt model directory"):
        Trainer(parse_config(config), show_progress=False)
    tampered = copy_model(family_model.model_dir, tmp_path / "tampered")
    with open(tampered / checkpoint.EXAMPLES_FILE, "a", encoding="utf-8") as examples:
        examples.write("one more line\n")
    with pytest.raises(CheckpointError, match="examples.txt"):
        Trainer(parse_config(fine_tune_config(tampered, tmp_path / "b")), show_progress=False)
    own = copy_model(family_model.model_dir, tmp_path / "own")
    with pytest.raises(ConfigError, match="this run's own model directory"):
        Trainer(parse_config(fine_tune_config(own, own)), show_progress=False)


def test_resume_wins_over_init_from(family_model, tmp_path):
    """A fine-tuned run resumes from its own train_state/: init_from is not looked at (here it names a folder that
    is gone), and the run goes on from step 2, not from the source's weights."""
    source = copy_model(family_model.model_dir, tmp_path / "source")
    target = tmp_path / "fine_tuned"
    longer = fine_tune_config(source, target, {"training.max_steps": 3})
    train(parse_config(fine_tune_config(source, target)), show_progress=False)
    shutil.rmtree(source)
    trainer = Trainer(parse_config(longer), resume=True, show_progress=False)
    assert trainer.progress.step == 2
    saved = load_file(str(target / checkpoint.TRAIN_STATE / checkpoint.MODEL_FILE))
    for name, tensor in checkpoint.model_tensors(trainer.model).items():
        assert torch.equal(tensor, saved[name]), name
    assert trainer.train()["steps"] == 3
