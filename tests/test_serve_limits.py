"""A server that one request cannot stall (issue 15): what a request may cost, how requests share the model, the schema
saying exactly what is accepted, and the guard in front (hosts, API key, rate limit, timeouts, health).

Each test here failed on the server before the issue: there was no source-length cap, no work budget, no deadline, a
request's texts always went to the model together, the schema admitted requests the server refused, and /health
said ok whatever the model did.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import warnings
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
import torch

from attnmt import cli
from attnmt.errors import TextTooLong
from attnmt.serve import API_KEY_ENV, ServeSettings, create_app, default_allowed_hosts
from attnmt.serve.app import RateLimiter, attention_numbers_per_position
from attnmt.serve.batcher import Batcher
from attnmt.translator import Translator
from conftest import schema_disagreements, served

from test_browser import browser  # noqa: F401 - the fixture: headless Chromium
from test_serve import CountingTranslator, concurrent_posts

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY = "k" * 20
LIMITS = dict(max_text_chars=200, max_texts=4, max_beam_size=6, max_n_best=4, max_wait_ms=1)


def long_text(words: int) -> str:
    return " ".join("abcdefghij"[i % 10] for i in range(words))


@pytest.fixture(scope="module")
def family_translator(family_model) -> Translator:
    return family_model.translator()


# ---- the source-length cap ------------------------------------------------------------------------------------------

def test_translate_refuses_a_source_over_the_cap_before_translating(family_translator):
    translator = family_translator
    cap = translator.max_source_tokens
    assert cap == translator.config.data.max_length == 30  # the tiny configs' data.max_length
    texts = ["a b c", long_text(cap), long_text(cap + 1)]
    assert translator.source_lengths(texts) == [3, cap, cap + 1]
    with pytest.raises(TextTooLong, match=f"text 3: {cap + 1} subwords, over the limit of {cap}") as caught:
        translator.translate(texts, max_source_tokens=cap)
    assert (caught.value.index, caught.value.length, caught.value.limit) == (2, cap + 1, cap)
    assert len(translator.translate(texts[:2], beam_size=1, max_source_tokens=cap)) == 2  # at the cap: translated
    assert len(translator.translate(texts, beam_size=1)) == 3  # no cap asked for: any length


def test_cli_translate_refuses_a_line_over_the_cap_naming_it(reversal_model, tmp_path, capsys):
    path = tmp_path / "input.txt"
    path.write_text(f"a b c\nd e\n{long_text(31)}\nf g\n", encoding="utf-8")
    assert cli.main(["translate", str(reversal_model.model_dir), "--input", str(path), "--beam-size", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # refused before anything was translated
    assert f"{path} line 3: 31 subwords, over the limit of 30" in err and "data.max_length" in err
    assert "--max-source-tokens 31" in err and "Traceback" not in err
    assert cli.main(["translate", str(reversal_model.model_dir), "--input", str(path), "--beam-size", "1",
                     "--max-source-tokens", "31"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["c b a", "e d"]
    assert cli.main(["translate", str(reversal_model.model_dir), "--max-source-tokens", "0"]) == 2
    assert "--max-source-tokens 0" in capsys.readouterr().err


def test_server_refuses_a_text_over_the_cap_with_413_naming_it(family_translator):
    with TestClient(create_app(family_translator, ServeSettings(**LIMITS))) as client:
        response = client.post("/translate", json={"texts": ["a b", long_text(31)]})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error.startswith("texts[1]: 31 subwords, over the limit of 30") and "data.max_length" in error
        response = client.post("/translate", json={"text": long_text(31)})
        assert response.status_code == 413 and response.json()["error"].startswith("text: 31 subwords")
        assert client.get("/info").json()["limits"]["max_source_tokens"] == 30
    with TestClient(create_app(family_translator, ServeSettings(**LIMITS, max_source_tokens=5))) as client:
        error = client.post("/translate", json={"texts": ["a b", "a b c d e f"]}).json()["error"]
        assert error.startswith("texts[1]: 6 subwords, over the limit of 5 (max_source_tokens)")


def test_the_probes_heavy_request_is_refused_at_once(family_translator):
    """Issue 15's probe: one request of 1,000 characters (hundreds of subwords), beam 16, with attention, held the
    only worker for 269 s. (The tiny models' tokenizer splits at spaces, so here the characters are "a a a ...".)"""
    counting = CountingTranslator(family_translator)
    with TestClient(create_app(counting, ServeSettings())) as client:
        calls = len(counting.calls)  # the start-up self-check
        response = client.post("/translate", json={"text": "a " * 500, "beam_size": 16, "return_attention": True})
        assert response.status_code == 413, response.text
        assert len(counting.calls) == calls  # it never reached the model


# ---- the work budget, the attention budget and the deadline ---------------------------------------------------------

def test_requests_over_the_work_or_attention_budget_get_413_saying_so(family_translator):
    texts = [long_text(20)] * 4  # each: up to 2 × 20 + 10 = 50 target tokens, 51 attention rows of 20 sources
    per_position = attention_numbers_per_position(family_translator.describe())  # RNN 1; Transformer 1 + 2 × 4 + 2
    values = 4 * 51 * 20 * per_position
    settings = ServeSettings(**LIMITS, max_request_work=4 * 6 * 50 - 1, max_attention_values=values - 1)
    with TestClient(create_app(family_translator, settings)) as client:
        response = client.post("/translate", json={"texts": texts, "beam_size": 6})
        assert response.status_code == 413
        error = response.json()["error"]
        assert error.startswith("texts, beam_size: up to 1,200 decoding steps") and "max_request_work" in error
        assert "1,199" in error  # the budget
        assert client.post("/translate", json={"texts": texts, "beam_size": 5}).status_code == 200
        response = client.post("/translate", json={"texts": texts, "beam_size": 1, "return_attention": True})
        assert response.status_code == 413
        error = response.json()["error"]
        assert error.startswith(f"return_attention: the attention of these texts could hold {values:,} numbers")
        assert f"{values - 1:,} a request (max_attention_values)" in error
        response = client.post("/translate", json={"texts": texts[:3], "beam_size": 1, "return_attention": True})
        assert response.status_code == 200
        limits = client.get("/info").json()["limits"]
        assert (limits["max_request_work"], limits["max_attention_values"]) == (1199, values - 1)


def test_a_request_past_its_deadline_gets_504_and_its_other_texts_are_dropped(reversal_translator):
    counting = CountingTranslator(reversal_translator, delay=0.5)
    app = create_app(counting, ServeSettings(max_batch_size=1, max_wait_ms=0, request_timeout_s=0.2))
    [response] = asyncio.run(concurrent_posts(app, [{"texts": ["a b", "c d", "e f"]}]))
    assert response.status_code == 504
    assert response.json()["error"].startswith("timeout: not translated within 0.2 s (request_timeout_s)")
    time.sleep(0.6)  # the call in flight ends; nothing else of that request may follow it
    assert [texts for texts, _ in counting.calls] == [["a b"]]
    assert app.state.batcher.queued_texts == 0


def test_a_heavy_request_takes_turns_with_the_others():
    """A request of many texts is translated a batch at a time; a request arriving behind it gets the next call
    (with the same options, it shares it), instead of waiting for all of the heavy request's texts."""
    for light_options in ({"beam_size": 1}, {"beam_size": 2}):
        calls: list = []

        def translate(texts, **options):
            calls.append((list(texts), options))
            return [f"{text}/{options['beam_size']}" for text in texts]

        async def main():
            batcher = Batcher(translate=translate, max_batch_size=3, max_wait_ms=0)
            heavy = asyncio.ensure_future(batcher.submit([f"h{i}" for i in range(9)], beam_size=1))
            await asyncio.sleep(0)
            light = asyncio.ensure_future(batcher.submit(["light"], **light_options))
            results = await asyncio.gather(heavy, light)
            await batcher.close()
            return results

        heavy, light = asyncio.run(main())
        assert heavy == [f"h{i}/1" for i in range(9)] and light == [f"light/{light_options['beam_size']}"]
        turn = next(i for i, (texts, _) in enumerate(calls) if "light" in texts)
        assert turn == 1, calls  # the second call, not the fourth
        assert all(len(texts) <= 3 for texts, _ in calls)


def test_concurrent_requests_share_the_worker_and_each_gets_its_own_results(family_translator, family_model):
    counting = CountingTranslator(family_translator)
    app = create_app(counting, ServeSettings(max_batch_size=4, max_wait_ms=50))
    heavy = [src for src, _ in family_model.test_pairs[:12]]
    light = [src for src, _ in family_model.test_pairs[12:14]]
    payloads = [{"texts": heavy[:4]}, {"texts": heavy[4:8]}, {"texts": heavy[8:12]}] + [{"text": t} for t in light]
    responses = asyncio.run(concurrent_posts(app, payloads))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    for payload, response in zip(payloads, responses):
        texts = payload.get("texts") or [payload["text"]]
        assert [t["text"] for t in response.json()["translations"]] == \
            [t.text for t in family_translator.translate(texts)]
    assert all(len(texts) <= 4 for texts, _ in counting.calls)


# ---- the schema says what the server accepts ------------------------------------------------------------------------

def test_the_schema_admits_exactly_the_search_options_the_server_accepts(family_translator):
    """n_best ≤ beam_size (with beam_size's default when it is left out) and one of text/texts: every request is
    valid by the OpenAPI schema if and only if the server accepts it."""
    with TestClient(create_app(family_translator, ServeSettings(**LIMITS))) as client:
        request = client.get("/openapi.json").json()["components"]["schemas"]["TranslateRequest"]
        schema = jsonschema_rs.Draft202012Validator(request)
        bodies = [{"text": "a b", **({} if beam is None else {"beam_size": beam}),
                   **({} if n_best is None else {"n_best": n_best})}
                  for beam in [None, *range(0, LIMITS["max_beam_size"] + 2)]
                  for n_best in [None, *range(0, LIMITS["max_n_best"] + 2)]]
        bodies += [{}, {"text": "a", "texts": ["b"]}, {"text": None, "texts": ["b"]}, {"texts": None, "text": "a"},
                   {"texts": []}, {"text": "a", "beam_size": 3.0, "n_best": 2.0}, {"text": "a", "beam_size": True},
                   {"texts": ["a"], "beam_size": None, "n_best": None}, {"text": "a", "beam_size": 2.5}]
        assert schema_disagreements(client, schema, bodies) == []
        assert sum(schema.is_valid(body) for body in bodies) > 20  # both kinds are there


def test_schemathesis_finds_nothing(family_translator):
    """The CI-sized run of benchmarks/reliability/server_schema.py: every check of schemathesis, a few examples."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "reliability"))
    from server_schema import check_app

    result = check_app(create_app(family_translator, ServeSettings()), examples=15)
    assert result["failures"] == [], result["failures"]
    assert result["cases"] > 50


# ---- the guard: hosts, API key, rate limit, body time ---------------------------------------------------------------

def test_a_foreign_host_name_gets_421_and_addresses_pass(reversal_translator):
    settings = ServeSettings(**LIMITS, allowed_hosts=["translate.example.org"])
    with TestClient(create_app(reversal_translator, settings)) as client:
        for host in ("evil.example.com", "evil.example.com:8000", "translate.example.org.evil.com"):
            response = client.get("/health", headers={"host": host})
            assert response.status_code == 421, host
            assert response.json()["error"].startswith("Host:") and "--allowed-host" in response.json()["error"]
        assert client.post("/translate", json={"text": "a b"}, headers={"host": "evil.example.com"}).status_code == 421
        for host in ("translate.example.org", "TRANSLATE.example.org:8000", "127.0.0.1:8000", "[::1]:8000",
                     "192.168.1.7"):
            assert client.get("/health", headers={"host": host}).status_code == 200, host
    assert default_allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1"]
    assert default_allowed_hosts("attnmt.internal")[-1] == "attnmt.internal"
    assert socket.gethostname().lower() in default_allowed_hosts("0.0.0.0")


def test_an_api_key_guards_translate_only(reversal_translator, monkeypatch):
    with TestClient(create_app(reversal_translator, ServeSettings(**LIMITS, api_key=KEY))) as client:
        for headers in ({}, {"authorization": "Bearer wrong-key-wrong-key"}, {"authorization": KEY},
                        {"authorization": f"Basic {KEY}"}):
            response = client.post("/translate", json={"text": "a b"}, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"].startswith("Authorization:")
        response = client.post("/translate", json={"text": "a b"}, headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 200 and response.json()["translations"][0]["text"] == "b a"
        for path in ("/health", "/info", "/", "/static/app.js", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/info").json()["api_key_required"] is True
        assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]
    monkeypatch.setenv(API_KEY_ENV, KEY)
    assert ServeSettings.from_options().api_key.get_secret_value() == KEY
    assert ServeSettings.from_options(api_key="x" * 16).api_key.get_secret_value() == "x" * 16
    monkeypatch.delenv(API_KEY_ENV)
    assert cli.main(["serve", "/nonexistent", "--api-key", "short"]) == 2  # refused before the model is loaded


def test_the_rate_limit_answers_429_with_retry_after(reversal_translator):
    with TestClient(create_app(reversal_translator, ServeSettings(**LIMITS, rate_limit=3))) as client:
        statuses = [client.post("/translate", json={"text": "a b"}).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        response = client.post("/translate", json={"text": "a b"})
        assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 20
        assert response.json()["error"].startswith("rate limit: more than 3 translation requests a minute")
        assert client.get("/health").status_code == 200  # the other endpoints are not counted
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])  # one a second, up to 60 at once
    assert [limiter.wait("a") for _ in range(60)] == [0.0] * 60
    assert limiter.wait("a") == pytest.approx(1.0) and limiter.wait("b") == 0.0
    now[0] += 1.0
    assert limiter.wait("a") == 0.0 and limiter.wait("a") > 0


def test_a_body_not_sent_in_time_gets_408(reversal_translator):
    settings = ServeSettings(**LIMITS, body_timeout_s=0.2)
    app = create_app(reversal_translator, settings)
    sent: list[dict] = []

    async def main():
        chunks = [{"type": "http.request", "body": b'{"text": "a', "more_body": True}]

        async def receive():
            if chunks:
                return chunks.pop()
            await asyncio.sleep(3600)  # the rest never comes

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/translate", "raw_path": b"/translate",
                 "query_string": b"", "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 8000), "scheme": "http",
                 "http_version": "1.1", "asgi": {"version": "3.0"}, "root_path": ""}
        await asyncio.wait_for(app(scope, receive, send), 5)
        await app.state.batcher.close()

    asyncio.run(main())
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"].startswith("body: not all sent within 0.2 s (body_timeout_s)")
    assert app.state.batcher.incoming == 0  # counted out again


# ---- health ---------------------------------------------------------------------------------------------------------

class BrokenTranslator(CountingTranslator):
    def translate(self, texts, **options):
        raise RuntimeError("the model is broken")


def test_health_says_failing_when_the_model_cannot_translate(reversal_translator):
    with TestClient(create_app(BrokenTranslator(reversal_translator), ServeSettings(**LIMITS))) as client:
        response = client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "failing" and "RuntimeError: the model is broken" in body["error"]
        assert client.post("/translate", json={"text": "a b"}).status_code == 500


def test_health_says_failing_for_non_finite_weights_and_after_failed_calls(family_model):
    translator = family_model.translator()
    with torch.no_grad():
        for parameter in translator.model.parameters():
            parameter.fill_(float("nan"))
    with TestClient(create_app(translator, ServeSettings(**LIMITS))) as client:
        response = client.get("/health")  # (its search finds no finite hypothesis, or one that is not finite)
        assert response.status_code == 503 and response.json()["status"] == "failing"
        assert response.json()["error"].startswith("the model cannot translate")

    flaky = CountingTranslator(family_model.translator())
    with TestClient(create_app(flaky, ServeSettings(**LIMITS))) as client:
        body = client.get("/health").json()
        assert body["status"] == "ok" and body["error"] is None
        for _ in range(3):
            assert client.post("/translate", json={"text": "boom"}).status_code == 500
        response = client.get("/health")
        assert response.status_code == 503 and "the last 3 model calls failed" in response.json()["error"]
        assert client.post("/translate", json={"text": "a b"}).status_code == 200
        assert client.get("/health").json()["status"] == "ok"  # a call succeeded again


# ---- a real server: header timeout, header size, default hosts ------------------------------------------------------

def test_a_real_server_closes_slow_connections_and_refuses_foreign_hosts(reversal_model):
    settings = "header_timeout_s=0.5, keep_alive_s=0.5, max_header_bytes=2048"
    with served(reversal_model.model_dir, settings) as (url, port, output):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"POST /translate HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
            began = time.monotonic()
            assert slow.recv(1024) == b""  # closed by the server
            assert time.monotonic() - began < 4
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            assert idle.recv(1024) == b""  # connected, sent nothing: closed too
        with socket.create_connection(("127.0.0.1", port), timeout=5) as endless:
            endless.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 4000)  # no end
            assert endless.recv(1024).startswith(b"HTTP/1.1 400")  # over max_header_bytes
        foreign = httpx.get(url + "/health", headers={"host": f"rebound.example.com:{port}"}, timeout=5)
        assert foreign.status_code == 421 and foreign.json()["error"].startswith("Host:")
        assert httpx.get(f"http://localhost:{port}/health", timeout=5).status_code == 200
        answer = httpx.post(url + "/translate", json={"texts": ["a b c"]}, timeout=30).json()
        assert answer["translations"][0]["text"] == "c b a"
    assert "Host names: localhost, 127.0.0.1, ::1" in output[0]


# ---- the page (last in this file: while the module-scoped browser runs, Playwright holds an event loop in this
# thread, so the tests above that call asyncio.run must come first) --------------------------------------------------

def test_the_page_sends_the_api_key_typed_in(browser, reversal_translator):
    """With an API key, the page shows a field for it and sends what is typed there with each translation."""
    import threading

    import uvicorn

    app = create_app(reversal_translator, ServeSettings(**LIMITS, api_key=KEY))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    context = browser.new_context()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
        page.wait_for_selector("#api-key", state="visible")
        page.fill("#source", "a b c")
        page.click("#translate")
        page.wait_for_selector("#status.error")
        assert "Authorization: this server needs an API key" in page.text_content("#status")
        page.fill("#api-key", KEY)
        page.click("#translate")
        page.wait_for_selector("#status:has-text('Translated in')")
        assert page.text_content("#translation") == "c b a"
        assert errors == []
    finally:
        context.close()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
