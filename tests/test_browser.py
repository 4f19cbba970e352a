"""End to end: the real server (uvicorn, on 127.0.0.1 and a free port) serving a tiny model of each family (the
reversal RNN, the Transformer with 2 decoder layers × 4 heads), and the page in headless Chromium driven by
Playwright: type, click Translate, see the translation and the heatmap, and for the Transformer choose a layer and
a head.

Each test says which families it runs for by parametrizing `family_model` (tests/conftest.py) indirectly; without
that it runs for both. The server is module-scoped: one per family.

Chromium is Debian's (`apt-get install chromium chromium-driver`; CI installs it), never a Playwright download.
Without it, or without Playwright, these tests fail with a message saying what to install: they do not skip.
Set ATTNMT_CHROMIUM to use another Chromium binary. Set ATTNMT_SCREENSHOTS=1 to write the page's screenshots to
docs/images/ (nothing is written otherwise).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from attnmt import checkpoint
from attnmt.plotting import WORD_START, WORD_START_MARK
from attnmt.serve import ServeSettings, create_app

CHROMIUM = os.environ.get("ATTNMT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 30_000
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "images"
HALF_A_UNIT = 0.5e-4 + 1e-6  # the server rounds weights to 4 decimals: within half a unit of the 4th decimal

rnn_only = pytest.mark.parametrize("family_model", ["rnn"], indirect=True)
transformer_only = pytest.mark.parametrize("family_model", ["transformer"], indirect=True)


@pytest.fixture(scope="module")
def server_url(family_model):
    """The server for the family of `family_model`: one per family (module scope, parametrized with it)."""
    import uvicorn

    from attnmt.translator import Translator

    translator = Translator.load(family_model.model_dir, device="cpu")
    app = create_app(translator, ServeSettings(max_text_chars=200, max_wait_ms=2),
                     checkpoint.read_examples(family_model.model_dir))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other processes
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the attnmt server did not start on 127.0.0.1")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: `pip install playwright` (the test extra has it); the browser itself "
                    "is Debian's chromium, never `playwright install`")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: `apt-get install -y chromium chromium-driver` "
                    f"(CI's .ci/run does), or point ATTNMT_CHROMIUM at a Chromium binary")
    with sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        except Exception as error:  # noqa: BLE001 - any launch failure is the same message to the reader
            pytest.fail(f"Chromium at {CHROMIUM} did not start under Playwright: {error}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server_url):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_console(message) -> None:
        # A 4xx that a test asks for is logged by Chromium as a failed resource: expected, not a problem.
        if message.type in ("error", "warning") and "the server responded with a status of 4" not in message.text:
            problems.append(f"console {message.type}: {message.text}")

    page.on("console", on_console)
    page.goto(server_url + "/")
    page.wait_for_selector("#model-info:has-text('attention')")  # /info loaded (selectors, not eval: the CSP)
    yield page
    context.close()
    assert not problems, problems


def translate_in_page(page, text: str, n_best: int | None = None) -> None:
    page.fill("#source", text)
    if n_best is not None:
        page.fill("#n-best", str(n_best))
    page.evaluate("(() => { const s = document.getElementById('status'); s.textContent = ''; s.className = ''; })()")
    page.click("#translate")
    page.wait_for_selector("#status:has-text('Translated in'), #status.error")


def heatmap_weights(page) -> np.ndarray:
    """The weights the heatmap shows, as a [rows][cols] matrix (from the cells' data-row, data-col, data-weight)."""
    rows, cols = int(page.get_attribute("#heatmap", "data-rows")), int(page.get_attribute("#heatmap", "data-cols"))
    cells = page.eval_on_selector_all(
        "#heatmap rect.cell",
        "cells => cells.map(c => [Number(c.dataset.row), Number(c.dataset.col), Number(c.dataset.weight)])")
    matrix = np.full((rows, cols), np.nan)
    for row, col, weight in cells:
        matrix[int(row), int(col)] = weight
    return matrix


def assert_shows(page, expected: np.ndarray) -> None:
    """The heatmap shows `expected` [T, S] to 4 decimals (the server's rounding)."""
    shown = heatmap_weights(page)
    assert shown.shape == expected.shape
    np.testing.assert_allclose(shown, expected, rtol=0, atol=HALF_A_UNIT)


def shown_token(token: str) -> str:
    """A token as the page draws it: the word-start piece as the light mark of the PNG heatmaps."""
    return token.replace(WORD_START, WORD_START_MARK)


def default_beam(page) -> int:
    return int(page.input_value("#beam-size"))


def test_type_translate_and_see_the_heatmap(page, family_model):
    source = next(src for src, _ in family_model.test_pairs if len(src.split()) >= 5)
    expected = family_model.translator().translate([source], beam_size=default_beam(page))[0]
    translate_in_page(page, source)

    assert page.inner_text("#translation") == expected.text
    rows, cols = len(expected.tokens) + 1, len(expected.source_tokens)  # target tokens with EOS × source tokens
    cells = page.locator("#heatmap rect.cell")
    assert cells.count() == rows * cols
    assert page.get_attribute("#heatmap", "data-rows") == str(rows)
    assert page.get_attribute("#heatmap", "data-cols") == str(cols)
    positions = page.eval_on_selector_all(
        "#heatmap rect.cell", "cells => cells.map(c => [Number(c.dataset.row), Number(c.dataset.col)])")
    assert sorted(map(tuple, positions)) == [(i, j) for i in range(rows) for j in range(cols)]
    assert page.locator("#heatmap .label.tgt").count() == rows
    assert page.locator("#heatmap .label.src").count() == cols
    weights = page.eval_on_selector_all("#heatmap rect.cell", "cells => cells.map(c => Number(c.dataset.weight))")
    assert sum(weights) == pytest.approx(rows, abs=0.01)  # each row of softmax weights sums to 1
    assert_shows(page, expected.attention)  # the default view: the last layer, averaged over its heads

    # Hover a target token: the source tokens light up by weight, the strongest most.
    row = min(1, rows - 1)
    page.hover(f'#target-tokens .tgt[data-row="{row}"]')
    shown = page.eval_on_selector_all("#source-tokens .src",
                                      "spans => spans.map(s => Number(s.style.getPropertyValue('--w') || -1))")
    assert len(shown) == cols and min(shown) >= 0
    assert shown == pytest.approx(expected.attention[row], abs=1e-3)  # the opacity has 3 decimals
    strongest = int(expected.attention[row].argmax())
    assert shown[strongest] == max(shown)  # (a near-uniform row may tie after rounding)
    assert page.locator(f'#heatmap .label.src.linked[data-col="{strongest}"]').count() == 1
    assert page.locator(f'#heatmap rect.cell.active[data-row="{row}"]').count() == cols
    assert shown_token(expected.target_tokens_with_eos[row]) in page.inner_text("#focus-detail")

    # And the reverse: hover a source token in the heatmap, the target tokens light up.
    page.mouse.move(0, 0)
    page.hover('#heatmap .label.src[data-col="0"]')
    linked = page.eval_on_selector_all("#target-tokens .tgt.linked",
                                       "spans => spans.map(s => Number(s.style.getPropertyValue('--w')))")
    assert len(linked) == rows
    strongest_row = int(expected.attention[:, 0].argmax())
    assert linked[strongest_row] == max(linked)

    # Keyboard: focusing a token (Tab reaches them) tells what it attends to, in a live region.
    page.mouse.move(0, 0)
    page.focus('#source-tokens .src[data-col="0"]')
    first = shown_token(expected.source_tokens[0])
    assert page.inner_text("#focus-detail").startswith(f"Source {first} is attended to by")


@rnn_only
def test_hangul_and_n_best(page, reversal_translator):
    text = "안녕하세요 a b 학생이에요 c"
    expected = reversal_translator.translate([text], beam_size=5, n_best=3)[0]
    translate_in_page(page, text, n_best=3)
    assert page.input_value("#source") == text
    assert page.inner_text("#translation") == (expected.text or "(empty translation)")
    items = page.locator("#nbest li .hypothesis")
    assert items.count() == 3
    assert [items.nth(i).inner_text() for i in range(3)] == [h.text or "(empty)" for h in expected.n_best]
    assert page.locator("#heatmap rect.cell").count() == (len(expected.tokens) + 1) * len(expected.source_tokens)
    source_strip = page.inner_text("#source-tokens")
    assert all(shown_token(token) in source_strip for token in expected.source_tokens)
    assert "\u2581" not in source_strip  # sentencepiece's heavy bar is drawn as a light mark
    # The Hangul font (served by the app when the system has none) loads without errors.
    page.evaluate("document.fonts.ready")
    assert page.evaluate("[...document.fonts].every(f => f.status !== 'error')")


def test_errors_and_empty_text_are_shown(page):
    page.fill("#beam-size", "99")
    translate_in_page(page, "a b c")
    assert "beam_size" in page.inner_text("#status")
    assert page.locator("#status.error").count() == 1
    page.fill("#beam-size", "2")
    translate_in_page(page, "")
    assert page.inner_text("#translation") == "(empty translation)"
    assert page.locator("#heatmap rect.cell").count() == 0
    assert "empty" in page.inner_text("#heatmap-note")
    assert page.is_hidden("#heatmap")
    assert page.is_hidden("#attention-view")


@rnn_only
def test_one_attention_layer_and_head_has_no_choice(page, reversal_model):
    assert "additive attention" in page.inner_text("#model-info")
    translate_in_page(page, reversal_model.test_pairs[0][0])
    assert page.locator("#heatmap rect.cell").count() > 0
    assert page.is_hidden("#attention-view")
    assert page.is_hidden("#attention-layer") and page.is_hidden("#attention-head")
    assert page.is_hidden("#attention-view-note")


@transformer_only
def test_transformer_layer_and_head_choice(page, transformer_model):
    model = transformer_model.translator()
    layers, heads = model.describe().attention_layers, model.describe().attention_heads
    assert (layers, heads) == (2, 4)
    assert f"{layers} layers × {heads} heads" in page.inner_text("#model-info")
    beam = default_beam(page)
    # A source with a few target tokens too (the tiny Transformer stops early on some), for rows to choose from.
    sources = [src for src, _ in transformer_model.test_pairs if len(src.split()) >= 4]
    source = next((src for src, result in zip(sources, model.translate(sources, beam_size=beam))
                   if len(result.tokens) >= 3), sources[0])
    expected = model.translate([source], beam_size=beam)[0]
    translate_in_page(page, source)
    assert page.inner_text("#translation") == expected.text

    # The choice is there, labelled, and starts at the default view: the last layer, averaged over its heads.
    layer, head = page.get_by_label("Layer", exact=True), page.get_by_label("Head", exact=True)
    assert layer.is_visible() and head.is_visible()
    assert layer.locator("option").count() == layers
    assert head.locator("option").count() == heads + 1
    assert (layer.input_value(), head.input_value()) == (str(layers), "mean")
    assert_shows(page, expected.attention)
    assert_shows(page, expected.attention_view(layers))
    assert page.inner_text("#attention-view-note") == f"Shown: layer {layers} of {layers}, mean of {heads} heads."

    # Layer 1, head 2: that head's matrix, drawn from the last answer (no new request).
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    assert not np.allclose(expected.attention_view(1, 2), expected.attention_view(1), atol=1e-3)
    layer.select_option("1")
    head.select_option("2")
    assert_shows(page, expected.attention_view(1, 2))
    assert page.inner_text("#attention-view-note") == f"Shown: layer 1 of {layers}, head 2 of {heads}."
    assert f"layer 1 of {layers}, head 2 of {heads}" in page.get_attribute("#heatmap", "aria-label")
    # The highlights follow the view.
    row = min(1, len(expected.tokens))
    page.hover(f'#target-tokens .tgt[data-row="{row}"]')
    shown = page.eval_on_selector_all("#source-tokens .src",
                                      "spans => spans.map(s => Number(s.style.getPropertyValue('--w') || -1))")
    assert shown == pytest.approx(expected.attention_view(1, 2)[row], abs=1e-3)
    page.mouse.move(0, 0)

    # Layer 1, the mean of its heads (the server's mean).
    head.select_option("mean")
    assert_shows(page, expected.attention_view(1))
    assert page.inner_text("#attention-view-note") == f"Shown: layer 1 of {layers}, mean of {heads} heads."

    # The keyboard: the selects take focus, and the arrow keys change the view.
    head.focus()
    page.keyboard.press("ArrowDown")
    assert head.input_value() == "1"
    assert_shows(page, expected.attention_view(1, 1))
    assert page.inner_text("#attention-view-note") == f"Shown: layer 1 of {layers}, head 1 of {heads}."
    assert not [url for url in requests if url.endswith("/translate")]

    # A new translation keeps the chosen view.
    head.select_option("3")
    other = next(src for src, _ in transformer_model.test_pairs if src != source)
    translate_in_page(page, other)
    again = model.translate([other], beam_size=beam)[0]
    assert (layer.input_value(), head.input_value()) == ("1", "3")
    assert_shows(page, again.attention_view(1, 3))

    if os.environ.get("ATTNMT_SCREENSHOTS"):
        translate_in_page(page, "안녕하세요 i f c d e h")
        layer.select_option("1")
        head.select_option("2")
        page.mouse.move(0, 0)
        page.focus('#target-tokens .tgt[data-row="1"]')
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "page_transformer_heads.png"), full_page=True)


@pytest.mark.parametrize("family_model", ["rnn", "transformer"], indirect=True)
def test_example_sentences_translate_on_a_click(page, family_model):
    """The model directory's examples.txt appears as buttons; clicking one fills the text box and translates it,
    with the source labels of the heatmap upright (columns as wide as the labels) for a short sentence."""
    examples = checkpoint.read_examples(family_model.model_dir)
    chips = page.locator("#example-list button.example")
    assert chips.count() == len(examples) > 0
    assert [chips.nth(i).inner_text() for i in range(chips.count())] == examples
    page.evaluate("(() => { const s = document.getElementById('status'); s.textContent = ''; s.className = ''; })()")
    chips.nth(1).click()
    page.wait_for_selector("#status:has-text('Translated in')")
    assert page.input_value("#source") == examples[1]
    expected = family_model.translator().translate([examples[1]], beam_size=default_beam(page))[0]
    assert page.inner_text("#translation") == expected.text
    transforms = page.eval_on_selector_all("#heatmap .label.src", "labels => labels.map(l => l.getAttribute('transform'))")
    assert transforms and not any("rotate" in t for t in transforms)
