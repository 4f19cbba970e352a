"""A model directory proves itself, and no traceback reaches a user.

Each tampering is applied to a copy of a trained model directory of each family (`family_model`): with its
manifest.json it is a mismatch naming the file; without one (a model from before manifests) the checks behind it
(readable safetensors, no pickle, known tensors of the right shapes, finite weights, a UTF-8 config) still name the
file. Every entry point (the Python API, translate, evaluate, serve, verify) gives one line and exit status 2. Disk
full and permission errors name the file and leave what was written; anything unexpected is one line and a log file.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import shutil
import stat
import sys

import pytest
import torch
import uvicorn
from safetensors.torch import load

from attnmt import checkpoint, manifest
from attnmt.cli import main
from attnmt.config import TokenizerConfig
from attnmt.data import Tokenizer
from attnmt.errors import AttnmtError, CheckpointError, StorageError
from attnmt.translator import Translator

from conftest import random_sentences

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "reliability"))
import tamper  # noqa: E402  (the tamperings the reliability suite counts)


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, command: str, *fragments: str) -> None:
    """Exit status 2 and one line on stderr (after the warning of a directory without manifest), no traceback."""
    lines = [line for line in err.splitlines() if not line.startswith("attnmt: warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"attnmt {command}: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def copy_model(trained, tmp_path) -> pathlib.Path:
    """A copy of a trained model directory, without its training state and logs."""
    return shutil.copytree(trained.model_dir, tmp_path / "model",
                           ignore=shutil.ignore_patterns(checkpoint.TRAIN_STATE, "tensorboard", "validations.jsonl"))


def tokenizer_file(model_dir) -> str:
    return Tokenizer.load(model_dir).files[0]


@pytest.fixture(scope="session")
def other_tokenizer(tmp_path_factory) -> pathlib.Path:
    """A sentencepiece model of another vocabulary of the same size as the tiny models'."""
    return tamper.other_tokenizer(tmp_path_factory.mktemp("other_tokenizer"))


TAMPERINGS = tamper.TAMPERINGS  # name → what it does, the file it names, what it says once there is no manifest
WITHOUT_MANIFEST = [name for name, tampering in TAMPERINGS.items() if tampering.without_manifest]


def entry_points(capsys, monkeypatch, model_dir, tmp_path) -> dict[str, tuple[int, str]]:
    """Exit status and stderr of each command that loads the model."""
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("a tampered model was served"))
    (tmp_path / "src.txt").write_text("a b c\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("c b a\n", encoding="utf-8")
    results = {}
    for command, *rest in (["translate"], ["evaluate", "--src", tmp_path / "src.txt", "--ref", tmp_path / "ref.txt"],
                           ["serve", "--port", "0"], ["verify"]):
        monkeypatch.setattr("sys.stdin", io.StringIO("a b c\n"))
        code, out, err = run(capsys, command, model_dir, *rest)
        results[command] = (code, err)
    return results


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_tampered_model_directory_is_refused_naming_the_file(capsys, monkeypatch, tmp_path, family_model,
                                                                other_tokenizer, tampering):
    name = TAMPERINGS[tampering].file
    model_dir = copy_model(family_model, tmp_path)
    Translator.load(model_dir, device="cpu")  # the copy is sound
    TAMPERINGS[tampering].apply(model_dir, other_tokenizer)
    with pytest.raises(CheckpointError, match=str(model_dir / name)):
        Translator.load(model_dir, device="cpu")
    for command, (code, err) in entry_points(capsys, monkeypatch, model_dir, tmp_path).items():
        if command == "verify":
            assert_one_line_error(code, err, command, name, manifest.MANIFEST_FILE)
        else:
            assert_one_line_error(code, err, command, str(model_dir / name), "the manifest")
    code, out, _ = run(capsys, "verify", model_dir)
    assert f"MISMATCH  {name}" in out and out.count("MISMATCH") == 1


@pytest.mark.parametrize("tampering", WITHOUT_MANIFEST)
def test_without_manifest_the_checks_behind_it_still_name_the_file(capsys, monkeypatch, tmp_path, family_model,
                                                                   tampering):
    name, fragment = TAMPERINGS[tampering].file, TAMPERINGS[tampering].without_manifest
    model_dir = copy_model(family_model, tmp_path)
    (model_dir / manifest.MANIFEST_FILE).unlink()
    TAMPERINGS[tampering].apply(model_dir, None)
    with pytest.raises(AttnmtError, match=fragment):
        Translator.load(model_dir, device="cpu")
    capsys.readouterr()
    for command, (code, err) in entry_points(capsys, monkeypatch, model_dir, tmp_path).items():
        if command != "verify":
            assert_one_line_error(code, err, command, str(model_dir), name, fragment)
    code, _, err = run(capsys, "verify", "--write", model_dir)  # a manifest is written only for files that load
    assert_one_line_error(code, err, "verify", str(model_dir), name, fragment)
    assert not (model_dir / manifest.MANIFEST_FILE).exists()


def test_nan_weights_are_refused_naming_the_tensor(tmp_path, family_model):
    model_dir = copy_model(family_model, tmp_path)
    tensors = load((model_dir / checkpoint.MODEL_FILE).read_bytes())
    name = sorted(tensors)[-1]
    tensors[name].view(-1)[-1] = float("inf")
    with pytest.raises(CheckpointError, match=f"tensor {name} holds 1 non-finite"):
        checkpoint.check_finite(model_dir / checkpoint.MODEL_FILE, tensors)


# ---- the manifest -------------------------------------------------------------------------------------------------

def test_training_writes_a_manifest_of_the_model_files(family_model):
    model_dir = family_model.model_dir
    listed = manifest.read(model_dir)
    assert set(listed) == {checkpoint.CONFIG_FILE, checkpoint.MODEL_FILE, tokenizer_file(model_dir),
                           checkpoint.EXAMPLES_FILE}  # not train_state/, not validations.jsonl
    for name, entry in listed.items():
        assert entry == manifest.fingerprint(model_dir / name)
    assert all(check.problem is None for check in manifest.verify(model_dir))


def test_the_manifest_lists_the_tokenizer_as_soon_as_it_is_written(tiny_config, tmp_path):
    from attnmt.training import Trainer

    Trainer(tiny_config(tmp_path / "fresh"), show_progress=False)  # tokenizer, config and examples; no weights yet
    assert set(manifest.read(tmp_path / "fresh")) == {"config.yaml", "spm.model", "examples.txt"}


def test_verify_prints_each_file_and_exits_0(capsys, family_model):
    code, out, err = run(capsys, "verify", family_model.model_dir)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:4] == [f"OK        {name}" for name in ("config.yaml", "model.safetensors",
                                                          tokenizer_file(family_model.model_dir), "examples.txt")]
    assert lines[4].startswith("OK        the model loads: ")


