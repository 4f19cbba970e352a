"""Tests of the `attnmt` command, run in-process through `attnmt.cli.main(argv)`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from attnmt.cli import main
from attnmt.evaluation import corpus_scores

from conftest import random_sentences, reverse


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_user_error(code: int, err: str, command: str, *fragments: str) -> None:
    assert code == 2
    assert err.startswith(f"attnmt {command}: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


# ---- train -------------------------------------------------------------------------------------------------------------


def test_train_resume_and_refuse_to_overwrite(capsys, tiny_config_file, tmp_path):
    config, _ = tiny_config_file
    model_dir = tmp_path / "trained"
    code, out, _ = run(capsys, "train", config, "--model-dir", model_dir, "--quiet",
                       "--set", "training.max_steps=2", "--set", "model.cell=lstm")
    assert code == 0
    assert "trained 2 steps" in out and str(model_dir) in out
    saved = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert saved["model"]["cell"] == "lstm" and saved["training"]["max_steps"] == 2
    assert json.loads((model_dir / "train_state" / "state.json").read_text())["progress"]["step"] == 2

    code, out, _ = run(capsys, "train", config, "--model-dir", model_dir, "--quiet", "--resume",
                       "--set", "training.max_steps=4", "--set", "model.cell=lstm")
    assert code == 0 and "trained 4 steps" in out
    assert json.loads((model_dir / "train_state" / "state.json").read_text())["progress"]["step"] == 4

    before = snapshot(model_dir)
    code, _, err = run(capsys, "train", config, "--model-dir", model_dir, "--quiet")
    assert_user_error(code, err, "train", str(model_dir), "--resume")
    assert snapshot(model_dir) == before


def test_train_uses_model_dir_of_the_config_and_attention_refuses_a_model_without_attention(capsys,
                                                                                              tiny_config_file):
    config, data = tiny_config_file
    code, _, _ = run(capsys, "train", config, "--quiet", "--set", "training.max_steps=1",
                     "--set", "model.attention=none")
    assert code == 0
    model_dir = Path(data["model_dir"])
    assert (model_dir / "model.safetensors").is_file()
    code, _, err = run(capsys, "attention", model_dir, "a b c")
    assert_user_error(code, err, "attention", "attention: none")


def test_train_refuses_to_resume_without_saved_state(capsys, tiny_config_file, tmp_path):
    config, _ = tiny_config_file
    code, _, err = run(capsys, "train", config, "--model-dir", tmp_path / "fresh", "--resume", "--quiet")
    assert_user_error(code, err, "train", "train_state", "--resume")


# ---- translate, evaluate, attention with the trained reversal model ---------------------------------------------------


@pytest.fixture(scope="module")
def lines(reversal_model) -> list[str]:
    held_out = [src for src, _ in reversal_model.test_pairs[:12]]
    return held_out[:5] + [""] + held_out[5:] + ["   "]


def test_translate_stdin_one_line_per_line(capsys, monkeypatch, reversal_model, reversal_translator, lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--beam-size", "1")
    assert code == 0, err
    outputs = out.split("\n")
    assert outputs[-1] == "" and len(outputs[:-1]) == len(lines)
    expected = [t.text for t in reversal_translator.translate(lines, beam_size=1)]
    assert outputs[:-1] == expected
    assert outputs[5] == "" and outputs[-2] == ""  # empty and blank input lines
    assert sum(o == reverse(line) for o, line in zip(outputs, lines) if line.strip()) >= len(lines) - 3


def test_translate_input_file_with_default_beam(capsys, tmp_path, reversal_model, reversal_translator, lines):
    path = tmp_path / "input.txt"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))  # BOM and CRLF line ends
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--input", path)
    assert code == 0, err
    default_beam = reversal_translator.config.search.beam_size
    assert default_beam > 1
    assert out.split("\n")[:-1] == [t.text for t in reversal_translator.translate(lines, beam_size=default_beam)]


def test_translate_n_best(capsys, tmp_path, reversal_model, lines):
    path = tmp_path / "input.txt"
    path.write_text("\n".join(lines[:4]) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "translate", reversal_model.model_dir, "--input", path, "--beam-size", "4",
                       "--n-best", "3")
    assert code == 0
    rows = out.splitlines()
    assert len(rows) == 4 * 3
    for start in range(0, len(rows), 3):
        group = [row.split("\t") for row in rows[start:start + 3]]  # index, rank, score, logprob, text
        assert [(int(index), int(rank)) for index, rank, *_ in group] == [(start // 3, 1), (start // 3, 2),
                                                                         (start // 3, 3)]
        scores = [float(score) for _, _, score, _, _ in group]
        assert scores == sorted(scores, reverse=True) and all(score <= 0 for score in scores)
        assert len({text for *_, text in group}) == 3


@pytest.fixture
def eval_files(tmp_path, reversal_model):
    sources = [src for src, _ in reversal_model.test_pairs[:30]] + random_sentences(6, seed=31, min_length=11,
                                                                                   max_length=13)
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    ref.write_text("".join(reverse(s) + "\n" for s in sources), encoding="utf-8")
    return sources, src, ref


def test_evaluate_text_and_json(capsys, tmp_path, reversal_model, reversal_translator, eval_files):
    sources, src, ref = eval_files
    code, out, _ = run(capsys, "evaluate", reversal_model.model_dir, "--src", src, "--ref", ref, "--beam-size", "1")
    assert code == 0
    assert "BLEU =" in out and "chrF =" in out and "BLEU by source length (words)" in out
    assert "0-10" in out and "10-20" in out

    output = tmp_path / "hypotheses.txt"
    code, out, _ = run(capsys, "evaluate", reversal_model.model_dir, "--src", src, "--ref", ref, "--beam-size", "1",
                       "--json", "--output", output)
    assert code == 0
    report = json.loads(out)
    hypotheses = [t.text for t in reversal_translator.translate(sources, beam_size=1)]
    assert output.read_text(encoding="utf-8").splitlines() == hypotheses
    expected = corpus_scores(hypotheses, [reverse(s) for s in sources])
    assert report["bleu"] == pytest.approx(expected["bleu"])
    assert report["chrf"] == pytest.approx(expected["chrf"])
    assert report["sentences"] == len(sources)
    assert report["length_unit"] == "words"
    buckets = report["bleu_by_length"]
    assert [b["bucket"] for b in buckets] == ["0-10", "10-20"]
    assert [b["sentences"] for b in buckets] == [30, 6]
    assert buckets[0]["bleu"] > buckets[1]["bleu"]  # the long inputs were never seen in training


def test_attention_writes_png(capsys, tmp_path, reversal_model, reversal_translator):
    path = tmp_path / "heat" / "map.png"
    sentence = reversal_model.test_pairs[0][0]
    code, out, err = run(capsys, "attention", reversal_model.model_dir, sentence, "-o", path)
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reversal_translator.translate([sentence], beam_size=1)[0].text in out
    assert str(path) in out


# ---- errors users cause ------------------------------------------------------------------------------------------------


def test_unknown_config_key_names_the_key(capsys, tiny_config_file):
    config, data = tiny_config_file
    code, _, err = run(capsys, "train", config, "--set", "model.hidden_sise=3")
    assert_user_error(code, err, "train", "model.hidden_sise", "unknown key")
    assert not Path(data["model_dir"]).exists()


def test_bad_literal_names_the_allowed_values(capsys, tiny_config_file):
    config, _ = tiny_config_file
    code, _, err = run(capsys, "train", config, "--set", "model.cell=transformer")
    assert_user_error(code, err, "train", "model.cell", "transformer", "'rnn'", "'lstm'", "'gru'")


def test_override_inside_a_shorthand_is_a_user_error(capsys, tiny_config_file):
    config, _ = tiny_config_file  # it says `attention: additive`
    code, _, err = run(capsys, "train", config, "--set", "model.attention.hidden_size=8")
    assert_user_error(code, err, "train", "model.attention")


def test_set_without_value_is_a_user_error(capsys, tiny_config_file):
    config, _ = tiny_config_file
    code, _, err = run(capsys, "train", config, "--set", "training.max_steps")
    assert_user_error(code, err, "train", "KEY=VALUE")


def test_inconsistent_sizes_are_a_user_error(capsys, tiny_config_file, tmp_path):
    config, _ = tiny_config_file  # bidirectional encoder of 2 × 8 against a decoder of 32: `add` cannot sum them
    code, _, err = run(capsys, "train", config, "--model-dir", tmp_path / "m", "--quiet",
                       "--set", "model.encoder_hidden_size=8", "--set", "model.combine=add")
    assert_user_error(code, err, "train", "model.combine")


def test_missing_config_file(capsys, tmp_path):
    code, _, err = run(capsys, "train", tmp_path / "absent.yaml")
    assert_user_error(code, err, "train", "absent.yaml", "does not exist")


@pytest.mark.parametrize("command", [["translate"], ["evaluate", "--src", "x", "--ref", "y"], ["attention", "a"]])
def test_missing_model_dir(capsys, tmp_path, monkeypatch, command):
    name, *rest = command
    monkeypatch.chdir(tmp_path)
    for text_file in ("x", "y"):
        Path(text_file).write_text("a b\n", encoding="utf-8")
    missing = tmp_path / "no_such_model"
    code, _, err = run(capsys, name, missing, *rest)
    assert_user_error(code, err, name, "no_such_model")


def test_input_file_with_invalid_utf8_names_file_and_line(capsys, tmp_path, reversal_model):
    path = tmp_path / "latin1.txt"
    path.write_bytes("a b c\nd \xe9 f\n".encode("latin-1"))
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--input", path)
    assert_user_error(code, err, "translate", str(path), "line 2", "UTF-8")
    assert out == ""


def test_src_and_ref_with_different_line_counts(capsys, tmp_path, reversal_model):
    src, ref = tmp_path / "three.src", tmp_path / "two.ref"
    src.write_text("a b\nc d\ne f\n", encoding="utf-8")
    ref.write_text("b a\nd c\n", encoding="utf-8")
    code, _, err = run(capsys, "evaluate", reversal_model.model_dir, "--src", src, "--ref", ref)
    assert_user_error(code, err, "evaluate", str(src), str(ref), "3 lines", "2 lines")


def test_attention_of_an_empty_sentence_is_a_user_error(capsys, tmp_path, reversal_model):
    code, _, err = run(capsys, "attention", reversal_model.model_dir, "  ", "-o", tmp_path / "empty.png")
    assert_user_error(code, err, "attention", "empty")
    assert not (tmp_path / "empty.png").exists()


@pytest.mark.parametrize("option", [["--beam-size", "-1"], ["--batch-size", "-2"], ["--n-best", "-1"],
                                    ["--max-length-ratio", "-1"]])
def test_impossible_search_options_are_user_errors(capsys, monkeypatch, reversal_model, option):
    monkeypatch.setattr("sys.stdin", io.StringIO("a b c\n"))
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--beam-size", "3", *option)
    assert_user_error(code, err, "translate", option[0][2:].replace("-", "_"))
    assert out == ""
