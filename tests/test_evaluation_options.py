"""Evaluation conventions, for both model families: BLEU's tokenizer chosen by the target language (one rule, used by
validation, `attnmt evaluate` and the test scoring at the end of training) or by `--tokenize`, `--tsv` input, and the
search settings printed and stored with every score."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from sacrebleu.metrics import BLEU

import attnmt.evaluation as evaluation
from attnmt import checkpoint, manifest
from attnmt.cli import main
from attnmt.config import parse_config
from attnmt.evaluation import TOKENIZERS, corpus_scores, default_tokenizer, format_search
from attnmt.training import Trainer
from conftest import reverse, tiny_config_dict


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def eval_files(tmp_path, family_model):
    sources = [src for src, _ in family_model.test_pairs[:12]]
    src, ref, tsv = tmp_path / "test.src", tmp_path / "test.ref", tmp_path / "test.tsv"
    src.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    ref.write_text("".join(reverse(s) + "\n" for s in sources), encoding="utf-8")
    tsv.write_text("".join(f"{s}\t{reverse(s)}\n" for s in sources), encoding="utf-8")
    return sources, src, ref, tsv


# ---- the rule ---------------------------------------------------------------------------------------------------


def test_the_tokenizer_follows_the_target_language(monkeypatch):
    for language in ("en", "de", "fr", "tgt", "EN-us"):
        assert default_tokenizer(language) == "13a"  # English and the rest: the WMT standard, as before
    assert default_tokenizer("zh") == default_tokenizer("zh-Hans") == default_tokenizer("zho") == "zh"
    monkeypatch.setattr(evaluation, "tokenizer_usable", lambda name: name not in ("ja-mecab", "ko-mecab"))
    assert (default_tokenizer("ja"), default_tokenizer("ko")) == ("char", "13a")  # without MeCab
    monkeypatch.setattr(evaluation, "tokenizer_usable", lambda name: True)
    assert (default_tokenizer("ja"), default_tokenizer("ko_KR")) == ("ja-mecab", "ko-mecab")  # with it


def test_validation_scores_with_the_target_languages_tokenizer(tiny_corpus, tmp_path):
    train, dev = tiny_corpus
    config = parse_config(tiny_config_dict(train, dev, tmp_path / "model", {"data.tgt_lang": "zh",
                                                                             "training.max_steps": 1}))
    trainer = Trainer(config, show_progress=False)
    assert trainer.bleu_tokenizer == "zh"
    assert "tok:zh" in trainer.dev_scores()["bleu_signature"]


# ---- attnmt evaluate --------------------------------------------------------------------------------------------


def test_evaluate_with_a_chosen_tokenizer_scores_as_sacrebleu_does(capsys, tmp_path, family_model, eval_files):
    sources, src, ref, _ = eval_files
    output = tmp_path / "hypotheses.txt"
    code, out, err = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--beam-size", 1,
                         "--tokenize", "char", "--json", "--output", output)
    assert code == 0, err
    report = json.loads(out)
    hypotheses = output.read_text(encoding="utf-8").splitlines()
    expected = BLEU(tokenize="char").corpus_score(hypotheses, [[reverse(s) for s in sources]]).score
    assert report["tokenize"] == "char" and "tok:char" in report["bleu_signature"]
    assert report["bleu"] == pytest.approx(expected)
    assert report["bleu_by_length"][0]["bleu"] == pytest.approx(expected)  # one bucket: the same tokenizer
    code, out, _ = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--beam-size", 1,
                       "--json")
    default = json.loads(out)
    assert default["tokenize"] == "13a" and "tok:13a" in default["bleu_signature"]  # tgt_lang "tgt": 13a
    assert default["bleu"] == pytest.approx(corpus_scores(hypotheses, [reverse(s) for s in sources])["bleu"])


def test_evaluate_prints_and_stores_the_search_settings(capsys, family_model, eval_files):
    _, src, ref, _ = eval_files
    code, out, _ = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--beam-size", 2,
                       "--length-penalty", 0.5, "--json")
    assert code == 0
    search = json.loads(out)["search"]
    assert (search["beam_size"], search["length_penalty"], search["max_length_ratio"]) == (2, 0.5, 2.0)
    assert "batch_size" not in search and "n_best" not in search  # they do not change the translation
    code, out, _ = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--beam-size", 2,
                       "--length-penalty", 0.5)
    assert code == 0
    assert format_search(search) in out.splitlines()
    assert "search: beam_size 2, length_penalty 0.5, max_length_ratio 2.0" in out


def test_evaluate_reads_a_tsv_as_src_and_ref(capsys, family_model, eval_files):
    _, src, ref, tsv = eval_files
    code, from_files, _ = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--json")
    assert code == 0
    code, from_tsv, err = run(capsys, "evaluate", family_model.model_dir, "--tsv", tsv, "--json")
    assert code == 0, err
    assert json.loads(from_tsv) == json.loads(from_files)


def test_evaluate_option_errors_say_what_to_do(capsys, monkeypatch, family_model, eval_files):
    _, src, ref, tsv = eval_files
    code, _, err = run(capsys, "evaluate", family_model.model_dir, "--tsv", tsv, "--src", src)
    assert code == 2 and "either --tsv FILE" in err
    code, _, err = run(capsys, "evaluate", family_model.model_dir, "--src", src)
    assert code == 2 and "--src FILE --ref FILE" in err and "--tsv FILE" in err
    monkeypatch.setattr(evaluation, "tokenizer_usable", lambda name: name != "ko-mecab")
    code, _, err = run(capsys, "evaluate", family_model.model_dir, "--tsv", tsv, "--tokenize", "ko-mecab")
    assert code == 2 and "pip install 'sacrebleu[ko]'" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # argparse lists the choices
        main(["evaluate", str(family_model.model_dir), "--tsv", str(tsv), "--tokenize", "spm"])
    assert "choose from" in capsys.readouterr().err and set(TOKENIZERS) >= {"13a", "intl", "char", "zh", "none"}


def test_evaluate_defaults_to_the_models_target_language(capsys, tmp_path, family_model, eval_files):
    """A model whose data.tgt_lang is zh is scored with sacreBLEU's zh tokenizer unless --tokenize says otherwise."""
    _, src, ref, _ = eval_files
    model_dir = tmp_path / "zh_model"
    shutil.copytree(family_model.model_dir, model_dir, ignore=shutil.ignore_patterns("train_state", "checkpoints"))
    config = yaml.safe_load((model_dir / checkpoint.CONFIG_FILE).read_text(encoding="utf-8"))
    config["data"]["tgt_lang"] = "zh"
    (model_dir / checkpoint.CONFIG_FILE).write_text(yaml.safe_dump(config), encoding="utf-8")
    manifest.write(model_dir)
    code, out, err = run(capsys, "evaluate", model_dir, "--src", src, "--ref", ref, "--json", "--beam-size", 1)
    assert code == 0, err
    assert json.loads(out)["tokenize"] == "zh" and "tok:zh" in json.loads(out)["bleu_signature"]
    code, out, _ = run(capsys, "evaluate", model_dir, "--src", src, "--ref", ref, "--json", "--beam-size", 1,
                       "--tokenize", "13a")
    assert "tok:13a" in json.loads(out)["bleu_signature"]