def test_a_model_without_manifest_loads_with_a_warning_until_one_is_written(capsys, monkeypatch, tmp_path,
                                                                            family_model):
    model_dir = copy_model(family_model, tmp_path)
    (model_dir / manifest.MANIFEST_FILE).unlink()
    monkeypatch.setattr("sys.stdin", io.StringIO("a b c\n"))
    code, out, err = run(capsys, "translate", model_dir)
    assert code == 0 and out.strip()
    assert err.count("\n") == 1 and err.startswith("attnmt: warning: ")
    assert f"attnmt verify --write {model_dir}" in err
    code, out, err = run(capsys, "verify", model_dir)
    assert_one_line_error(code, err, "verify", "no manifest.json", "--write")
    code, out, _ = run(capsys, "verify", "--write", model_dir)
    assert code == 0 and "wrote" in out
    assert manifest.read(model_dir) == manifest.read(family_model.model_dir)  # the same files, the same manifest
    monkeypatch.setattr("sys.stdin", io.StringIO("a b c\n"))
    code, _, err = run(capsys, "translate", model_dir)
    assert code == 0 and err == ""


@pytest.mark.parametrize("change", ["removed", "added", "damaged_manifest"])
def test_files_removed_or_added_and_a_damaged_manifest_are_refused(capsys, tmp_path, reversal_model, change):
    model_dir = copy_model(reversal_model, tmp_path)
    if change == "removed":
        (model_dir / "examples.txt").unlink()
        named, says = "examples.txt", "is missing"
    elif change == "added":  # a joint model loads spm.model first: src/tgt models beside it are not the model's
        shutil.copy(model_dir / "spm.model", model_dir / "src.model")
        named, says = "src.model", "not in the manifest"
    else:
        (model_dir / manifest.MANIFEST_FILE).write_text('{"format": 1, "files": {"../x": {}}}', encoding="utf-8")
        named, says = manifest.MANIFEST_FILE, "not a manifest"
    (tmp_path / "text.txt").write_text("a b c\n", encoding="utf-8")
    code, _, err = run(capsys, "evaluate", model_dir, "--src", tmp_path / "text.txt", "--ref", tmp_path / "text.txt")
    assert_one_line_error(code, err, "evaluate", str(model_dir / named), says)


