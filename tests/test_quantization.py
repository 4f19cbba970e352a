"""int8 decoding on the PyTorch backend (attnmt/quantization.py): `Translator.load(..., quantization="int8")` and
`--quantization int8`, for both families (the tiny RNN and Transformer of conftest.py): the layers each family names
are int8, the translations agree with float32's, attention still comes back, the CLI paths work end to end, and bad
choices are clear errors."""

from __future__ import annotations

import json
import socket
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attnmt import quantization
from attnmt.cli import main
from attnmt.data.batching import collate
from attnmt.evaluation import corpus_scores
from attnmt.quantization import QuantizationError, int8_layers, is_int8
from attnmt.translator import Translator

from conftest import reverse

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

# Next-token agreement: reading float32's own translations (teacher forcing), int8's most probable next subword is
# float32's at this share of the positions at least (measured on held-out sentences: RNN 1.0, Transformer 0.985).
# Free-running translations are compared by BLEU instead: the tiny Transformer is barely trained (it repeats one
# word), so where EOS and the repeated word are near ties a small change moves where a translation stops.
MIN_TOKEN_AGREEMENT = 0.95
BLEU_TOLERANCE = 2.0  # |BLEU(int8) − BLEU(float32)| on the same sentences, in BLEU points


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def held_out(model, count: int) -> list[str]:
    return [src for src, _ in model.test_pairs[:count]]


@torch.inference_mode()
def next_token_agreement(ours: Translator, theirs: Translator, sources: list[str], targets: list[str]) -> float:
    """The share of the target positions (EOS included) at which both models, reading the same source and target
    prefix, rank the same subword first: argmax p_ours(· | y_<t, x) = argmax p_theirs(· | y_<t, x)."""
    batch = collate(theirs.tokenizer.encode_source(sources), theirs.tokenizer.encode_target(targets),
                    list(range(len(sources))))
    our_logits, _ = ours.model(batch.src, batch.src_mask, batch.tgt_in)  # [B, T, V]
    their_logits, _ = theirs.model(batch.src, batch.src_mask, batch.tgt_in)
    same = (our_logits.argmax(-1) == their_logits.argmax(-1)) & batch.tgt_mask  # [B, T]
    return same.sum().item() / batch.tgt_mask.sum().item()


