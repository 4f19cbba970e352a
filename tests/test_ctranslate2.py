"""CTranslate2: `attnmt export --to ctranslate2` and the ctranslate2 backend give the PyTorch model's translations.

In float32 the exported Transformer is the same function as the torch one, so greedy and beam search (α = 0, where
both rank by Σ log p) give the same tokens, for every layout the Transformer has (pre/post-norm, sinusoidal/learned
positions, shared/tied or separate embeddings). int8 is held to a token-agreement floor (INT8_AGREEMENT).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from attnmt import checkpoint, manifest
from attnmt.backends import CTranslate2Translator, ctranslate2_threads
from attnmt.config import LENGTH_SLACK
from attnmt.cli import main
from attnmt.errors import AttnmtError, CheckpointError
from attnmt.export import EXPORT_INFO, default_output, export_ctranslate2
from attnmt.models.ctranslate2_spec import ExportError
from attnmt.translator import Translator

from conftest import TINY_TRANSFORMER

INT8_AGREEMENT = 0.9  # int8 weights: at least this share of the sentences translate to the float32 tokens


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sources(model, count: int = 24) -> list[str]:
    return [src for src, _ in model.test_pairs[:count]]


@pytest.fixture(scope="module")
def exported(transformer_model, tmp_path_factory):
    """A copy of the tiny Transformer's directory with its float32 export in place (MODEL_DIR/ctranslate2)."""
    model_dir = tmp_path_factory.mktemp("ct2") / "model"
    shutil.copytree(transformer_model.model_dir, model_dir, ignore=shutil.ignore_patterns("train_state"))
    export_ctranslate2(model_dir)
    return model_dir


