"""Training under faults: kills at any instant (inside checkpoint writes too), SIGTERM and Ctrl-C, damaged training
states, corpora that are empty or not text, numbers that are not finite. Each fault ends in a run that resumes
exactly, or in one `AttnmtError` that names the file or key and says what to do; never in a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from safetensors.torch import load_file, save_file

from attnmt import checkpoint
from attnmt.cli import main
from attnmt.config import Config, parse_config
from attnmt.data import read_corpora, read_lines
from attnmt.errors import CheckpointError, ConfigError, CorpusError, DivergenceError
from attnmt.models import build_model
from attnmt.training import VALIDATION_LOG, Trainer, train
from conftest import TINY_TRANSFORMER, reversal_pairs, tiny_config_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "reliability"))

import corpus_fuzz  # noqa: E402  (benchmarks/reliability/corpus_fuzz.py)
import kills  # noqa: E402  (benchmarks/reliability/kills.py)

# a small model with dropout (so that the random state matters) on a corpus shorter than a few steps' worth of epochs
BASE = {"model.embedding_size": 16, "model.hidden_size": 32, "model.encoder_hidden_size": 16, "model.dropout": 0.3,
        "training.batch_tokens": 200, "training.max_steps": 4, "training.validate_every": 3,
        "training.label_smoothing": 0.1, "training.schedule": "plateau", "training.plateau_patience": 0,
        "training.save_every_minutes": None}
FAMILIES = {"rnn": {}, "transformer": {"model": dict(TINY_TRANSFORMER)}}
ADVICE = "delete it and train again without --resume"  # what every damaged or incomplete state's message says


def make_config(corpus, model_dir: Path, overrides: dict | None = None) -> Config:
    return parse_config(tiny_config_dict(*corpus, model_dir, {**BASE, **(overrides or {})}))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def state_json(folder: Path) -> dict:
    """train_state/state.json without the clock."""
    state = json.loads((folder / "train_state" / "state.json").read_text())
    del state["progress"]["seconds"]
    return state


def assert_same_state(first: Path, second: Path) -> None:
    """Two model directories hold the same train_state/ (bit for bit, but the clock) and the same best model."""
    for name in ("train_state/model.safetensors", "train_state/optimizer.safetensors", "train_state/rng.safetensors",
                 "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert state_json(first) == state_json(second)


def logged(folder: Path) -> list[dict]:
    """validations.jsonl without the clock."""
    records = [json.loads(line) for line in (folder / VALIDATION_LOG).read_text().splitlines()]
    return [{key: value for key, value in record.items() if key != "seconds"} for record in records]


# ---- a save cut short at any instant -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_states(corpus, tmp_path_factory) -> tuple[Path, Path]:
    """A run at step 3, and its train_state/ of step 2 kept aside."""
    folder = tmp_path_factory.mktemp("states")
    run = folder / "run"
    train(make_config(corpus, run, {"training.max_steps": 2}), show_progress=False)
    shutil.copytree(run / "train_state", folder / "step2")
    train(make_config(corpus, run, {"training.max_steps": 3}), resume=True, show_progress=False)
    return run, folder / "step2"


def without_state_json(folder: Path) -> Path:
    (folder / "state.json").unlink()
    return folder


# what a kill leaves inside save_train_state, window by window: {folder: the state it holds}, and the step to resume
LAYOUTS = {
    "writing the new folder": ({"train_state": 2, "train_state.new": "3 without state.json"}, 2),
    "after the new folder is written": ({"train_state": 2, "train_state.new": 3}, 3),
    "the first save, written": ({"train_state.new": 3}, 3),
    "after the first rename": ({"train_state.old": 2, "train_state.new": 3}, 3),
    "after the second rename": ({"train_state": 3, "train_state.old": 2}, 3),
    "a copy beside it (cp -r train_state train_state.old)": ({"train_state": 3, "train_state.old": 3}, 3),
    "inside the removal of .old": ({"train_state": 3, "train_state.old": "2 without state.json"}, 3),
    "between the renames, the old way (only .old)": ({"train_state.old": 3}, 3),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_save_cut_short_anywhere_leaves_a_run_that_resumes_from_its_newest_whole_state(two_states, corpus, tmp_path,
                                                                                        layout):
    """Any combination of train_state/, .new/ and .old/ a kill can leave resumes from the newest whole state (state.json
    is written last), and the first save after it works (before: `OSError: [Errno 39] Directory not empty` with a
    leftover .old/); the stale .new/.old and the temporary files of cut atomic writes are gone."""
    run, step2 = two_states
    folder = tmp_path / "run"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("train_state"))
    folders, expected_step = LAYOUTS[layout]
    for name, state in folders.items():
        shutil.copytree(run / "train_state" if str(state).startswith("3") else step2, folder / name)
        if str(state).endswith("without state.json"):
            without_state_json(folder / name)
    (folder / ".model.safetensors.1a2b3c.tmp").write_bytes(b"half a file")
    if (folder / "train_state").is_dir():
        (folder / "train_state" / ".state.json.4d5e6f.tmp").write_bytes(b"{")
    assert checkpoint.has_train_state(folder)
    trainer = Trainer(make_config(corpus, folder, {"training.max_steps": 5}), resume=True, show_progress=False)
    assert trainer.progress.step == expected_step
    assert trainer.train()["steps"] == 5
    assert sorted(path.name for path in folder.glob("train_state*")) == ["train_state"]
    assert not list(folder.rglob("*.tmp"))


def test_without_a_whole_state_a_fresh_start_is_allowed_and_a_resume_is_not(two_states, corpus, tmp_path):
    """A kill while the first save was writing train_state.new/ leaves no run: --resume says so, a start without it
    works (and removes the fragment)."""
    run, _ = two_states
    folder = tmp_path / "run"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("train_state"))
    without_state_json(shutil.copytree(run / "train_state", folder / "train_state.new"))
    assert not checkpoint.has_train_state(folder)
    with pytest.raises(CheckpointError, match="train without --resume first"):
        Trainer(make_config(corpus, folder), resume=True, show_progress=False)
    assert train(make_config(corpus, folder, {"training.max_steps": 1}), show_progress=False)["steps"] == 1
    assert sorted(path.name for path in folder.glob("train_state*")) == ["train_state"]


# ---- SIGTERM, Ctrl-C, and saves between validations --------------------------------------------------------------


class Terminated(Exception):
    """What the test's own SIGTERM handler raises: the handler training must call once it has saved."""