def int8_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The int8 weight matrices of a dynamic quantized Linear (weight), GRU or LSTM (weight_ih_l0, ...)."""
    return {"weight": module.weight()} if hasattr(module, "_packed_params") else module.get_weight()


@pytest.fixture(scope="module")
def int8(family_model) -> Translator:
    return Translator.load(family_model.model_dir, quantization="int8")


# ---- the layers are int8 --------------------------------------------------------------------------------------------

def test_the_layers_the_family_names_are_int8(family_model, int8):
    float32 = family_model.translator()
    named = float32.model.int8_modules()
    assert "decoder.output" in named or "output" in named  # the output layer over the vocabulary, in both families
    assert set(int8_layers(int8.model)) == named
    assert int8.quantization == "int8" and int8.device == torch.device("cpu")  # auto → the CPU
    for name in named:
        original, quantized = float32.model.get_submodule(name), int8.model.get_submodule(name)
        assert is_int8(quantized) and not is_int8(original)
        for key, weight in int8_weights(quantized).items():
            assert weight.dtype == torch.qint8, (name, key)
            reference = dict(original.named_parameters())[key]
            step = reference.abs().max().item() / 127  # one int8 step of a symmetric per-tensor scale
            torch.testing.assert_close(weight.dequantize(), reference.detach(), atol=step, rtol=0)
    # what the family keeps in float32 is still float32
    floating = [name for name, module in int8.model.named_modules() if isinstance(module, (nn.Linear, nn.GRU))]
    assert not set(floating) & named


def test_the_transformer_quantizes_every_linear_layer(transformer_model):
    model = Translator.load(transformer_model.model_dir, device="cpu", quantization="int8").model
    assert not [name for name, module in model.named_modules() if type(module) is nn.Linear]


# ---- int8 translates like float32 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("beam_size", [1, 4], ids=["greedy", "beam"])
def test_int8_translates_like_float32_with_attention(family_model, int8, beam_size):
    sources = held_out(family_model, 24)
    float32 = family_model.translator()
    expected = float32.translate(sources, beam_size=beam_size)
    results = int8.translate(sources, beam_size=beam_size)
    agreement = next_token_agreement(int8, float32, sources, [e.text for e in expected])
    assert agreement >= MIN_TOKEN_AGREEMENT, agreement
    references = [reverse(s) for s in sources]
    bleu = corpus_scores([r.text for r in results], references)["bleu"]
    assert bleu == pytest.approx(corpus_scores([e.text for e in expected], references)["bleu"], abs=BLEU_TOLERANCE)
    layout = int8.describe()
    for result in results:
        rows, columns = len(result.tokens) + 1, len(result.source_tokens)
        assert result.attention_heads.shape == (layout.attention_layers, layout.attention_heads, rows, columns)
        np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-4)
        assert np.isfinite(result.log_prob) and result.log_prob <= 0


def test_int8_scores_references_close_to_float32(family_model, int8):
    sources = held_out(family_model, 8)
    references = [reverse(s) for s in sources]
    ours = [s.log_prob for s in int8.score(sources, references)]
    theirs = [s.log_prob for s in family_model.translator().score(sources, references)]
    np.testing.assert_allclose(ours, theirs, atol=0.5)


# ---- bad choices ----------------------------------------------------------------------------------------------------

def test_an_unknown_quantization_is_a_clear_error(reversal_model):
    with pytest.raises(QuantizationError, match=r"quantization 'int4' is unknown: choose one of none, int8"):
        Translator.load(reversal_model.model_dir, quantization="int4")


def test_int8_runs_on_the_cpu_without_mixed_precision(reversal_model):
    with pytest.raises(QuantizationError, match="choose one"):
        Translator.load(reversal_model.model_dir, device="cpu", mixed_precision="bf16", quantization="int8")
    with pytest.raises(QuantizationError, match="--device cpu"):
        quantization.check_placement("int8", torch.device("cuda", 0), "none")
    assert quantization.device_option("int8", "auto") == "cpu"
    assert quantization.device_option("none", "auto") == "auto"


def test_int8_without_the_kernels_is_a_clear_error(monkeypatch, reversal_model):
    monkeypatch.delattr(torch.ao.quantization, "quantize_dynamic")  # a torch that dropped torch.ao.quantization
    with pytest.raises(QuantizationError, match="int8 is unavailable in this torch"):
        Translator.load(reversal_model.model_dir, quantization="int8")


def test_a_model_that_does_not_name_its_int8_modules_is_refused():
    with pytest.raises(QuantizationError, match="does not say which of its modules quantize"):
        quantization.quantize(nn.Sequential(nn.Linear(2, 2)), "int8")
    model = nn.Sequential(nn.Linear(2, 2))
    assert quantization.quantize(model, "none") is model and type(model[0]) is nn.Linear


def test_the_cli_refuses_an_unknown_quantization(capsys, tmp_path, reversal_model):
    for command in ("translate", "evaluate", "serve"):
        with pytest.raises(SystemExit) as stopped:  # argparse: the usage, then the error naming the choices
            main([command, str(reversal_model.model_dir), "--quantization", "int4"])
        out, err = capsys.readouterr()
        assert stopped.value.code == 2 and out == "", err
        assert "argument --quantization: invalid choice: 'int4' (choose from 'none', 'int8')" in err, err
    code, out, err = run(capsys, "translate", reversal_model.model_dir, "--quantization", "int8",
                         "--mixed-precision", "bf16", "--input", tmp_path / "never-read.txt")
    assert code == 2 and "choose one (--quantization or --mixed-precision)" in err and "Traceback" not in err, err


# ---- the CLI, end to end ---------------------------------------------------------------------------------------------

def test_cli_translate_int8(capsys, tmp_path, family_model, int8):
    lines = held_out(family_model, 6)
    path = tmp_path / "input.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    code, out, err = run(capsys, "translate", family_model.model_dir, "--input", path, "--beam-size", "3",
                         "--quantization", "int8")
    assert code == 0, err
    assert out.split("\n")[:-1] == [t.text for t in int8.translate(lines, beam_size=3)]


def test_cli_evaluate_int8(capsys, tmp_path, family_model):
    sources = held_out(family_model, 12)
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    ref.write_text("".join(reverse(s) + "\n" for s in sources), encoding="utf-8")
    bleu = {}
    for name in ("none", "int8"):
        code, out, err = run(capsys, "evaluate", family_model.model_dir, "--src", src, "--ref", ref, "--json",
                             "--beam-size", "2", "--quantization", name)
        assert code == 0, err
        bleu[name] = json.loads(out)["bleu"]
    assert bleu["int8"] == pytest.approx(bleu["none"], abs=BLEU_TOLERANCE)


def test_cli_serve_int8(capsys, monkeypatch, family_model, int8):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run(capsys, "serve", family_model.model_dir, "--port", port, "--quantization", "int8",
                         "--allowed-host", "testserver")  # the TestClient's Host
    assert code == 0 and "on cpu" in out, err
    texts = held_out(family_model, 3)
    with TestClient(served["app"]) as client:
        response = client.post("/translate", json={"texts": texts, "beam_size": 2, "return_attention": True})
    assert response.status_code == 200, response.text
    expected = int8.translate(texts, beam_size=2)
    for result, direct in zip(response.json()["translations"], expected):
        assert result["text"] == direct.text
        np.testing.assert_allclose(result["attention"], direct.attention, atol=1e-4)
