"""Tests of training, checkpoints and the config: learning, save/load, exact resume, refusals, config validation."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from attnmt import checkpoint
from attnmt.config import RNNConfig, TrainingConfig, load_config, parse_config
from attnmt.errors import CheckpointError, ConfigError
from attnmt.models import build_model
from attnmt.training import LearningRateSchedule, Trainer, ValidationBookkeeper, learning_rate, train
from attnmt.translator import Translator

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_same_tensors(first: Path, second: Path) -> None:
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---- a tiny model learns ---------------------------------------------------------------------------------------------


def test_tiny_model_learns_to_reverse_held_out_sequences(reversal_model, reversal_translator):
    sources = [src for src, _ in reversal_model.test_pairs]
    references = [tgt for _, tgt in reversal_model.test_pairs]
    assert len(sources) == 200
    for beam_size in (1, 5):
        translations = reversal_translator.translate(sources, beam_size=beam_size)
        exact = np.mean([t.text == ref for t, ref in zip(translations, references)])
        assert exact >= 0.95, f"beam {beam_size}: only {exact:.1%} exact matches"


def test_validations_are_logged_and_the_best_is_marked(reversal_model):
    records = [json.loads(line) for line in (reversal_model.model_dir / "validations.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [200, 400]
    best_so_far = -1.0
    for record in records:
        assert record["best"] == (record["dev_bleu"] > best_so_far)
        best_so_far = max(best_so_far, record["dev_bleu"])
    assert best_so_far > 90  # reversal is easy: dev BLEU is near 100


# ---- save and load ---------------------------------------------------------------------------------------------------


def test_saved_and_loaded_model_translates_exactly_like_the_model_in_memory(reversal_model, tmp_path):
    trainer = reversal_model.trainer
    for name in (checkpoint.CONFIG_FILE, *trainer.tokenizer.files):
        shutil.copy(reversal_model.model_dir / name, tmp_path / name)
    checkpoint.save_model(tmp_path / checkpoint.MODEL_FILE, trainer.model)
    in_memory = Translator(trainer.model, trainer.tokenizer, trainer.config)
    loaded = Translator.load(tmp_path)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    sentences = [src for src, _ in reversal_model.test_pairs[:40]] + ["a b c d e f g h i j a b", "j"]
    for options in ({"beam_size": 1}, {"beam_size": 5, "n_best": 3, "length_penalty": 1.0}):
        expected = in_memory.translate(sentences, **options)
        got = loaded.translate(sentences, **options)
        for e, g in zip(expected, got):
            assert [t.text for t in g.n_best] == [t.text for t in e.n_best]
            assert [t.score for t in g.n_best] == [t.score for t in e.n_best]
            np.testing.assert_array_equal(g.attention, e.attention)


def test_tied_embeddings_survive_save_and_load(tmp_path):
    config = RNNConfig(embedding_size=16, hidden_size=16, attention="general", tie_target_embeddings=True)
    torch.manual_seed(0)
    model = build_model(config, 20, 30)
    checkpoint.save_model(tmp_path / "model.safetensors", model)
    assert "decoder.output.weight" not in load_file(str(tmp_path / "model.safetensors"))  # stored once
    torch.manual_seed(1)
    other = build_model(config, 20, 30)
    checkpoint.load_model_weights(tmp_path / "model.safetensors", other)
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name
    assert other.decoder.output.weight is other.decoder.embed.weight


def test_weights_that_do_not_fit_the_model_raise_checkpoint_error(tmp_path):
    checkpoint.save_model(tmp_path / "model.safetensors", build_model(RNNConfig(hidden_size=16), 20, 30))
    with pytest.raises(CheckpointError, match="does not fit"):
        checkpoint.load_model_weights(tmp_path / "model.safetensors",
                                      build_model(RNNConfig(hidden_size=16, attention="general"), 20, 30))
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load_model_weights(tmp_path / "absent.safetensors", build_model(RNNConfig(), 20, 30))


def test_model_directory_holds_safetensors_yaml_and_json_only(reversal_model):
    folder = reversal_model.model_dir
    names = {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}
    assert {"config.yaml", "model.safetensors", "spm.model", "validations.jsonl", "examples.txt"} <= names
    assert {"train_state/model.safetensors", "train_state/optimizer.safetensors", "train_state/rng.safetensors",
            "train_state/state.json"} == {name for name in names if name.startswith("train_state")}
    allowed = {".yaml", ".json", ".jsonl", ".safetensors", ".model", ".vocab", ".txt"}
    assert {Path(name).suffix for name in names} <= allowed, names
    for path in folder.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not zipfile.is_zipfile(path), f"{path} is a zip archive (torch.save)"
            assert not (head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6))), f"{path} looks like a pickle"
    for name in ("model.safetensors", "train_state/model.safetensors", "train_state/optimizer.safetensors",
                 "train_state/rng.safetensors"):
        assert load_file(str(folder / name))  # real safetensors with at least one tensor
    state = json.loads((folder / "train_state" / "state.json").read_text())
    assert state["progress"]["step"] == 400
    assert {"optimizer", "schedule"} <= set(state)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert parse_config(config) == reversal_model.trainer.config


# ---- resume ----------------------------------------------------------------------------------------------------------


def test_resumed_run_equals_straight_run(tiny_config, tmp_path):
    """N steps straight = k steps, stop, resume to N: same parameters, optimizer and progress, bit for bit. Dropout
    makes the random state matter; validations every 3 steps (not dividing k) drive the plateau schedule; the data
    is shorter than N steps, so the resumed run crosses an epoch boundary mid-way."""
    n, k = 14, 5
    straight = tmp_path / "straight"
    summary = train(tiny_config(straight, {"training.max_steps": n}), show_progress=False)
    assert summary["steps"] == n and summary["epochs"] >= 1
    stopped = tmp_path / "stopped"
    train(tiny_config(stopped, {"training.max_steps": k}), show_progress=False)
    after_k = load_file(str(stopped / "train_state" / "model.safetensors"))
    resumed = train(tiny_config(stopped, {"training.max_steps": n}), resume=True, show_progress=False)
    assert resumed["steps"] == n
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        assert_same_tensors(straight / "train_state" / name, stopped / "train_state" / name)
    states = [json.loads((folder / "train_state" / "state.json").read_text()) for folder in (straight, stopped)]
    assert states[0]["schedule"] == states[1]["schedule"]
    assert states[0]["progress"]["step"] == n and states[0]["progress"]["epoch"] >= 1
    # all of the progress but the clock and the best BLEU (the stopped run validated once more, at step k)
    for key in set(states[0]["progress"]) - {"seconds", "best_bleu"}:
        assert states[0]["progress"][key] == states[1]["progress"][key], key
    # and training did happen after the stop
    final = load_file(str(stopped / "train_state" / "model.safetensors"))
    assert any(not torch.equal(after_k[name], final[name]) for name in final)


def test_resume_without_saved_state_raises_checkpoint_error(tiny_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="--resume"):
        Trainer(tiny_config(empty), resume=True, show_progress=False)
    assert list(empty.iterdir()) == []


def test_training_into_an_existing_run_without_resume_overwrites_nothing(tiny_config, tmp_path):
    folder = tmp_path / "run"
    train(tiny_config(folder, {"training.max_steps": 2}), show_progress=False)
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="--resume") as caught:
        train(tiny_config(folder, {"training.max_steps": 4, "model.hidden_size": 16}), show_progress=False)
    assert "nothing was overwritten" in str(caught.value)
    assert snapshot(folder) == before


def test_resuming_with_another_model_or_vocabulary_is_an_error_that_overwrites_nothing(tiny_config, tmp_path):
    """E.g. `attnmt demo` on a runs/demo left by an older demo config: a message naming what differs, no traceback."""
    folder = tmp_path / "run"
    train(tiny_config(folder, {"training.max_steps": 2}), show_progress=False)
    before = snapshot(folder)
    for key, value, named in (("model.hidden_size", 16, "model.hidden_size: 32 there, 16 here"),
                              ("tokenizer.vocab_size", 20, "tokenizer.vocab_size: 16 there, 20 here")):
        with pytest.raises(CheckpointError, match="holds a run of another") as caught:
            Trainer(tiny_config(folder, {"training.max_steps": 4, key: value}), resume=True, show_progress=False)
        assert named in str(caught.value) and "nothing was overwritten" in str(caught.value)
    assert snapshot(folder) == before
    Trainer(tiny_config(folder, {"training.max_steps": 4}), resume=True, show_progress=False)  # a longer budget: fine


def test_a_crash_while_swapping_states_still_resumes_and_still_protects_the_run(tiny_config, tmp_path):
    """save_train_state moves train_state/ to train_state.old/ before it renames the new one into place; a crash
    between the two renames leaves only train_state.old/, which `load_train_state` accepts."""
    folder = tmp_path / "run"
    train(tiny_config(folder, {"training.max_steps": 2}), show_progress=False)
    (folder / "train_state").rename(folder / "train_state.old")
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="--resume"):
        train(tiny_config(folder, {"training.max_steps": 3}), show_progress=False)
    assert snapshot(folder) == before
    assert train(tiny_config(folder, {"training.max_steps": 3}), resume=True, show_progress=False)["steps"] == 3


def test_early_stopping_and_plateau_decay_are_the_same_in_a_resumed_run(tiny_config, tmp_path, monkeypatch):
    """Validation results are scripted per step, so that the learning-rate schedule and early stopping both act
    after the stop. Dev loss: 2.0 at step 3, 2.5 at 6 (worse: the rate is halved, patience 0). Dev BLEU: 10 at 3,
    20 at 6, 15 at 9: the straight run stops early at 9 (patience 1). The stopped run also validates at step 5,
    its last step, where BLEU is 30: that must change neither the schedule nor when the resumed run stops."""
    import attnmt.training as training

    bleu_at_step = {3: 10.0, 5: 30.0, 6: 20.0, 9: 15.0, 12: 12.0}
    loss_at_step = {3: 2.0, 5: 1.0, 6: 2.5, 9: 1.5, 12: 1.4}
    current: list[Trainer] = []

    def scripted_scores(hypotheses, references, **options):
        return {"bleu": bleu_at_step[current[-1].progress.step], "chrf": 0.0}

    monkeypatch.setattr(training, "corpus_scores", scripted_scores)
    monkeypatch.setattr(Trainer, "dev_loss", lambda self: loss_at_step[self.progress.step])

    def run(folder: Path, steps: int, resume: bool = False) -> dict:
        trainer = Trainer(tiny_config(folder, {"training.early_stopping_patience": 1, "training.max_steps": steps}),
                          resume=resume, show_progress=False)
        current.append(trainer)
        return trainer.train()

    straight = run(tmp_path / "straight", 12)
    assert straight["steps"] == 9
    records = [json.loads(line) for line in (tmp_path / "straight" / "validations.jsonl").read_text().splitlines()]
    assert records[-1]["learning_rate"] == pytest.approx(records[0]["learning_rate"] / 2)  # the decay happened
    run(tmp_path / "stopped", 5)
    resumed = run(tmp_path / "stopped", 12, resume=True)
    assert resumed["steps"] == straight["steps"]
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert_same_tensors(tmp_path / "straight" / "train_state" / name, tmp_path / "stopped" / "train_state" / name)


# ---- the learning rate and what a validation decides ---------------------------------------------------------------


def test_learning_rate_is_a_pure_function_of_the_step():
    """constant/plateau: max(base · min(1, step / warmup) · decay, floor); inverse_sqrt: base · min(step / warmup,
    √(warmup / step)), neither decayed nor floored."""
    warm = TrainingConfig(max_steps=10, learning_rate=0.01, warmup_steps=4, min_learning_rate=0.001)
    assert [learning_rate(step, warm) for step in (1, 2, 4, 100)] == pytest.approx([0.0025, 0.005, 0.01, 0.01])
    assert learning_rate(2, warm, decay=0.5) == pytest.approx(0.0025)
    assert learning_rate(1, warm, decay=0.01) == 0.001  # the floor
    flat = TrainingConfig(max_steps=10, learning_rate=0.01, warmup_steps=0)
    assert learning_rate(0, flat) == learning_rate(1, flat) == learning_rate(10 ** 6, flat) == 0.01
    sqrt = TrainingConfig(max_steps=10, learning_rate=0.002, schedule="inverse_sqrt", warmup_steps=100,
                          min_learning_rate=0.5)
    assert [learning_rate(step, sqrt, decay=0.1) for step in (0, 1, 50, 100, 400)] == \
        pytest.approx([0.00002, 0.00002, 0.001, 0.002, 0.001])
    assert learning_rate(7, warm) == learning_rate(7, warm)  # no state: the same answer every time


def test_plateau_schedule_decays_after_patience_and_round_trips_its_state():
    settings = TrainingConfig(max_steps=10, learning_rate=0.01, schedule="plateau", warmup_steps=0,
                              plateau_patience=1, plateau_factor=0.5, min_learning_rate=0.0)
    schedule = LearningRateSchedule(settings)
    for loss in (2.0, 2.1, 2.2):  # one bad validation is patience, the second halves the rate
        schedule.after_validation(loss)
    assert schedule.rate(5) == pytest.approx(0.005) == learning_rate(5, settings, schedule.decay)
    state = schedule.state_dict()
    assert state == {"decay": 0.5, "best_loss": 2.0, "bad_validations": 0}  # the keys of state.json's "schedule"
    restored = LearningRateSchedule(settings)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.state_dict() == state
    constant = LearningRateSchedule(TrainingConfig(max_steps=10, schedule="constant", plateau_patience=0))
    for loss in (2.0, 3.0, 4.0):
        constant.after_validation(loss)
    assert constant.decay == 1.0


def test_validation_bookkeeper_decides_best_model_and_early_stopping():
    settings = TrainingConfig(max_steps=10, schedule="plateau", plateau_patience=0, plateau_factor=0.5)
    schedule = LearningRateSchedule(settings)
    keeper = ValidationBookkeeper(schedule, early_stopping_patience=2)
    first = keeper.decide(loss=2.0, bleu=10.0)
    assert (first.save_best, first.stop_early) == (True, False)
    final = keeper.decide(loss=9.0, bleu=30.0, regular=False)  # the end of a run: saves, decides nothing else
    assert (final.save_best, final.stop_early) == (True, False)
    assert (keeper.best_bleu, keeper.best_regular_bleu, keeper.validations_without_improvement) == (30.0, 10.0, 0)
    assert schedule.decay == 1.0
    second = keeper.decide(loss=2.5, bleu=20.0)  # better than the regular best, not than the best
    assert (second.save_best, second.stop_early) == (False, False)
    assert (keeper.best_regular_bleu, keeper.validations_without_improvement, schedule.decay) == (20.0, 0, 0.5)
    assert not keeper.decide(loss=1.0, bleu=20.0).stop_early  # not better: one without improvement
    third = keeper.decide(loss=1.0, bleu=15.0)  # two: stop
    assert (third.save_best, third.stop_early, keeper.stopped_early) == (False, True, True)
    state = keeper.state_dict()
    assert state == {"best_bleu": 30.0, "best_regular_bleu": 20.0, "validations_without_improvement": 2,
                     "stopped_early": True}  # the names state.json's "progress" has always had
    restored = ValidationBookkeeper(LearningRateSchedule(settings), early_stopping_patience=2)
    restored.load_state_dict({"step": 12, "epoch": 1, **state})  # the whole "progress" dict, as saved
    assert restored.state_dict() == state
    never = ValidationBookkeeper(LearningRateSchedule(settings), early_stopping_patience=None)
    assert not any(never.decide(loss=1.0, bleu=-5.0).stop_early for _ in range(5))


def test_state_json_keeps_its_format_and_an_old_one_resumes(tiny_config, tmp_path):
    """state.json's "progress" is one flat dict (where training is, and the validation bookkeeping) and "schedule"
    the plateau decay, as train_state/ dirs have always held them; one whose "progress" lacks the newer
    early-stopping fields still resumes."""
    folder = tmp_path / "run"
    train(tiny_config(folder, {"training.max_steps": 3}), show_progress=False)
    path = folder / "train_state" / "state.json"
    state = json.loads(path.read_text())
    assert list(state["progress"]) == ["step", "epoch", "batch_in_epoch", "target_tokens", "seconds", "best_bleu",
                                       "best_regular_bleu", "validations_without_improvement", "stopped_early"]
    assert set(state["schedule"]) == {"decay", "best_loss", "bad_validations"}
    for key in ("best_regular_bleu", "validations_without_improvement", "stopped_early"):
        del state["progress"][key]
    path.write_text(json.dumps(state))
    trainer = Trainer(tiny_config(folder, {"training.max_steps": 4}), resume=True, show_progress=False)
    assert trainer.progress.step == 3 and trainer.validations.best_bleu == state["progress"]["best_bleu"]
    assert (trainer.validations.best_regular_bleu, trainer.validations.stopped_early) == (-1.0, False)
    assert trainer.train()["steps"] == 4


# ---- the config ------------------------------------------------------------------------------------------------------


def minimal(**sections) -> dict:
    data = {"data": {"train": {"tsv": "train.tsv"}, "split": {"dev_size": 5}}, "training": {"max_steps": 10}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def test_attention_shorthand():
    assert parse_config(minimal(model={"attention": "additive"})).model.attention.score == "additive"
    assert parse_config(minimal(model={"attention": "none"})).model.uses_attention is False
    full = parse_config(minimal(model={"attention": {"score": "general", "hidden_size": 3}})).model.attention
    assert (full.score, full.hidden_size) == ("general", 3)


def test_unknown_key_and_bad_value_are_named():
    with pytest.raises(ConfigError, match=r"model\.hidden_sise") as caught:
        parse_config(minimal(model={"hidden_sise": 3}))
    assert "unknown key" in str(caught.value)
    with pytest.raises(ConfigError, match=r"model\.cell") as caught:
        parse_config(minimal(model={"cell": "transformer"}))
    assert all(allowed in str(caught.value) for allowed in ("'rnn'", "'lstm'", "'gru'"))
    with pytest.raises(ConfigError, match="scaled_dot"):
        parse_config(minimal(model={"attention": "cosine"}))


def test_a_run_needs_a_budget():
    data = minimal()
    del data["training"]["max_steps"]
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert all(key in str(caught.value) for key in ("max_steps", "max_epochs", "max_minutes"))
    for key, value in (("max_steps", 1), ("max_epochs", 1), ("max_minutes", 0.5)):
        assert parse_config(minimal(training={key: value}))


def test_inconsistent_model_options_raise_config_error():
    with pytest.raises(ConfigError, match="input_feeding"):
        parse_config(minimal(model={"attention": "none", "input_feeding": True}))
    with pytest.raises(ConfigError, match="input_feeding"):
        parse_config(minimal(model={"decoder_style": "bahdanau", "input_feeding": True}))
    config = parse_config(minimal(model={"bidirectional": True, "hidden_size": 16, "attention": "general",
                                         "combine": "add"}))
    with pytest.raises(ConfigError, match=r"model\.combine"):
        build_model(config.model, 10, 10)
    config = parse_config(minimal(model={"embedding_size": 8, "hidden_size": 16, "tie_target_embeddings": True}))
    with pytest.raises(ConfigError, match=r"model\.tie_target_embeddings"):
        build_model(config.model, 10, 10)


SHIPPED = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "attnmt" / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert SHIPPED and any(path.parent.name == "configs" and path.parent.parent.name == "attnmt" for path in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(path.relative_to(REPO)) for path in SHIPPED])
def test_shipped_configs_validate_and_build(path):
    config = load_config(path)
    build_model(config.model, config.tokenizer.vocab_size, config.tokenizer.vocab_size)  # sizes fit together
    for corpus in (config.data.train, config.data.dev, config.data.test):
        for file in (corpus.src, corpus.tgt, corpus.tsv) if corpus else ():
            if file and file.startswith("pkg://"):
                assert (REPO / "attnmt" / file[len("pkg://"):]).is_file(), file


def test_load_config_overrides_and_errors(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(minimal(model={"attention": "dot"})), encoding="utf-8")
    config = load_config(path, {"training.max_steps": 7, "model.cell": "lstm", "search.beam_size": 3})
    assert (config.training.max_steps, config.model.cell, config.search.beam_size) == (7, "lstm", 3)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(tmp_path / "broken.yaml")


def test_overriding_a_key_inside_a_shorthand_raises_config_error(tmp_path):
    """`attention: dot` is a value, not a section: `model.attention.score=general` cannot go inside it."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(minimal(model={"attention": "dot"})), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model\.attention"):
        load_config(path, {"model.attention.score": "general"})
    assert load_config(path, {"model.attention": "general"}).model.attention.score == "general"
    assert load_config(path, {"model.attention": {"score": "additive", "hidden_size": 4}}).model.attention.hidden_size == 4