@pytest.fixture
def terminal_signals():
    """SIGTERM raises `Terminated`; SIGINT raises KeyboardInterrupt, as in a terminal (a shell's background job
    starts with SIGINT ignored, and training leaves an ignored signal alone)."""
    def handler(number, frame):
        raise Terminated
    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, previous_int)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_finishes_the_step_saves_and_the_run_resumes_exactly(corpus, tmp_path, monkeypatch, capsys,
                                                                            terminal_signals, family, number):
    """The signal comes during step 4 (no validation there): the step finishes, train_state/ holds step 4, the message
    says how to go on, and then the signal acts as it would have (SIGINT: KeyboardInterrupt; SIGTERM: its handler).
    Resumed to step 8, the run equals a straight one bit for bit (before: nothing was saved)."""
    overrides = {**FAMILIES[family], "training.max_steps": 8}
    straight = tmp_path / "straight"
    train(make_config(corpus, straight, overrides), show_progress=False)

    original = Trainer.train_step

    def train_step(self, *args, **kwargs):
        if self.progress.step == 3:
            os.kill(os.getpid(), number)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt if number == signal.SIGINT else Terminated):
        train(make_config(corpus, stopped, overrides), show_progress=False)
    assert state_json(stopped)["progress"]["step"] == 4
    name = signal.Signals(number).name
    assert f"stopped by {name} at step 4; resume with --resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are back
    monkeypatch.setattr(Trainer, "train_step", original)
    assert train(make_config(corpus, stopped, overrides), resume=True, show_progress=False)["steps"] == 8
    assert_same_state(straight, stopped)
    assert logged(straight) == logged(stopped)


