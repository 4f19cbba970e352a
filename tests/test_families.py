"""Every user-facing path, once for each model family: the tiny RNN (`reversal_model`) and the tiny Transformer
(`transformer_model`) of conftest.py go through the same calls, which know nothing of the family but what the model
describes (`Translator.describe()`): the Python API, `attnmt translate`, `evaluate`, `attention`, `serve` and a
study cell. The page in a browser, for both families: tests/test_browser.py.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import yaml

from attnmt import checkpoint
from attnmt.cli import main
from attnmt.errors import AttnmtError, ConfigError
from attnmt.evaluation import corpus_scores
from attnmt.models import FAMILIES, Seq2SeqModel
from attnmt.serve import ServeSettings, create_app
from attnmt.study import run_study
from attnmt.translator import Translator

from conftest import TINY_TRANSFORMER, reverse, tiny_config_dict

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PNG = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def held_out(model, count: int = 8) -> list[str]:
    return [src for src, _ in model.test_pairs[:count]]


def check_layout(translation, layout) -> None:
    """attention_heads [L, H, T + 1, S] as the model describes itself; attention is the last layer's mean, rows sum
    to 1."""
    rows, columns = len(translation.tokens) + 1, len(translation.source_tokens)
    assert translation.attention_heads.shape == (layout.attention_layers, layout.attention_heads, rows, columns)
    np.testing.assert_allclose(translation.attention, translation.attention_heads[-1].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(translation.attention.sum(axis=1), 1.0, atol=1e-4)


# ---- the Python API -------------------------------------------------------------------------------------------------

def test_the_model_keeps_the_contract_and_describes_itself(family_model):
    translator = family_model.translator()
    assert isinstance(translator.model, Seq2SeqModel)
    layout = translator.describe()
    assert layout.family == translator.config.model.type and FAMILIES[layout.family] is type(translator.model)
    assert layout.parameters == sum(p.numel() for p in translator.model.parameters())
    assert layout.has_attention and layout.attention_layers >= 1 and layout.attention_heads >= 1
    assert layout.summary and layout.settings == translator.config.model.model_dump(mode="json")


def test_python_api_translates_with_attention_n_best_and_text_only(family_model):
    translator = family_model.translator()
    layout = translator.describe()
    sentences = held_out(family_model)
    results = translator.translate(sentences, beam_size=3, n_best=2)
    for result in results:
        check_layout(result, layout)
        assert len(result.n_best) == 2 and result.n_best[0] is result
        for layer in range(1, layout.attention_layers + 1):
            np.testing.assert_allclose(result.attention_view(layer), result.attention_heads[layer - 1].mean(axis=0))
            for head in range(1, layout.attention_heads + 1):
                np.testing.assert_array_equal(result.attention_view(layer, head),
                                              result.attention_heads[layer - 1, head - 1])
    text_only = translator.translate(sentences, beam_size=3, attention=False)
    assert [t.text for t in text_only] == [r.text for r in results]
    assert all(t.attention is None and t.attention_heads is None for t in text_only)
    with pytest.raises(AttnmtError, match="choose 1..1|no attention"):
        text_only[0].attention_view(1)


@pytest.mark.parametrize("options, message", [
    ({"beam_size": 2, "n_best": 3}, r"`n_best` \(3\) is more than `beam_size` \(2\)"),
    ({"beam_size": 0}, "`beam_size`"),
    ({"beam_size": -1}, "`beam_size`"),
    ({"n_best": 0}, "`n_best`"),
    ({"max_length_ratio": 0}, "`max_length_ratio`"),
])
def test_python_api_refuses_impossible_search_options(family_model, options, message):
    with pytest.raises(ConfigError, match=message):
        family_model.translator().translate(["a b"], **options)


def test_python_api_takes_a_list_not_a_string(family_model):
    with pytest.raises(TypeError, match=r"translate\(\[sentence\]\)"):
        family_model.translator().translate("a b c")


def test_python_api_on_the_cpu_and_under_bf16(family_model):
    sentences = held_out(family_model)
    default = family_model.translator().translate(sentences, beam_size=2)
    on_cpu = Translator.load(family_model.model_dir, device="cpu").translate(sentences, beam_size=2)
    assert [t.text for t in on_cpu] == [t.text for t in default]
    bf16 = Translator.load(family_model.model_dir, device="cpu", mixed_precision="bf16")
    layout = bf16.describe()
    for result in bf16.translate(sentences, beam_size=2):
        assert result.attention_heads.shape[:2] == (layout.attention_layers, layout.attention_heads)
        np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=2e-2)  # bf16 weights


# ---- the CLI ----------------------------------------------------------------------------------------------------

def test_cli_translate(capsys, tmp_path, family_model):
    lines = held_out(family_model, 6) + [""]
    path = tmp_path / "input.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--beam-size", "3",
                         "--device", "cpu")
    assert code == 0, err
    expected = [t.text for t in family_model.translator().translate(lines, beam_size=3)]
    assert out.split("\n")[:-1] == expected
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--beam-size", "3",
                         "--n-best", "2")
    assert code == 0, err
    assert len(out.splitlines()) == 2 * (len(lines) - 1) + 1  # the empty line has one (empty) hypothesis
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--mixed-precision", "bf16")
    assert code == 0 and len(out.split("\n")[:-1]) == len(lines), err


def test_cli_translate_refuses_n_best_above_the_beam(capsys, tmp_path, family_model):
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", tmp_path / "never-read.txt",
                         "--beam-size", "2", "--n-best", "3")
    assert code == 2 and out == "" and "`n_best` (3) is more than `beam_size` (2)" in err, err


def test_cli_evaluate(capsys, tmp_path, family_model):
    sources = held_out(family_model, 12)
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    ref.write_text("".join(reverse(s) + "\n" for s in sources), encoding="utf-8")
    code, out, err = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--json",
                         "--beam-size", "2")
    assert code == 0, err
    report = json.loads(out)
    hypotheses = [t.text for t in family_model.translator().translate(sources, beam_size=2)]
    assert report["bleu"] == pytest.approx(corpus_scores(hypotheses, [reverse(s) for s in sources])["bleu"])


@pytest.mark.parametrize("options", [[], ["--layer", "1"], ["--layer", "1", "--head", "1"], ["--head", "1"],
                                     ["--all-heads"]],
                         ids=["default", "layer", "layer+head", "head", "all-heads"])
def test_cli_attention(capsys, tmp_path, family_model, options):
    path = tmp_path / "map.png"
    code, out, err = run(capsys, "attention", family_model.model_dir, held_out(family_model, 1)[0], "-o", path,
                         *options)
    assert code == 0, err
    assert path.read_bytes()[:8] == PNG and str(path) in out


def test_cli_attention_names_the_layers_the_model_has(capsys, tmp_path, family_model):
    layers = family_model.translator().describe().attention_layers
    code, _, err = run(capsys, "attention", family_model.model_dir, "a b", "-o", tmp_path / "x.png",
                       "--layer", layers + 1)
    assert code == 2 and f"layer {layers + 1}: the model has {layers} attention layer" in err, err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()


# ---- the server -------------------------------------------------------------------------------------------------

def test_serve_info_and_translate(family_model):
    translator = family_model.translator()
    layout = translator.describe()
    texts = held_out(family_model, 4)
    examples = checkpoint.read_examples(family_model.model_dir)
    assert examples and all(3 <= len(e.split()) <= 12 for e in examples)  # training wrote dev sentences to offer
    with TestClient(create_app(translator, ServeSettings(max_wait_ms=1), examples)) as client:
        info = client.get("/info").json()
        assert info["examples"] == examples
        assert info["model"]["family"] == layout.family and info["model"]["summary"] == layout.summary
        assert (info["model"]["attention_layers"], info["model"]["attention_heads"]) == \
            (layout.attention_layers, layout.attention_heads)
        assert info["model"]["parameters"] == layout.parameters

        plain = client.post("/translate", json={"texts": texts, "beam_size": 3, "n_best": 2})
        assert plain.status_code == 200, plain.text
        direct = translator.translate(texts, beam_size=3, n_best=2)
        for out, expected in zip(plain.json()["translations"], direct):
            assert out["text"] == expected.text and "attention" not in out
            assert [h["text"] for h in out["n_best"]] == [h.text for h in expected.n_best]

        with_attention = client.post("/translate", json={"texts": texts, "beam_size": 3, "return_attention": True})
        assert with_attention.status_code == 200, with_attention.text
        direct = translator.translate(texts, beam_size=3)
        per_head = layout.attention_layers * layout.attention_heads > 1
        for out, expected in zip(with_attention.json()["translations"], direct):
            assert out["target_tokens"] == expected.target_tokens_with_eos
            np.testing.assert_allclose(out["attention"], expected.attention, atol=1e-4)
            if per_head:
                np.testing.assert_allclose(out["attention_heads"], expected.attention_heads, atol=1e-4)
                for layer, matrix in enumerate(out["attention_layer_means"], start=1):
                    np.testing.assert_allclose(matrix, expected.attention_view(layer), atol=1e-4)
                np.testing.assert_allclose(out["attention_layer_means"][-1], out["attention"], atol=1e-4)
            else:
                assert "attention_heads" not in out and "attention_layer_means" not in out

        refused = client.post("/translate", json={"text": texts[0], "beam_size": 2, "n_best": 3})
        assert refused.status_code == 422 and refused.json()["error"].startswith("n_best")


# ---- a study cell -----------------------------------------------------------------------------------------------

def test_a_study_cell(tmp_path, tiny_corpus, family_model):
    train, dev = tiny_corpus
    data = tiny_config_dict(train, dev, tmp_path / "unused", {"training.max_steps": 3, "training.validate_every": 3})
    data["data"]["test"] = data["data"]["dev"]
    data["model"] = family_model.trainer.config.model.model_dump(mode="json")  # the family under test
    config, grid = tmp_path / "config.yaml", tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    grid.write_text(yaml.safe_dump({"cells": [{"name": "cell", "set": {"training.seed": 2}}]}), encoding="utf-8")
    rows = run_study(str(config), str(grid), tmp_path / "study")
    (cell_dir,) = [path for path in (tmp_path / "study" / "cells").iterdir() if path.is_dir()]
    layout = Translator.load(cell_dir).describe()
    assert rows[0]["parameters"] == layout.parameters and rows[0]["attention_entropy"] >= 0
    assert list((tmp_path / "study" / "heatmaps").glob("cell_*.png"))


def test_the_tiny_transformer_is_the_shipped_shape():
    """The fixture's Transformer is what its name says (so the matrix above really covers layers × heads)."""
    assert TINY_TRANSFORMER["decoder_layers"] > 1 and TINY_TRANSFORMER["heads"] > 1
