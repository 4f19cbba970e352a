"""The attention lab (issue 18): `attnmt.trace` (decode one sentence, keep every step), `POST /trace`, and the page at
/lab in headless Chromium: stepping through greedy and beam search, forcing a prefix from a clicked candidate, the
energies before the normalizer, a Transformer's self-attention, downloads, the API key, and a server of several
models compared side by side (the RNN and `ensemble_partner`, a Transformer). Each runs for the families it is about
(`family_model`, conftest.py).

The 50 ms figure of the issue (a step or a hover redraws within 50 ms for a 30-token sentence) is measured in the
browser and printed, never asserted (a shared CI machine times nothing reliably).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from attnmt.attention import NORMALIZERS, compare_normalizers
from attnmt.data.tokenizer import EOS_ID
from attnmt.search import max_output_lengths
from attnmt.serve import ServeSettings, create_app, model_names
from attnmt.serve.lab import self_attention_numbers, trace_numbers_per_node
from attnmt.trace import FINISHED, KEPT, PRUNED, ROOT, trace

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

rnn_only = pytest.mark.parametrize("family_model", ["rnn"], indirect=True)


def sources(model, count: int = 4) -> list[str]:
    return [src for src, _ in model.test_pairs[:count]]


# ---- attnmt.trace ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_trace_decodes_what_translate_decodes(family_model, beam_size):
    translator = family_model.translator()
    for text in sources(family_model) + ["a"]:
        expected = translator.translate([text], beam_size=beam_size, length_penalty=0.6, n_best=beam_size)[0]
        traced = trace(translator, text, beam_size=beam_size, length_penalty_alpha=0.6)
        assert translator.tokenizer.target_pieces(traced.best_tokens()) == expected.tokens, text
        best = traced.nodes[traced.finished[0]]
        assert best.score == pytest.approx(expected.log_prob, abs=1e-9)
        assert best.normalized_score == pytest.approx(expected.score, abs=1e-9)
        # every finished hypothesis of the beam is there, in the beam's order
        assert [traced.nodes[i].normalized_score for i in traced.finished[:beam_size]] == \
            pytest.approx([h.score for h in expected.n_best], abs=1e-9)
        # the attention of each step along the best path is the translation's, row by row
        path = traced.best
        rows = np.stack([traced.nodes[i].expansion.attention for i in path[:-1]])  # [T, L, H, S]
        np.testing.assert_allclose(rows.transpose(1, 2, 0, 3), expected.attention_heads, atol=1e-6)


def test_a_beam_trace_is_a_tree_of_kept_pruned_and_finished_hypotheses(family_model):
    translator = family_model.translator()
    traced = trace(translator, sources(family_model)[0], beam_size=3, candidates=4)
    nodes = traced.nodes
    assert nodes[0].status == ROOT and nodes[0].parent is None
    statuses = {n.status for n in nodes[1:]}
    assert {KEPT, PRUNED, FINISHED} <= statuses
    for node in nodes[1:]:
        parent = nodes[node.parent]
        assert node.depth == parent.depth + 1
        assert node.score == pytest.approx(parent.score + node.log_prob, abs=1e-6)
        assert parent.expansion is not None  # only what was fed to the model has children
        assert (node.status == FINISHED) == (node.token == EOS_ID and node.normalized_score is not None)
        assert len(parent.expansion.candidates) == 4
        probabilities = [c.log_prob for c in parent.expansion.candidates]
        assert probabilities == sorted(probabilities, reverse=True)
    for depth in range(1, max(n.depth for n in nodes) + 1):  # at most k hypotheses stay alive per step
        assert sum(n.status == KEPT for n in nodes if n.depth == depth) <= 3
    assert all(nodes[i].status == FINISHED for i in traced.finished)


def test_a_forced_prefix_is_marked_and_decoding_goes_on_from_it(reversal_model):
    translator = reversal_model.translator()
    text = sources(reversal_model)[0]
    expected = translator.translate([text], beam_size=1, prefix="j j")[0]
    traced = trace(translator, text, beam_size=1, prefix="j j")
    assert translator.tokenizer.target_pieces(traced.best_tokens()) == expected.tokens
    path = [traced.nodes[i] for i in traced.best[1:]]
    assert [n.forced for n in path[:2]] == [True, True] and not any(n.forced for n in path[2:])


@rnn_only
def test_the_rnn_records_its_energies_and_the_normalizers_compare_on_them(family_model):
    translator = family_model.translator()
    traced = trace(translator, sources(family_model)[0], beam_size=1)
    assert (traced.normalizer, traced.temperature) == ("softmax", 1.0)
    for node_id in traced.best[:-1]:
        expansion = traced.nodes[node_id].expansion
        energies = torch.tensor(expansion.energies).view(1, 1, -1)
        mask = torch.ones(1, energies.size(-1), dtype=torch.bool)
        weights = compare_normalizers(energies, mask)
        assert set(weights) == set(NORMALIZERS)
        # the model's own weights are softmax of its energies
        np.testing.assert_allclose(weights["softmax"].view(-1).numpy(), expansion.attention.reshape(-1), atol=1e-5)
        for name, row in weights.items():
            assert float(row.sum()) == pytest.approx(1.0, abs=1e-5), name
        assert int((weights["sparsemax"] == 0).sum()) >= int((weights["softmax"] == 0).sum())


@pytest.mark.parametrize("family_model", ["transformer"], indirect=True)
def test_a_transformer_traces_every_head_and_records_no_energies(family_model):
    translator = family_model.translator()
    traced = trace(translator, sources(family_model)[0], beam_size=2)
    layout = translator.describe()
    expansion = traced.nodes[0].expansion
    assert expansion.attention.shape[:2] == (layout.attention_layers, layout.attention_heads)
    assert expansion.energies is None and traced.normalizer is None


def test_a_transformer_traces_its_self_attention_and_an_rnn_has_none(transformer_model, reversal_model):
    translator = transformer_model.translator()
    layout = translator.describe()
    assert layout.self_attention_heads == layout.attention_heads == 4
    traced = trace(translator, sources(transformer_model)[0], beam_size=2)
    weights = traced.self_attention
    read = traced.best[:-1]  # what the decoder read: BOS and the tokens before EOS
    assert weights.nodes == read
    source, target = len(traced.source_ids), len(read)
    assert weights.encoder.shape == (layout.encoder_layers, 4, source, source)
    assert weights.decoder.shape == (layout.decoder_layers, 4, target, target)
    np.testing.assert_allclose(weights.encoder.sum(-1), 1.0, atol=1e-5)  # each row a distribution
    np.testing.assert_allclose(weights.decoder.sum(-1), 1.0, atol=1e-5)
    assert (weights.encoder > 0).all()  # no padding in one sentence: every source position is read
    future = np.triu(np.ones((target, target), dtype=bool), k=1)
    assert (weights.decoder[..., future] == 0).all() and (weights.decoder[..., ~future] > 0).all()  # causal
    # teacher forcing reads what the steps read: its last decoder position's output is the last step's log p
    model = translator.model
    src = torch.tensor([traced.source_ids])
    tgt_in = torch.tensor([[traced.nodes[i].token for i in read]])
    with torch.inference_mode():
        logits, _ = model(src, torch.ones_like(src, dtype=torch.bool), tgt_in)
    last = traced.nodes[traced.best[-1]]
    assert float(torch.log_softmax(logits[0, -1].double(), -1)[last.token]) == pytest.approx(last.log_prob, abs=1e-4)

    rnn = reversal_model.translator()
    assert rnn.describe().self_attention_heads == 0
    assert trace(rnn, sources(reversal_model)[0]).self_attention is None


# ---- POST /trace ----------------------------------------------------------------------------------------------------

def test_post_trace_returns_the_tree_the_page_draws(family_model):
    translator = family_model.translator()
    text = sources(family_model)[1]
    expected = translator.translate([text], beam_size=3)[0]
    layout = translator.describe()
    with TestClient(create_app(translator, ServeSettings())) as client:
        answer = client.post("/trace", json={"text": text, "beam_size": 3, "candidates": 3})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["source_tokens"] == expected.source_tokens
        assert (body["attention_layers"], body["attention_heads"]) == (layout.attention_layers, layout.attention_heads)
        nodes = body["nodes"]
        assert [nodes[i]["token"] for i in body["best"]] == ["<s>", *expected.tokens, "</s>"]
        assert nodes[body["best"][-1]]["normalized_score"] == pytest.approx(expected.score, abs=1e-6)
        expanded = [nodes[i] for i in body["best"][:-1]]
        np.testing.assert_allclose([n["attention"] for n in expanded], expected.attention, atol=1e-4)
        for node in expanded:
            assert len(node["candidates"]) == 3
            assert sum(c["probability"] for c in node["candidates"]) <= 1 + 1e-6
            assert (node["attention_heads"] is None) == (layout.attention_layers * layout.attention_heads == 1)
            assert (node["energies"] is None) == (layout.family != "rnn")  # the tiny RNN's attention is additive
        if layout.family == "rnn":
            assert body["normalizer"] == "softmax"
            assert set(expanded[0]["normalized"]) == set(NORMALIZERS)
            np.testing.assert_allclose(expanded[0]["normalized"]["softmax"], expanded[0]["attention"], atol=2e-4)
        assert {n["status"] for n in nodes} >= {"root", "kept", "finished"}
        # an empty text: the root alone
        empty = client.post("/trace", json={"text": "  "}).json()
        assert (len(empty["nodes"]), empty["best"], empty["finished"]) == (1, [0], [])


def test_trace_requests_are_checked_and_bounded(reversal_translator):
    settings = ServeSettings(max_request_work=200, max_beam_size=8, max_source_tokens=30)
    with TestClient(create_app(reversal_translator, settings)) as client:
        answer = client.post("/trace", json={"text": "a b", "beams": 2})
        assert answer.status_code == 422 and answer.json()["error"].startswith("beams: unknown field")
        assert "candidates" in answer.json()["error"]  # the trace's own fields are listed
        answer = client.post("/trace", json={"text": "a b", "candidates": 11})
        assert answer.status_code == 422 and answer.json()["error"].startswith("candidates")
        answer = client.post("/trace", json={"text": "a b c d e f g h i j", "beam_size": 8})
        assert answer.status_code == 413 and "max_request_work" in answer.json()["error"]
        answer = client.post("/trace", json={"text": " ".join("abcdefghij" * 4)})
        assert answer.status_code == 413 and answer.json()["error"].startswith("text: 40 subwords")
        assert client.post("/trace", json={"text": "a b c", "beam_size": 2}).status_code == 200
        schema = client.get("/openapi.json").json()
        assert "/trace" in schema["paths"] and "TraceRequest" in schema["components"]["schemas"]
        page = client.get("/lab")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    small = ServeSettings(max_attention_values=500)
    with TestClient(create_app(reversal_translator, small)) as client:
        answer = client.post("/trace", json={"text": "a b c d e", "beam_size": 4})
        assert answer.status_code == 413 and "max_attention_values" in answer.json()["error"]


def test_post_trace_returns_a_transformer_s_self_attention_within_the_budget(transformer_model):
    translator = transformer_model.translator()
    layout = translator.describe()
    text = sources(transformer_model)[1]
    expected = trace(translator, text, beam_size=1)
    with TestClient(create_app(translator, ServeSettings())) as client:
        body = client.post("/trace", json={"text": text, "beam_size": 1}).json()
    weights = body["self_attention"]
    assert weights["decoder_nodes"] == expected.self_attention.nodes
    assert weights["decoder_tokens"][0] == "<s>" and \
        weights["decoder_tokens"][1:] == [body["nodes"][i]["token"] for i in body["best"][1:-1]]
    np.testing.assert_allclose(weights["encoder"], expected.self_attention.encoder, atol=1e-4)
    np.testing.assert_allclose(weights["decoder"], expected.self_attention.decoder, atol=1e-4)
    np.testing.assert_allclose(weights["encoder_layer_means"], expected.self_attention.encoder.mean(axis=1),
                               atol=1e-4)
    np.testing.assert_allclose(weights["decoder_layer_means"], expected.self_attention.decoder.mean(axis=1),
                               atol=1e-4)
    # The budget counts the self-attention: a limit that the rest fits in but not it gets 413.
    length = len(expected.source_ids)
    outputs = int(max_output_lengths(torch.tensor([length]), translator.search_settings().max_length_ratio, 0)[0])
    rest = (outputs + 1) * trace_numbers_per_node(layout, length, 5)
    extra = self_attention_numbers(layout, length, outputs + 1)
    assert extra >= (layout.self_attention_heads + 1) * layout.encoder_layers * length ** 2 > 0
    with TestClient(create_app(translator, ServeSettings(max_attention_values=rest + extra // 2))) as client:
        answer = client.post("/trace", json={"text": text, "beam_size": 1})
        assert answer.status_code == 413 and "max_attention_values" in answer.json()["error"], answer.text
    with TestClient(create_app(translator, ServeSettings(max_attention_values=rest + extra))) as client:
        assert client.post("/trace", json={"text": text, "beam_size": 1}).status_code == 200


def test_a_server_of_several_models_answers_with_the_one_asked_for(reversal_model, ensemble_partner):
    rnn, partner = reversal_model.translator(), ensemble_partner.translator()
    texts = sources(reversal_model, 3)
    app = create_app({"rnn": rnn, "partner": partner}, ServeSettings(), {"rnn": ["a b c"], "partner": ["d e"]})
    with TestClient(app) as client:
        info = client.get("/info").json()
        assert [m["name"] for m in info["models"]] == ["rnn", "partner"]
        assert [m["model"]["family"] for m in info["models"]] == ["rnn", "transformer"]
        assert [m["examples"] for m in info["models"]] == [["a b c"], ["d e"]]
        assert info["model"] == info["models"][0]["model"] and info["examples"] == ["a b c"]  # the default's
        for name, translator in (("rnn", rnn), ("partner", partner)):
            reply = client.post("/translate", json={"texts": texts, "model": name, "beam_size": 2,
                                                    "return_attention": True})
            assert reply.status_code == 200, reply.text
            for out, expected in zip(reply.json()["translations"], translator.translate(texts, beam_size=2)):
                assert out["text"] == expected.text
                np.testing.assert_allclose(out["attention"], expected.attention, atol=1e-4)
            traced = client.post("/trace", json={"text": texts[0], "model": name}).json()
            assert traced["model"] == name
            assert (traced["self_attention"] is None) == (name == "rnn")
            assert (traced["attention_layers"], traced["attention_heads"]) == \
                (translator.describe().attention_layers, translator.describe().attention_heads)
        # no `model`: the first
        default = client.post("/translate", json={"text": texts[1]}).json()["translations"][0]["text"]
        assert default == rnn.translate([texts[1]])[0].text
        assert client.post("/trace", json={"text": texts[1]}).json()["model"] == "rnn"
        for path in ("/translate", "/trace"):
            answer = client.post(path, json={"text": "a", "model": "gru"})
            assert answer.status_code == 422 and answer.json()["error"].startswith("model:"), answer.text
            assert "'rnn' or 'partner'" in answer.json()["error"]
        health = client.get("/health").json()
        assert health["status"] == "ok" and set(health["batching"]) == {"rnn", "partner"}
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        for request in ("TranslateRequest", "TraceRequest"):
            assert schema[request]["properties"]["model"]["enum"] == ["rnn", "partner"]
    # one model: no `model` field, as before
    with TestClient(create_app(rnn, ServeSettings())) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]
        assert "model" not in schema["TranslateRequest"]["properties"]
        assert "model" not in schema["TraceRequest"]["properties"]
        assert client.post("/translate", json={"text": "a", "model": "rnn"}).status_code == 422
        assert [m["name"] for m in client.get("/info").json()["models"]] == [rnn.config.name]


def test_a_server_of_several_models_has_an_exact_schema(reversal_model, ensemble_partner, tmp_path):
    """schemathesis on a server whose models have different search defaults: the schema's per-model rules."""
    import shutil
    import sys
    from pathlib import Path

    import yaml

    other = tmp_path / "partner"
    shutil.copytree(ensemble_partner.model_dir, other, ignore=shutil.ignore_patterns("train_state"))
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["search"]["beam_size"] = 1  # a default n_best 1 needs no beam; this model's default beam is greedy
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    from attnmt.translator import Translator
    partner = Translator.load(other, device="cpu", check_manifest=False)
    app = create_app({"rnn": reversal_model.translator(), "partner": partner}, ServeSettings(max_beam_size=4,
                                                                                            max_n_best=3))
    with TestClient(app) as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["TranslateRequest"]
        conditions = [rule["if"] for rule in schema["allOf"]]
        assert {"properties": {"model": {"const": "partner"}}, "required": ["model"]} in conditions
        # n_best 2 with the default beam: the rnn's (5) allows it, the partner's (1) does not
        assert client.post("/translate", json={"text": "a b", "n_best": 2}).status_code == 200
        answer = client.post("/translate", json={"text": "a b", "n_best": 2, "model": "partner"})
        assert answer.status_code == 422 and "n_best" in answer.json()["error"]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "reliability"))
    from server_schema import check_app

    result = check_app(app, examples=8)
    assert result["failures"] == [], result["failures"]