# ---- files on disk: permissions, full disks, unreadable and unwritable paths --------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_honour_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        checkpoint.write_text(tmp_path / "config.yaml", "name: x\n")
        checkpoint.save_tensors(tmp_path / "model.safetensors", {"w": torch.ones(2)})
    finally:
        os.umask(previous)
    for name in ("config.yaml", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def no_space_left(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_saving_leaves_the_previous_model_and_says_so(monkeypatch, tmp_path, family_model):
    model_dir = copy_model(family_model, tmp_path)
    before = (model_dir / checkpoint.MODEL_FILE).read_bytes()
    monkeypatch.setattr(os, "fsync", no_space_left)
    with pytest.raises(StorageError, match=f"cannot write {model_dir / checkpoint.MODEL_FILE}: No space left on "
                                           f"device; free some space"):
        checkpoint.save_model(model_dir / checkpoint.MODEL_FILE, family_model.trainer.model)
    monkeypatch.undo()
    assert (model_dir / checkpoint.MODEL_FILE).read_bytes() == before
    assert not list(model_dir.glob(".*.tmp"))
    assert all(check.problem is None for check in manifest.verify(model_dir))


def test_a_full_disk_while_training_is_one_message(capsys, monkeypatch, tiny_config_file, tmp_path):
    config, _ = tiny_config_file
    monkeypatch.setattr(os, "fsync", no_space_left)
    code, _, err = run(capsys, "train", config, "--model-dir", tmp_path / "full", "--quiet")
    assert_one_line_error(code, err, "train", str(tmp_path / "full" / "spm.model"), "No space left on device")


def test_a_full_disk_while_writing_the_tokenizer_is_not_reported_as_a_bad_model(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "fsync", no_space_left)
    sentences = random_sentences(50, seed=1)
    with pytest.raises(StorageError, match="spm.model: No space left on device"):
        Tokenizer.train(TokenizerConfig(vocab_size=16, model_type="word"), sentences, sentences, tmp_path)


def refuse(path: pathlib.Path, error_number: int):
    """Make opening or creating `path` fail as the system would for a user without the permission."""
    original_open, original_mkdir = pathlib.Path.open, pathlib.Path.mkdir

    def check(self):
        if self == path:
            raise OSError(error_number, os.strerror(error_number), str(self))

    def guarded_open(self, *args, **kwargs):
        check(self)
        return original_open(self, *args, **kwargs)

    def guarded_mkdir(self, *args, **kwargs):
        check(self)
        return original_mkdir(self, *args, **kwargs)

    return guarded_open, guarded_mkdir


def test_an_unreadable_input_file_is_one_message(capsys, monkeypatch, tmp_path, reversal_model):
    path = tmp_path / "input.txt"
    path.write_text("a b c\n", encoding="utf-8")
    guarded_open, _ = refuse(path, errno.EACCES)
    monkeypatch.setattr(pathlib.Path, "open", guarded_open)
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--input", path)
    assert_one_line_error(code, err, "translate", str(path), "Permission denied", "permissions")
    assert out == ""


def test_an_unwritable_model_directory_is_one_message(capsys, monkeypatch, tiny_config_file, tmp_path):
    config, _ = tiny_config_file
    _, guarded_mkdir = refuse(tmp_path / "locked", errno.EACCES)
    monkeypatch.setattr(pathlib.Path, "mkdir", guarded_mkdir)
    code, _, err = run(capsys, "train", config, "--model-dir", tmp_path / "locked", "--quiet")
    assert_one_line_error(code, err, "train", str(tmp_path / "locked"), "Permission denied")


# ---- standard input and the last line of defence -------------------------------------------------------------------

@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])  # a UTF-8 locale's stdin, and a C locale's
def test_invalid_utf8_on_stdin_is_one_message(capsys, monkeypatch, reversal_model, errors):
    stdin = io.TextIOWrapper(io.BytesIO(b"a b c\nd \xe9 f\n"), encoding="utf-8", errors=errors)
    monkeypatch.setattr("sys.stdin", stdin)
    code, out, err = run(capsys, "translate", reversal_model.model_dir)
    assert_one_line_error(code, err, "translate", "standard input is not UTF-8", "--input")
    assert out == ""


def test_an_unexpected_exception_is_one_line_and_a_log_file(capsys, monkeypatch, tmp_path, reversal_model):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("something\nunforeseen")

    monkeypatch.setattr(Translator, "load", broken)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    code, out, err = run(capsys, "translate", reversal_model.model_dir)
    assert code == 1 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("attnmt translate: internal error ") and "ZeroDivisionError: something unforeseen" in err
    logs = list((tmp_path / "state" / "attnmt" / "errors").glob("*.log"))
    assert len(logs) == 1 and f"the full traceback is in {logs[0]}" in err
    assert logs[0].stem in err
    report = logs[0].read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in report and "in broken" in report and "translate" in report


def test_the_error_log_falls_back_to_the_temporary_folder(capsys, monkeypatch, tmp_path, reversal_model):
    monkeypatch.setattr(Translator, "load", lambda *a, **k: json.loads("{"))
    (tmp_path / "a_file").write_text("", encoding="utf-8")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "a_file"))  # no folder can be made under a file
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    code, _, err = run(capsys, "translate", reversal_model.model_dir)
    logs = list((tmp_path / "tmp" / "attnmt-errors").glob("*.log"))
    assert code == 1 and len(logs) == 1 and str(logs[0]) in err and "JSONDecodeError" in err