def variant(base_dir, out_dir, **settings):
    """A model directory like `base_dir` with other Transformer settings and fresh random weights (no training:
    the mapping is what is tested, and random weights use every entry of it)."""
    shutil.copytree(base_dir, out_dir, ignore=shutil.ignore_patterns("train_state", "ctranslate2*"))
    config = yaml.safe_load((out_dir / checkpoint.CONFIG_FILE).read_text())
    config["model"] = {**TINY_TRANSFORMER, **settings}
    (out_dir / checkpoint.CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    translator = Translator.load(base_dir, device="cpu")
    from attnmt.models import build_model
    torch.manual_seed(7)
    model = build_model(translator.config.model.model_validate(config["model"]), translator.tokenizer.src_vocab_size,
                        translator.tokenizer.tgt_vocab_size)
    checkpoint.save_model(out_dir / checkpoint.MODEL_FILE, model)
    manifest.write(out_dir)
    return out_dir


def same_tokens(torch_results, ct2_results) -> float:
    return float(np.mean([a.tokens == b.tokens for a, b in zip(torch_results, ct2_results)]))


def test_float32_export_translates_as_pytorch_greedy_and_beam(exported, transformer_model):
    texts = sources(transformer_model)
    reference = Translator.load(exported, device="cpu")
    fast = Translator.load(exported, device="cpu", backend="ctranslate2", compute_type="float32")
    greedy, greedy_ct2 = reference.translate(texts, beam_size=1), fast.translate(texts, beam_size=1)
    assert [t.tokens for t in greedy_ct2] == [t.tokens for t in greedy]
    np.testing.assert_allclose([t.log_prob for t in greedy_ct2], [t.log_prob for t in greedy], rtol=1e-3, atol=1e-3)
    # beam: where no hypothesis reached the length limit (there attnmt forces EOS and CTranslate2 cuts: they may rank
    # such hypotheses differently; the tiny model, 30 steps trained, babbles to the limit on some sentences)
    beam = reference.translate(texts, beam_size=5, length_penalty=0.0, n_best=2)
    beam_ct2 = fast.translate(texts, beam_size=5, length_penalty=0.0, n_best=2)
    limits = [len(ids) * 2 + LENGTH_SLACK for ids in reference.tokenizer.encode_source(texts)]  # ratio 2: the config
    free = [i for i, (t, limit) in enumerate(zip(beam, limits)) if all(len(h.tokens) < limit for h in t.n_best)]
    assert len(free) >= len(texts) // 4
    assert [beam_ct2[i].tokens for i in free] == [beam[i].tokens for i in free]
    assert [[h.tokens for h in beam_ct2[i].n_best] for i in free] == [[h.tokens for h in beam[i].n_best] for i in free]
    np.testing.assert_allclose([beam_ct2[i].score for i in free], [beam[i].score for i in free], rtol=1e-3, atol=1e-3)


def test_one_search_per_call_each_translation_cut_at_its_own_limit(exported, transformer_model):
    """The backend hands CTranslate2 all sentences at once (the largest limit), then cuts each translation at its
    own limit: the same greedy tokens as one sentence at a time, and none longer than its limit."""
    texts = sources(transformer_model)
    fast = Translator.load(exported, device="cpu", backend="ctranslate2", compute_type="float32")
    calls = []
    search = fast._search
    fast._search = lambda pieces, **options: calls.append(len(pieces)) or search(pieces, **options)
    together = fast.translate(texts, beam_size=1)
    assert calls == [len(texts)]
    alone = [fast.translate([text], beam_size=1)[0] for text in texts]
    assert [t.tokens for t in together] == [t.tokens for t in alone]
    limits = [len(ids) * 2 + LENGTH_SLACK for ids in fast.tokenizer.encode_source(texts)]  # ratio 2: the config
    assert all(len(t.tokens) <= limit for t, limit in zip(together, limits))
    assert any(len(t.tokens) == limit for t, limit in zip(together, limits))  # the cut is exercised


@pytest.mark.parametrize("settings", [
    {"norm": "post", "positions": "learned", "max_positions": 8, "share_embeddings": False,
     "tie_target_embeddings": False},
    {"norm": "pre", "positions": "sinusoidal", "share_embeddings": False, "tie_target_embeddings": True},
], ids=["post-norm-learned-separate", "pre-norm-sinusoidal-tied"])
def test_every_transformer_layout_maps_exactly(exported, tmp_path, settings):
    """Random weights (every entry of the mapping matters), greedy tokens and log p equal; learned positions past
    max_positions (8) repeat the last row, as attnmt clamps them."""
    model_dir = variant(exported, tmp_path / "variant", **settings)
    export_ctranslate2(model_dir)
    texts = ["a b c d e f g h i j", "j i h", "c c c c c c c c c c c c"]
    torch_results = Translator.load(model_dir, device="cpu").translate(texts, beam_size=1)
    ct2_results = Translator.load(model_dir, device="cpu", backend="ctranslate2").translate(texts, beam_size=1)
    assert [t.tokens for t in ct2_results] == [t.tokens for t in torch_results]
    np.testing.assert_allclose([t.log_prob for t in ct2_results], [t.log_prob for t in torch_results], rtol=1e-3)


def test_attention_scores_and_length_penalty(exported, transformer_model):
    """CTranslate2's attention is the last layer's mean over heads, [1, 1, T + 1, S], attnmt's default view; with
    α = 1 log_prob is Σ log p and score attnmt's log_prob / lp(|y| + 1)."""
    texts = sources(transformer_model, 8)
    reference = Translator.load(exported, device="cpu").translate(texts, beam_size=1)
    fast = Translator.load(exported, device="cpu", backend="ctranslate2")
    assert fast.describe().attention_layers == 1 and fast.describe().attention_heads == 1
    for ours, theirs in zip(reference, fast.translate(texts, beam_size=1)):
        assert theirs.attention_heads.shape == (1, 1, len(theirs.tokens) + 1, len(theirs.source_tokens))
        np.testing.assert_allclose(theirs.attention, ours.attention, atol=1e-4)
    torch_beam = Translator.load(exported, device="cpu").translate(texts, beam_size=3, length_penalty=1.0)
    for t, ours in zip(fast.translate(texts, beam_size=3, length_penalty=1.0), torch_beam):
        if t.tokens == ours.tokens:
            assert t.log_prob == pytest.approx(ours.log_prob, abs=1e-3)
        assert t.score == pytest.approx(t.log_prob / ((5 + len(t.tokens) + 1) / 6), rel=1e-6)


def test_thread_layout():
    """One thread per batch on a CPU by default, one batch at a time on a GPU; a layout leaving a batch without a
    thread is refused."""
    assert ctranslate2_threads(2) == (2, 1) and ctranslate2_threads(4, 2) == (2, 2)
    assert ctranslate2_threads(2, 1) == (1, 2) and ctranslate2_threads(2, device="cuda") == (1, 2)
    with pytest.raises(AttnmtError, match="parallel_batches 3: choose 1 to 2"):
        ctranslate2_threads(2, 3)


def test_parallel_batches_belong_to_ctranslate2(exported):
    with pytest.raises(AttnmtError, match="parallel_batches 1 is CTranslate2's: use it with backend"):
        Translator.load(exported, device="cpu", parallel_batches=1)
    serial = Translator.load(exported, device="cpu", backend="ctranslate2", parallel_batches=1)
    assert serial.engine.num_translators == 1


def test_batches_decoded_at_once_translate_as_one_at_a_time(exported, transformer_model):
    """Two batches at once, one thread each (the default), give what one batch at a time on both threads gives."""
    texts = sources(transformer_model)
    parallel = CTranslate2Translator.load(exported, device="cpu", compute_type="float32", threads=2)
    serial = CTranslate2Translator.load(exported, device="cpu", compute_type="float32", threads=2,
                                        parallel_batches=1)
    assert (parallel.engine.num_translators, serial.engine.num_translators) == (2, 1)
    for beam_size in (1, 4):
        a = parallel.translate(texts, beam_size=beam_size, batch_size=4)
        b = serial.translate(texts, beam_size=beam_size, batch_size=4)
        assert [t.tokens for t in a] == [t.tokens for t in b]
        np.testing.assert_allclose([t.score for t in a], [t.score for t in b], rtol=1e-5, atol=1e-5)


def test_int8_agrees_with_float32(exported, transformer_model):
    texts = sources(transformer_model, 40)
    float32 = Translator.load(exported, device="cpu", backend="ctranslate2").translate(texts, beam_size=1)
    for compute_type in ("int8", "int8_float32"):
        int8 = Translator.load(exported, device="cpu", backend="ctranslate2", compute_type=compute_type)
        assert same_tokens(float32, int8.translate(texts, beam_size=1)) >= INT8_AGREEMENT


def test_a_stale_or_missing_export_is_refused(exported, transformer_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(exported, copy)
    variant(exported, tmp_path / "other")  # new weights written into the copy, its manifest rewritten:
    shutil.copy(tmp_path / "other" / checkpoint.MODEL_FILE, copy / checkpoint.MODEL_FILE)
    manifest.write(copy)
    with pytest.raises(CheckpointError, match=r"is stale.*model\.safetensors.*attnmt export"):
        Translator.load(copy, backend="ctranslate2")
    shutil.rmtree(copy / "ctranslate2")
    with pytest.raises(CheckpointError, match="has no CTranslate2 export.*attnmt export"):
        Translator.load(copy, backend="ctranslate2")
    with pytest.raises(AttnmtError, match="mixed_precision"):
        Translator.load(exported, backend="ctranslate2", mixed_precision="bf16")
    with pytest.raises(AttnmtError, match="backend 'onnx'"):
        Translator.load(exported, backend="onnx")
    with pytest.raises(AttnmtError, match="score references with the PyTorch backend"):
        Translator.load(exported, backend="ctranslate2").score(["a b"], ["b a"])


def test_rnn_export_is_refused_clearly(reversal_model, tmp_path, capsys):
    with pytest.raises(ExportError, match="CTranslate2 has no RNN models.*--quantization int8"):
        export_ctranslate2(reversal_model.model_dir, tmp_path / "out")
    code, _, err = run(capsys, "export", reversal_model.model_dir, "--to", "ctranslate2", "-o", tmp_path / "out")
    assert code == 2 and "CTranslate2 has no RNN models" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_export_translate_evaluate_serve(transformer_model, tmp_path, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(transformer_model.model_dir, model_dir, ignore=shutil.ignore_patterns("train_state"))
    code, out, err = run(capsys, "export", model_dir, "--to", "ctranslate2", "--quantization", "int8")
    assert code == 0, err
    out_dir = default_output(model_dir, "int8")
    assert out_dir == model_dir / "ctranslate2-int8" and str(out_dir) in out
    info = json.loads((out_dir / EXPORT_INFO).read_text())
    assert info["quantization"] == "int8"
    assert info["source"][checkpoint.MODEL_FILE] == manifest.read(model_dir)[checkpoint.MODEL_FILE]["sha256"]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]  # no temporary folder left
    code, _, err = run(capsys, "export", model_dir, "--to", "ctranslate2")
    assert code == 0, err

    texts = sources(transformer_model, 6)
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("".join(t + "\n" for t in texts))
    ref.write_text("".join(r + "\n" for _, r in transformer_model.test_pairs[:6]))
    expected = [t.text for t in Translator.load(model_dir, device="cpu").translate(texts, beam_size=1)]
    code, out, err = run(capsys, "translate", model_dir, "--backend", "ctranslate2", "--beam-size", "1",
                         "--input", src)
    assert code == 0, err
    assert out.splitlines() == expected
    code, out, err = run(capsys, "evaluate", model_dir, "--backend", "ctranslate2", "--compute-type", "int8",
                         "--src", src, "--ref", ref, "--json")
    assert code == 0, err
    assert "bleu" in json.loads(out)
    code, _, err = run(capsys, "translate", model_dir, "--backend", "ctranslate2", "--mixed-precision", "bf16",
                       "--input", src)
    assert code == 2 and "--compute-type" in err and "Traceback" not in err
    code, _, err = run(capsys, "translate", model_dir, "--compute-type", "int8", "--input", src)
    assert code == 2 and "--backend ctranslate2" in err
    code, out, err = run(capsys, "translate", model_dir, "--backend", "ctranslate2", "--parallel-batches", "1",
                         "--beam-size", "1", "--input", src)
    assert code == 0 and out.splitlines() == expected, err
    for wrong, message in ((["--parallel-batches", "99"], "parallel_batches 99: choose 1 to"),
                           (["--parallel-batches", "1"], "is CTranslate2's: use it with backend")):
        backend = [] if message.startswith("is") else ["--backend", "ctranslate2"]
        code, _, err = run(capsys, "translate", model_dir, *backend, *wrong, "--input", src)
        assert code == 2 and message in err and "Traceback" not in err


def test_serve_with_ctranslate2(exported, transformer_model, monkeypatch, capsys):
    import warnings

    from attnmt.serve import ServeSettings, create_app
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    translator = Translator.load(exported, device="cpu", backend="ctranslate2")
    texts = sources(transformer_model, 4)
    with TestClient(create_app(translator, ServeSettings(max_wait_ms=1), [])) as client:
        info = client.get("/info").json()
        assert info["model"]["summary"].endswith("(CTranslate2)") and info["model"]["attention_layers"] == 1
        reply = client.post("/translate", json={"texts": texts, "beam_size": 3, "return_attention": True})
        assert reply.status_code == 200, reply.text
        for out, expected in zip(reply.json()["translations"], translator.translate(texts, beam_size=3)):
            assert out["text"] == expected.text
            np.testing.assert_allclose(out["attention"], expected.attention, atol=1e-4)
    # `attnmt serve --backend ctranslate2` hands the backend to serve()
    import attnmt.serve
    seen = {}
    monkeypatch.setattr(attnmt.serve, "serve", lambda model_dir, **options: seen.update(options))
    assert run(capsys, "serve", exported, "--backend", "ctranslate2", "--compute-type", "int8",
               "--parallel-batches", "1")[0] == 0
    assert seen["backend"] == "ctranslate2" and seen["compute_type"] == "int8" and seen["parallel_batches"] == 1


def test_trace_refuses_a_ctranslate2_model_with_501(exported, transformer_model):
    """The lab traces a PyTorch model step by step; a model served by CTranslate2 has none: 501 naming the backend
    (documented in the schema), alone or beside a PyTorch model, while /translate goes on."""
    import warnings

    from attnmt.serve import ServeSettings, create_app
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    ct2 = Translator.load(exported, device="cpu", backend="ctranslate2")
    text = sources(transformer_model, 1)[0]
    with TestClient(create_app(ct2, ServeSettings(max_wait_ms=1), [])) as client:
        answer = client.post("/trace", json={"text": text})
        assert answer.status_code == 501, answer.text
        error = answer.json()["error"]
        assert error.startswith("backend:") and "ctranslate2 backend" in error and "--backend" in error
        assert client.post("/trace", json={"text": text, "beam_size": 99}).status_code == 422  # the body first
        responses = client.get("/openapi.json").json()["paths"]["/trace"]["post"]["responses"]
        assert "CTranslate2" in responses["501"]["description"]
        assert client.post("/translate", json={"text": text}).status_code == 200
    torch_model = Translator.load(exported, device="cpu")
    with TestClient(create_app({"torch": torch_model, "ct2": ct2}, ServeSettings(max_wait_ms=1))) as client:
        answer = client.post("/trace", json={"text": text, "model": "ct2"})
        assert answer.status_code == 501 and answer.json()["error"].startswith("model: 'ct2' is served by the "
                                                                               "ctranslate2 backend")
        traced = client.post("/trace", json={"text": text, "model": "torch"})
        assert traced.status_code == 200 and traced.json()["self_attention"] is not None
        info = client.get("/info").json()["models"]
        assert [m["model"]["self_attention_heads"] for m in info] == [TINY_TRANSFORMER["heads"], 0]