def test_attnmt_train_saves_on_sigterm_and_exits_by_it(tiny_config_file, tmp_path):
    """`attnmt train` killed with SIGTERM (what `kill`, systemd, Slurm and Kubernetes send) saves the step it was in
    and ends by the signal (exit status 143 in a shell), with a message and no traceback."""
    path, data = tiny_config_file
    data["training"].update(max_steps=10 ** 6, validate_every=10 ** 6, save_every_minutes=1e-9)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    model_dir = tmp_path / "sigterm"
    process = subprocess.Popen([sys.executable, "-m", "attnmt", "train", str(path), "--model-dir", str(model_dir),
                                "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (model_dir / "train_state" / "state.json").is_file() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGTERM, err
    step = state_json(model_dir)["progress"]["step"]
    assert f"stopped by SIGTERM at step {step}; resume with --resume" in err
    assert "Traceback" not in err


def test_train_state_is_saved_every_few_minutes_between_validations_without_changing_the_run(corpus, tmp_path,
                                                                                              monkeypatch):
    """`save_every_minutes` (here: at once, every step) saves between validations; the run is the same as one that
    saves only at validations (and at its end)."""
    saved_at: list[int] = []
    original = checkpoint.save_train_state

    def recording(model_dir, model, optimizer, progress):
        saved_at.append(progress["progress"]["step"])
        original(model_dir, model, optimizer, progress)

    monkeypatch.setattr(checkpoint, "save_train_state", recording)
    train(make_config(corpus, tmp_path / "often", {"training.max_steps": 7, "training.save_every_minutes": 1e-9}),
          show_progress=False)
    assert saved_at == [1, 2, 3, 4, 5, 6, 7, 7]  # every step, and at the end
    saved_at.clear()
    train(make_config(corpus, tmp_path / "rarely", {"training.max_steps": 7}), show_progress=False)
    assert saved_at == [3, 6, 7]  # validations (every 3 steps) and the end
    assert_same_state(tmp_path / "often", tmp_path / "rarely")


# ---- the validation log --------------------------------------------------------------------------------------------


def test_validations_a_resumed_run_replays_are_logged_once(corpus, tmp_path):
    """A validation logged by a run killed before its state was saved (and a line the kill cut short) is replayed
    after --resume: the log holds each step once, as the straight run's does; resuming a finished run logs
    nothing again (before: both were logged twice)."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(make_config(corpus, straight, {"training.max_steps": 8}), show_progress=False)
    train(make_config(corpus, stopped, {"training.max_steps": 4}), show_progress=False)
    replayed = {**json.loads((straight / VALIDATION_LOG).read_text().splitlines()[1]), "dev_bleu": -1.0}
    assert replayed["step"] == 6
    with open(stopped / VALIDATION_LOG, "a", encoding="utf-8") as log:
        log.write(json.dumps(replayed) + '\n{"step": 7, "dev_lo')
    train(make_config(corpus, stopped, {"training.max_steps": 8}), resume=True, show_progress=False)
    assert [record["step"] for record in logged(stopped)] == [3, 4, 6, 8]
    assert logged(stopped)[2:] == logged(straight)[1:]
    before = (stopped / VALIDATION_LOG).read_bytes()
    train(make_config(corpus, stopped, {"training.max_steps": 8}), resume=True, show_progress=False)
    assert (stopped / VALIDATION_LOG).read_bytes() == before


# ---- a damaged training state --------------------------------------------------------------------------------------


def rewrite_json(change):
    def damage(path: Path) -> None:
        state = json.loads(path.read_text())
        change(state)
        path.write_text(json.dumps(state))
    return damage


def other_model_tensors(path: Path) -> None:
    config = parse_config({"data": {"train": {"tsv": "t"}, "split": {"dev_size": 1}}, "training": {"max_steps": 1},
                           "model": {"hidden_size": 16, "embedding_size": 8}})
    save_file(checkpoint.model_tensors(build_model(config.model, 16, 16)), str(path))


def shrunk_moments(path: Path) -> None:
    save_file({name: torch.zeros(1) if tensor.dim() else tensor for name, tensor in load_file(str(path)).items()},
              str(path))


def nan_weights(path: Path) -> None:
    save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in load_file(str(path)).items()},
              str(path))


DAMAGE = {
    "state.json: not JSON": ("state.json", lambda path: path.write_text("{not json")),
    "state.json: a list": ("state.json", lambda path: path.write_text("[1, 2]")),
    "state.json: no schedule": ("state.json", rewrite_json(lambda state: state.pop("schedule"))),
    "state.json: a step in words": ("state.json", rewrite_json(lambda state: state["progress"].update(step="three"))),
    "state.json: a broken optimizer": ("state.json", rewrite_json(lambda state: state.update(optimizer={"x": 1}))),
    "model: random bytes": ("model.safetensors", lambda path: path.write_bytes(os.urandom(300))),
    "model: truncated": ("model.safetensors", lambda path: path.write_bytes(path.read_bytes()[:500])),
    "model: another model's": ("model.safetensors", other_model_tensors),
    "model: NaN": ("model.safetensors", nan_weights),
    "optimizer: random bytes": ("optimizer.safetensors", lambda path: path.write_bytes(os.urandom(300))),
    "optimizer: moments of other shapes": ("optimizer.safetensors", shrunk_moments),
    "rng: random bytes": ("rng.safetensors", lambda path: path.write_bytes(b"\x08" + bytes(20))),
    "rng: no torch state": ("rng.safetensors", lambda path: save_file({"numpy": torch.zeros(3)}, str(path))),
    "rng: a float tensor": ("rng.safetensors", lambda path: save_file({"torch": torch.zeros(3)}, str(path))),
}


@pytest.fixture(scope="module")
def saved_run(corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("saved") / "run"
    train(make_config(corpus, run, {"training.max_steps": 2}), show_progress=False)
    return run


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_train_state_is_one_checkpoint_error_naming_the_file(saved_run, corpus, tmp_path, damage):
    """Whatever is wrong inside train_state/, --resume is a CheckpointError naming the file and what to do, and
    changes nothing (before: JSONDecodeError, KeyError, TypeError, SafetensorError, RuntimeError tracebacks)."""
    folder = shutil.copytree(saved_run, tmp_path / "run")
    name, spoil = DAMAGE[damage]
    spoil(folder / "train_state" / name)
    before = snapshot(folder)
    with pytest.raises(CheckpointError) as caught:
        Trainer(make_config(corpus, folder), resume=True, show_progress=False)
    message = str(caught.value)
    assert str(folder / "train_state" / name) in message and "cannot be resumed" in message and ADVICE in message
    assert snapshot(folder) == before


@pytest.mark.parametrize("name", checkpoint.TRAIN_STATE_FILES)
def test_a_missing_state_file_gets_the_same_advice_with_and_without_resume(saved_run, corpus, tmp_path, name):
    """train_state/ without one of its files: with --resume and without it, the message names the file and gives
    the same advice (before: 'start without --resume' and 'continue it with --resume', in a circle)."""
    folder = shutil.copytree(saved_run, tmp_path / "run")
    (folder / "train_state" / name).unlink()
    before = snapshot(folder)
    messages = []
    for resume in (True, False):
        with pytest.raises(CheckpointError) as caught:
            Trainer(make_config(corpus, folder), resume=resume, show_progress=False)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert f"{folder / 'train_state'} is incomplete ({name} missing)" in messages[0] and ADVICE in messages[0]
    assert snapshot(folder) == before


# ---- corpora -------------------------------------------------------------------------------------------------------


def corpus_config(tmp_path: Path, train_bytes: bytes, dev_bytes: bytes, **sections) -> Config:
    (tmp_path / "train.tsv").write_bytes(train_bytes)
    (tmp_path / "dev.tsv").write_bytes(dev_bytes)
    return make_config((tmp_path / "train.tsv", tmp_path / "dev.tsv"), tmp_path / "model", sections)


GOOD = "".join(f"{src}\t{tgt}\n" for src, tgt in reversal_pairs(30, seed=5)).encode()


@pytest.mark.parametrize("which", ["train", "dev"])
@pytest.mark.parametrize("content", [b"", b"\n \n\t\n\r\n", b" \t \n\t x\n"], ids=["empty", "blank", "one-sided"])
def test_a_corpus_without_a_pair_is_a_corpus_error_naming_it(tmp_path, which, content):
    """An empty or blank training or dev corpus stops at once with its name (before: `ValueError: not enough values
    to unpack`, for dev only after `validate_every` steps)."""
    config = corpus_config(tmp_path, content if which == "train" else GOOD, content if which == "dev" else GOOD)
    for attempt in (lambda: read_corpora(config), lambda: Trainer(config, show_progress=False)):
        with pytest.raises(CorpusError, match=f"the {which} corpus {tmp_path / (which + '.tsv')} holds no sentence"):
            attempt()
    assert not (tmp_path / "model").exists()


def test_two_empty_text_files_are_named_both(tmp_path):
    (tmp_path / "a.de").write_text("\n")
    (tmp_path / "a.en").write_text(" \n")
    config = make_config((tmp_path / "x", tmp_path / "y"), tmp_path / "model",
                         {"data.train": {"src": str(tmp_path / "a.de"), "tgt": str(tmp_path / "a.en")}})
    with pytest.raises(CorpusError, match=f"{tmp_path / 'a.de'} \\+ {tmp_path / 'a.en'} holds no sentence pair"):
        read_corpora(config)


def test_corpus_faults_are_errors_naming_file_and_line_or_read_as_meant(tmp_path):
    """NUL bytes (a binary file, UTF-16 text without a byte-order mark) and UTF-16 are errors naming the file (and
    the line); a UTF-8 byte-order mark and CRLF are removed; a huge line is read."""
    path = tmp_path / "corpus.tsv"
    path.write_bytes(b"a b\tb a\nc\x00d\td c\n")
    with pytest.raises(CorpusError, match=f"{path}, line 2: byte 1 of the line .* is a NUL byte"):
        read_lines(path)
    path.write_bytes("a b\tb a\n".encode("utf-16"))
    with pytest.raises(CorpusError, match=f"{path} starts with a UTF-16 byte-order mark"):
        read_lines(path)
    path.write_bytes("a b\tb a\n".encode("utf-16-le"))
    with pytest.raises(CorpusError, match="is a NUL byte: the file is binary, or UTF-16"):
        read_lines(path)
    path.write_bytes(b"\xef\xbb\xbfa b\tb a\r\nc\td\r\n" + b"x " * 500_000 + b"\ty\n")
    lines = read_lines(path)
    assert lines[:2] == ["a b\tb a", "c\td"] and len(lines[2]) == 1_000_002


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=corpus_fuzz.corpus_cases())
def test_no_corpus_file_gives_a_traceback(case):
    """Random bytes, mixed encodings, byte-order marks, CRLF, NUL bytes, huge lines, blank files: reading the corpora
    as `attnmt train` does gives pairs or an AttnmtError, never another exception."""
    outcome, detail = corpus_fuzz.read_once(case)
    assert outcome != corpus_fuzz.TRACEBACK, detail


# ---- numbers that are not finite -----------------------------------------------------------------------------------


REFUSED = {
    "training.learning_rate": [float("inf"), float("nan"), 0.0, 2.0],
    "training.max_minutes": [float("inf")],
    "training.clip_grad_norm": [float("inf"), 0.0],
    "training.label_smoothing": [1.0, float("nan")],
    "training.adam_betas": [[0.9, 1.0], [float("nan"), 0.9]],
    "training.weight_decay": [float("inf"), -0.1],
    "training.min_learning_rate": [0.01],  # above the learning rate (0.005)
    "training.seed": [-1],
    "training.save_every_minutes": [0.0, float("inf")],
    "training.max_nonfinite_steps": [0],
    "model.dropout": [1.0, float("nan")],
    "model.attention.temperature": [float("inf")],
    "search.length_penalty": [float("nan")],
    "search.max_length_ratio": [float("inf")],
}


@pytest.mark.parametrize("key,value", [(key, value) for key, values in REFUSED.items() for value in values])
def test_numbers_that_are_not_finite_or_absurd_are_refused_by_name(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"`{key}"):
        make_config((tmp_path / "t.tsv", tmp_path / "d.tsv"), tmp_path / "model",
                    {"model.attention": {"score": "additive"}, key: value})


def test_attnmt_train_refuses_an_infinite_learning_rate(tiny_config_file, capsys):
    """`--set training.learning_rate=.inf` (before: a run with a NaN loss that saved all-NaN weights and exited 0)."""
    path, _ = tiny_config_file
    assert main(["train", str(path), "--set", "training.learning_rate=.inf"]) == 2
    assert "`training.learning_rate`: Input should be a finite number" in capsys.readouterr().err


def parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_steps_with_a_loss_that_is_not_finite_are_skipped_and_too_many_stop_the_run(corpus, tmp_path, monkeypatch,
                                                                                   capsys, family):
    """The loss is NaN at step 3 and from step 6 on: step 3 updates nothing and training goes on; steps 6-8 make
    `max_nonfinite_steps` (3) in a row, and training stops with a DivergenceError whose last good state (step 4,
    the last validation) is on disk, finite (before: NaN weights saved as the best model, exit 0)."""
    poisoned = {3} | set(range(6, 100))
    original_loss, original_step = Trainer._loss, Trainer.train_step

    def loss(self, model, batch, label_smoothing):
        value = original_loss(self, model, batch, label_smoothing)
        return value * float("nan") if model.training and self.progress.step + 1 in poisoned else value

    after: dict[int, dict[str, torch.Tensor]] = {}

    def train_step(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        after[self.progress.step] = parameters(self)
        return result

    monkeypatch.setattr(Trainer, "_loss", loss)
    monkeypatch.setattr(Trainer, "train_step", train_step)
    folder = tmp_path / "run"
    trainer = Trainer(make_config(corpus, folder, {**FAMILIES[family], "training.max_steps": 50,
                                                   "training.validate_every": 4,
                                                   "training.max_nonfinite_steps": 3}), show_progress=False)
    with pytest.raises(DivergenceError, match=r"3 steps in a row \(steps 6 to 8\).*step 4\)"):
        trainer.train()
    assert all(torch.equal(after[3][name], after[2][name]) for name in after[2])  # step 3: no update
    assert not all(torch.equal(after[4][name], after[3][name]) for name in after[3])  # step 4: one
    assert all(torch.equal(parameters(trainer)[name], after[5][name]) for name in after[5])  # steps 6-8: none
    assert state_json(folder)["progress"]["step"] == 4
    for path in (folder / "model.safetensors", folder / "train_state" / "model.safetensors"):
        assert all(bool(torch.isfinite(tensor).all()) for tensor in load_file(str(path)).values())
    err = capsys.readouterr().err
    assert "step 3: loss nan" in err and "(no update; 1 in a row" in err and "(no update; 3 in a row" in err


@pytest.mark.parametrize("family", FAMILIES)
def test_parameters_that_are_not_finite_are_never_validated_or_saved(corpus, tmp_path, monkeypatch, family):
    """Parameters gone NaN after step 2 (however they got there): the validation at step 2 refuses them with a
    DivergenceError; what step 1 saved stays, finite."""
    original = Trainer.train_step

    def train_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.progress.step == 2:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)
    folder = tmp_path / "run"
    with pytest.raises(DivergenceError, match="not finite at step 2; nothing of this step was saved"):
        train(make_config(corpus, folder, {**FAMILIES[family], "training.validate_every": 1}), show_progress=False)
    assert state_json(folder)["progress"]["step"] == 1
    assert len(logged(folder)) == 1
    for path in (folder / "model.safetensors", folder / "train_state" / "model.safetensors"):
        assert all(bool(torch.isfinite(tensor).all()) for tensor in load_file(str(path)).values())


# ---- kills at random instants and inside saves (benchmarks/reliability/kills.py, small) ----------------------------


def test_a_run_killed_three_times_inside_its_saves_finishes_as_the_straight_run():
    """Three SIGKILLs landed by the test hook inside save_train_state (after the new folder is written, after the first
    rename, after the second rename): each resumed, the run ends bit for bit as an uninterrupted one, every state a
    kill left loads, and nothing is left over (before: the resume after the third died with Errno 39)."""
    result = kills.run(3)
    assert result["kills"] == 3 and result["finished"] and result["unloadable"] == 0, result
    assert result["bit_identical"] and result["validations_logged_once"] and not result["leftovers"], result