def test_model_names_are_the_directories_numbered_where_they_repeat(tmp_path, monkeypatch):
    assert model_names([tmp_path / "a" / "model", tmp_path / "b" / "model", tmp_path / "rnn", tmp_path / "c" /
                        "model"]) == ["model", "model-2", "rnn", "model-3"]
    # `attnmt serve A B` hands serve() both directories; `attnmt serve A` one, as before
    import attnmt.serve
    from attnmt import cli

    seen = []
    monkeypatch.setattr(attnmt.serve, "serve", lambda model_dir, **options: seen.append(model_dir))
    assert cli.main(["serve", "runs/a", "runs/b"]) == 0 and cli.main(["serve", "runs/a"]) == 0
    assert seen == [["runs/a", "runs/b"], "runs/a"]


def test_the_api_key_guards_trace_too(reversal_translator):
    key = "a-key-long-enough-for-the-server"
    with TestClient(create_app(reversal_translator, ServeSettings(api_key=key))) as client:
        assert client.post("/trace", json={"text": "a b"}).status_code == 401
        headers = {"authorization": f"Bearer {key}"}
        assert client.post("/trace", json={"text": "a b"}, headers=headers).status_code == 200
        assert client.get("/lab").status_code == 200


# ---- the page /lab in Chromium --------------------------------------------------------------------------------------

from test_browser import SCREENSHOTS, TIMEOUT_MS, browser, server_url  # noqa: E402,F401 - the fixtures, shared

LONG_SENTENCE = " ".join("abcdefghij"[(i * 7) % 10] for i in range(30))  # 30 source subwords: the 50 ms figure


@pytest.fixture
def lab(browser, server_url):
    context = browser.new_context(viewport={"width": 1200, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
            else None)
    page.goto(server_url + "/lab")
    page.wait_for_selector("#model-info:has-text('→')")
    page.url_root = server_url
    yield page
    context.close()
    assert not problems, problems


def decode_in_lab(page, text: str, beam_size: int = 1, prefix: str = "") -> None:
    page.fill("#lab-source", text)
    page.fill("#lab-beam", str(beam_size))
    page.fill("#lab-prefix", prefix)
    page.evaluate("(() => { document.getElementById('lab-status').textContent = ''; })()")
    page.click("#lab-trace")
    page.wait_for_selector("#lab-status:has-text('Decoded in'), #lab-status.error")


def shown_row(page, selector: str = "#step-attention") -> list[float]:
    return page.eval_on_selector_all(f"{selector} rect.cell", "cells => cells.map(c => Number(c.dataset.weight))")


def step_label(page) -> str:
    return page.inner_text("#step-label")


def screenshot(page, name: str) -> None:
    if os.environ.get("ATTNMT_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"lab_{name}.png"), full_page=True)


@rnn_only
def test_step_through_greedy_decoding(lab, family_model):
    translator = family_model.translator()
    text = sources(family_model)[2]
    expected = trace(translator, text, beam_size=1)
    decode_in_lab(lab, text)
    path = expected.best
    steps = len(path) - 1
    assert lab.inner_text("#lab-translation") == translator.translate([text], beam_size=1)[0].text
    assert step_label(lab) == f"Step 1 of {steps}"
    assert lab.get_attribute("#step", "max") == str(steps)
    assert lab.is_hidden("#tree-section")
    for t in range(1, steps + 1):
        if t > 1:
            lab.click("#step-next")
        assert step_label(lab) == f"Step {t} of {steps}"
        expansion = expected.nodes[path[t - 1]].expansion
        np.testing.assert_allclose(shown_row(lab), expansion.attention[-1].mean(axis=0), atol=1e-4)
        candidates = lab.locator("#candidates .candidate")
        assert candidates.count() == 5
        chosen = translator.tokenizer.target_pieces([expected.nodes[path[t]].token])[0]
        assert lab.get_attribute("#candidates .candidate.chosen", "data-token") == chosen
        assert lab.locator("#lab-target-tokens .tgt.active").get_attribute("data-row") == str(t)
    # The keyboard moves the slider too.
    lab.click("#step-first")
    lab.focus("#step")
    lab.keyboard.press("ArrowRight")
    assert step_label(lab) == f"Step 2 of {steps}"
    screenshot(lab, "greedy_steps")

    # The 50 ms figure: every step of a 30-subword sentence, measured in the page (printed, not asserted).
    decode_in_lab(lab, LONG_SENTENCE)
    total = int(lab.get_attribute("#step", "max"))
    times = []
    for t in range(1, total + 1):
        lab.fill("#step", str(t))  # an input event on the range, as dragging it
        times.append(float(lab.get_attribute("body", "data-step-ms")))
    print(f"\nlab: a step redraws in {np.median(times):.2f} ms (median), {max(times):.2f} ms (slowest) over "
          f"{total} steps of a 30-subword sentence")


@rnn_only
def test_beam_tree_and_a_node_s_attention_on_click(lab, family_model):
    translator = family_model.translator()
    text = sources(family_model)[3]
    expected = trace(translator, text, beam_size=3)
    decode_in_lab(lab, text, beam_size=3)
    assert lab.is_visible("#tree-section")
    nodes = lab.locator("#beam-tree g.node")
    assert nodes.count() == len(expected.nodes)
    shown = lab.eval_on_selector_all("#beam-tree g.node", "ns => ns.map(n => [Number(n.dataset.id), n.dataset.status])")
    assert sorted(map(tuple, shown)) == [(n.id, n.status) for n in expected.nodes]
    assert {status for _, status in shown} >= {"root", "kept", "pruned", "finished"}
    on_path = lab.eval_on_selector_all("#beam-tree g.node.on-path", "ns => ns.map(n => Number(n.dataset.id))")
    assert sorted(on_path) == sorted(expected.best)
    # Click a pruned hypothesis: the page follows its path, at its step, with its parent's attention.
    pruned = next(n for n in expected.nodes if n.status == "pruned" and n.depth >= 2)
    lab.click(f'#beam-tree g.node[data-id="{pruned.id}"]')
    assert step_label(lab) == f"Step {pruned.depth} of {pruned.depth}"
    assert lab.get_attribute("#beam-tree g.node.current", "data-id") == str(pruned.id)
    parent = expected.nodes[pruned.parent].expansion
    np.testing.assert_allclose(shown_row(lab), parent.attention[-1].mean(axis=0), atol=1e-4)
    assert "pruned" in lab.inner_text("#step-detail")
    # The keyboard reaches the nodes: Enter on a focused node follows it.
    finished = expected.nodes[expected.finished[-1]]
    lab.focus(f'#beam-tree g.node[data-id="{finished.id}"]')
    lab.keyboard.press("Enter")
    assert lab.get_attribute("#beam-tree g.node.current", "data-id") == str(finished.id)
    screenshot(lab, "beam_tree")


@rnn_only
def test_force_a_clicked_candidate_and_decode_on(lab, family_model):
    translator = family_model.translator()
    text = sources(family_model)[0]
    decode_in_lab(lab, text)
    lab.click("#step-next")  # step 2
    other = lab.locator("#candidates .candidate:not(.chosen):not([disabled])").first
    token = other.get_attribute("data-token")
    first = lab.locator("#lab-target-tokens .tgt").first.inner_text()
    lab.evaluate("(() => { document.getElementById('lab-status').textContent = ''; })()")
    other.click()
    lab.wait_for_selector("#lab-status:has-text('Decoded in')")
    prefix = lab.input_value("#lab-prefix")
    assert prefix == (first.replace("\u00b7", " ") + token.replace("\u2581", " ")).strip()
    expected = translator.translate([text], beam_size=1, prefix=prefix)[0]
    assert lab.inner_text("#lab-translation") == expected.text
    assert step_label(lab).startswith("Step 3 of")  # it goes on from the step after the forced one
    forced = lab.eval_on_selector_all("#lab-target-tokens .tgt", "ts => ts.map(t => t.classList.contains('forced'))")
    assert forced[:2] == [True, True] and not any(forced[2:])
    screenshot(lab, "what_if")


@rnn_only
def test_the_energies_before_and_after_the_normalizer(lab, family_model):
    translator = family_model.translator()
    text = sources(family_model)[1]
    expected = trace(translator, text, beam_size=1)
    decode_in_lab(lab, text)
    lab.click("#step-next")
    assert lab.is_visible("#energies-section")
    headers = lab.eval_on_selector_all("#energies thead th", "ths => ths.map(t => t.textContent)")
    assert headers == ["Source", "energy e", "softmax (the model's)", "sparsemax", "entmax15"]
    expansion = expected.nodes[expected.best[1]].expansion
    rows = lab.locator("#energies tbody tr")
    assert rows.count() == len(expected.source_ids)
    energies = [float(rows.nth(j).locator("td").first.inner_text()) for j in range(rows.count())]
    np.testing.assert_allclose(energies, expansion.energies, atol=1e-3)
    softmax = lab.eval_on_selector_all('#energies td[data-normalizer="softmax"]',
                                       "cells => cells.map(c => Number(c.style.getPropertyValue('--w')))")
    np.testing.assert_allclose(softmax, expansion.attention.reshape(-1), atol=1e-3)
    screenshot(lab, "energies")


@pytest.mark.parametrize("family_model", ["transformer"], indirect=True)
def test_a_transformer_s_layers_and_heads_at_each_step(lab, family_model):
    translator = family_model.translator()
    text = sources(family_model)[0]
    layout = translator.describe()
    expected = trace(translator, text, beam_size=1)
    decode_in_lab(lab, text)
    assert lab.is_visible("#heads-section") and lab.is_hidden("#energies-section")
    assert lab.get_attribute("#heads-grid", "data-rows") == str(layout.attention_layers * layout.attention_heads)
    heads = expected.nodes[0].expansion.attention  # [L, H, S]
    np.testing.assert_allclose(np.array(shown_row(lab, "#heads-grid")).reshape(heads.shape), heads, atol=1e-4)
    np.testing.assert_allclose(shown_row(lab), heads[-1].mean(axis=0), atol=1e-4)  # the default: last layer's mean
    screenshot(lab, "transformer_heads")


@rnn_only
def test_download_compare_and_permalink(lab, family_model):
    text = sources(family_model)[2]
    decode_in_lab(lab, text, beam_size=2)
    lab.click("#step-next")
    with lab.expect_download() as info:
        lab.click("#download-json")
    download = info.value
    assert download.suggested_filename == "trace.json"
    body = json.loads(open(download.path(), encoding="utf-8").read())
    assert body["beam_size"] == 2 and body["nodes"][0]["token"] == "<s>"
    with lab.expect_download() as info:
        lab.click("#download-svg")
    assert info.value.suggested_filename == "attention.svg"
    assert open(info.value.path(), encoding="utf-8").read().startswith("<svg")
    with lab.expect_download() as info:
        lab.click("#download-png")
    assert info.value.suggested_filename == "attention.png"
    assert open(info.value.path(), "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    lab.click("#lab-compare")
    lab.wait_for_selector("#lab-status:has-text('Compared')")
    assert lab.locator("#compare tbody tr").count() == 4
    translator = family_model.translator()
    assert lab.locator("#compare tbody tr").first.locator("td").nth(1).inner_text() == \
        (translator.translate([text], beam_size=1)[0].text or "(empty)")
    screenshot(lab, "compare")

    # The permalink reproduces the view: the sentence, the search and the step.
    link = lab.get_attribute("#permalink", "href")
    assert link.startswith("/lab#") and "step=2" in link
    lab.goto(lab.url_root + link)
    lab.wait_for_selector("#lab-status:has-text('Decoded in')")
    assert lab.input_value("#lab-source") == text and lab.input_value("#lab-beam") == "2"
    assert step_label(lab).startswith("Step 2 of")


@pytest.mark.parametrize("family_model", ["transformer"], indirect=True)
def test_a_transformer_s_self_attention_every_layer_and_head(lab, family_model):
    translator = family_model.translator()
    layout = translator.describe()
    text = next(t for t in sources(family_model, 20) if len(trace(translator, t).best) >= 4)
    expected = trace(translator, text, beam_size=1).self_attention
    decode_in_lab(lab, text)
    assert lab.is_visible("#self-attention-section")
    layers, heads = layout.encoder_layers, layout.self_attention_heads

    def shown(side: str) -> np.ndarray:
        rows, cols = int(lab.get_attribute(f"#self-{side}", "data-rows")), int(lab.get_attribute(f"#self-{side}",
                                                                                                 "data-cols"))
        return np.array(shown_row(lab, f"#self-{side}")).reshape(rows, cols)

    # The default view: the last layer's mean over its heads, for the encoder (source × source) and the decoder.
    np.testing.assert_allclose(shown("encoder"), expected.encoder[-1].mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(shown("decoder"), expected.decoder[-1].mean(axis=0), atol=1e-4)
    assert lab.input_value("#self-encoder-layer") == str(layers) and lab.input_value("#self-encoder-head") == "mean"
    # One head at a time, chosen with the selects.
    lab.select_option("#self-encoder-layer", "1")
    lab.select_option("#self-encoder-head", "2")
    np.testing.assert_allclose(shown("encoder"), expected.encoder[0, 1], atol=1e-4)
    # The grid: a small map per layer and head and each layer's mean; a click (or Enter) shows it large.
    assert lab.locator("#self-decoder-grid g.thumb").count() == layout.decoder_layers * (heads + 1)
    assert lab.get_attribute("#self-encoder-grid g.thumb.selected", "aria-label") == "layer 1, head 2"
    lab.click('#self-decoder-grid g.thumb[data-layer="1"][data-head="3"]')
    np.testing.assert_allclose(shown("decoder"), expected.decoder[0, 2], atol=1e-4)
    assert (lab.input_value("#self-decoder-layer"), lab.input_value("#self-decoder-head")) == ("1", "3")
    lab.focus('#self-decoder-grid g.thumb[data-layer="2"][data-head="mean"]')
    lab.keyboard.press("Enter")
    np.testing.assert_allclose(shown("decoder"), expected.decoder[1].mean(axis=0), atol=1e-4)
    labels = lab.eval_on_selector_all("#self-decoder text.tgt-label", "ts => ts.map(t => t.textContent)")
    assert labels[0] == "<s>" and len(labels) == len(expected.nodes)
    screenshot(lab, "self_attention")


# ---- a server with an API key, a server of several models: the page in Chromium -------------------------------------

@contextlib.contextmanager
def serving(app):
    """`app` under uvicorn on 127.0.0.1 and a free port, in a thread; yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def lab_at(browser, url: str):
    """The lab page of the server at `url`, once /info has loaded; page errors and console errors fail the test
    (a 4xx the test asks for excepted: Chromium logs it as a failed resource)."""
    context = browser.new_context(viewport={"width": 1200, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") and "the server responded with a status of 4" not in m.text else None)
    try:
        page.goto(url + "/lab")
        page.wait_for_selector("#model-info:has-text('→')")
        yield page
    finally:
        context.close()
    assert not problems, problems


def test_the_lab_sends_the_api_key_typed_in(browser, reversal_translator):
    key = "a-key-long-enough-for-the-server"
    with serving(create_app(reversal_translator, ServeSettings(api_key=key))) as url, lab_at(browser, url) as page:
        assert page.is_visible("#lab-api-key")
        decode_in_lab(page, "a b c")
        assert "Authorization: this server needs an API key" in page.inner_text("#lab-status")
        page.fill("#lab-api-key", key)
        decode_in_lab(page, "a b c")
        assert page.inner_text("#lab-status").startswith("Decoded in")
        assert page.inner_text("#lab-translation") == reversal_translator.translate(["a b c"], beam_size=1)[0].text
        page.evaluate("(() => { document.getElementById('lab-status').textContent = ''; })()")
        page.click("#lab-compare")  # /translate too
        page.wait_for_selector("#lab-status:has-text('Compared')")
    with serving(create_app(reversal_translator, ServeSettings())) as url, lab_at(browser, url) as page:
        assert page.is_hidden("#lab-api-key-option")  # no key, no field


def test_compare_models_side_by_side(browser, reversal_model, ensemble_partner):
    rnn, partner = reversal_model.translator(), ensemble_partner.translator()
    text = next(t for t in sources(reversal_model, 20) if len(t.split()) >= 5)
    app = create_app({"rnn": rnn, "transformer": partner}, ServeSettings())
    with serving(app) as url, lab_at(browser, url) as page:
        assert page.is_visible("#lab-model") and page.is_visible("#lab-compare-models")
        options = page.eval_on_selector_all("#lab-model option", "os => os.map(o => o.value)")
        assert options == ["rnn", "transformer"]
        page.fill("#lab-source", text)
        page.fill("#lab-beam", "2")
        page.click("#lab-compare-models")
        page.wait_for_selector("#lab-status:has-text('Compared 2 models')")
        columns = page.locator("#models-compare .model-column")
        assert [columns.nth(i).get_attribute("data-model") for i in range(2)] == ["rnn", "transformer"]
        for i, translator in enumerate((rnn, partner)):
            expected = translator.translate([text], beam_size=2)[0]
            column = columns.nth(i)
            assert column.locator(".translation").inner_text() == (expected.text or "(empty translation)")
            assert translator.describe().summary in column.inner_text()
            heatmap = column.locator("svg")
            assert (int(heatmap.get_attribute("data-rows")), int(heatmap.get_attribute("data-cols"))) == \
                expected.attention.shape  # the target tokens with </s> × the source tokens
            weights = heatmap.locator("rect.cell").evaluate_all("cs => cs.map(c => Number(c.dataset.weight))")
            np.testing.assert_allclose(np.array(weights).reshape(expected.attention.shape), expected.attention,
                                       atol=1e-4)
        screenshot(page, "compare_models")

        # The model chosen decodes step by step: the Transformer shows its heads and its self-attention.
        page.select_option("#lab-model", "transformer")
        assert "Transformer" in page.inner_text("#model-info")
        decode_in_lab(page, text)
        assert page.inner_text("#lab-translation") == partner.translate([text], beam_size=1)[0].text
        assert page.is_visible("#heads-section") and page.is_visible("#self-attention-section")
        assert "model=transformer" in page.get_attribute("#permalink", "href")
        page.select_option("#lab-model", "rnn")
        decode_in_lab(page, text)
        assert page.is_visible("#energies-section") and page.is_hidden("#self-attention-section")
