"""The HTTP API (attnmt.serve) through FastAPI's TestClient, and the batcher on its own.

The served model is the tiny trained reversal model of conftest.py; what the API answers is checked against what
`Translator.translate` gives directly. Hostile inputs must get a 4xx naming the field, never a 500, and the server
must keep serving after them.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import warnings

import httpx
import pytest

from attnmt.serve import ServeSettings, create_app
from conftest import served
from attnmt.serve.batcher import Batcher, BatcherClosed, QueueFull

with warnings.catch_warnings():  # starlette ≥ 1.x prefers the httpx2 fork; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

LIMITS = dict(max_text_chars=40, max_texts=4, max_beam_size=6, max_n_best=4, max_body_bytes=4096)


@pytest.fixture
def settings() -> ServeSettings:
    return ServeSettings(**LIMITS, max_wait_ms=1)


@pytest.fixture
def client(reversal_translator, settings):
    with TestClient(create_app(reversal_translator, settings)) as test_client:
        yield test_client


def post(client, payload):
    return client.post("/translate", json=payload)


def sources(reversal_model, count: int) -> list[str]:
    return [src for src, _ in reversal_model.test_pairs[:count]]


# ---- success --------------------------------------------------------------------------------------------------------

def test_translate_one_text(client, reversal_model, reversal_translator):
    source = sources(reversal_model, 1)[0]
    response = post(client, {"text": source})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reversal_translator.translate([source], beam_size=5)[0]
    assert body["beam_size"] == 5 and body["n_best"] == 1  # the model's search defaults
    [result] = body["translations"]
    assert result["text"] == expected.text
    assert result["score"] == pytest.approx(expected.score, abs=1e-4)
    assert set(result) == {"text", "score", "log_prob"}  # tokens and attention only when asked


def test_translate_a_batch_keeps_order(client, reversal_model, reversal_translator):
    texts = sources(reversal_model, 4)
    response = post(client, {"texts": texts, "beam_size": 1})
    assert response.status_code == 200, response.text
    expected = [t.text for t in reversal_translator.translate(texts, beam_size=1)]
    assert [r["text"] for r in response.json()["translations"]] == expected
    assert expected[0] == reversal_model.test_pairs[0][1]  # the model really reverses


def test_attention_shape_and_tokens(client, reversal_model, reversal_translator):
    texts = sources(reversal_model, 3)
    response = post(client, {"texts": texts, "return_attention": True, "beam_size": 3})
    assert response.status_code == 200, response.text
    direct = reversal_translator.translate(texts, beam_size=3)
    for result, expected in zip(response.json()["translations"], direct):
        assert result["source_tokens"] == expected.source_tokens
        assert result["target_tokens"] == expected.tokens + ["</s>"]
        attention = result["attention"]
        assert len(attention) == len(result["target_tokens"])  # one row per target token, EOS included
        assert all(len(row) == len(result["source_tokens"]) for row in attention)
        assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in attention)  # softmax rows


def test_n_best(client, reversal_model):
    response = post(client, {"text": sources(reversal_model, 1)[0], "beam_size": 4, "n_best": 3})
    assert response.status_code == 200, response.text
    result = response.json()["translations"][0]
    hypotheses = result["n_best"]
    assert len(hypotheses) == 3 and hypotheses[0]["text"] == result["text"]
    scores = [h["score"] for h in hypotheses]
    assert scores == sorted(scores, reverse=True)  # length_penalty 0 in the tiny config: best first by score


def test_empty_and_blank_texts_give_empty_translations(client):
    response = post(client, {"texts": ["", "   ", "\n\t"], "return_attention": True})
    assert response.status_code == 200, response.text
    for result in response.json()["translations"]:
        assert result["text"] == ""
        assert result["source_tokens"] == [] and result["target_tokens"] == [] and result["attention"] == []


UNICODE_EDGE_CASES = [
    "안녕하세요, 세계!",  # Hangul syllables
    "\u1100\u1161\u11a8",  # conjoining jamo
    "e\u0301 a\u0308",  # combining marks
    "👩\u200d👩\u200d👧 😀",  # emoji with zero-width joiners, astral plane
    "\u202ea b c\u202c",  # bidi override
    "a\u0000b",  # NUL
    "\ufeffa b",  # byte order mark
    "a\u2028b\u2029c",  # line and paragraph separators
    "\U0001d518\U0001d52b\U0001d526",  # mathematical letters (NFKC folds them)
    "ﾊﾝｶｸ",  # half-width katakana
    "\x7f\x1b[31m",  # DEL and an escape sequence
]


def test_unicode_edge_cases_translate(client):
    response = post(client, {"texts": UNICODE_EDGE_CASES[:4], "return_attention": True})
    assert response.status_code == 200, response.text
    for case in UNICODE_EDGE_CASES:
        response = post(client, {"text": case, "return_attention": True})
        assert response.status_code == 200, (case, response.text)
        result = response.json()["translations"][0]
        assert isinstance(result["text"], str)
        assert len(result["attention"]) == len(result["target_tokens"])


# ---- limits ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload, field", [
    ({"text": "a " * 20 + "b"}, "text"),  # 41 characters
    ({"texts": ["a"] * 5}, "texts"),
    ({"texts": ["a", "b " * 21]}, "texts[1]"),
    ({"text": "a", "beam_size": 7}, "beam_size"),
    ({"text": "a", "beam_size": 0}, "beam_size"),
    ({"text": "a", "beam_size": 10**30}, "beam_size"),
    ({"text": "a", "beam_size": 6, "n_best": 5}, "n_best"),
    ({"text": "a", "beam_size": 2, "n_best": 3}, "n_best"),
    ({"text": "a", "n_best": 0}, "n_best"),
])
def test_limits_give_422_naming_the_field(client, payload, field):
    response = post(client, payload)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(field), response.json()


def test_limits_at_the_edge_pass(client):
    response = post(client, {"texts": ["a " * 19 + "b"] * 4, "beam_size": 6, "n_best": 4})
    assert response.status_code == 200, response.text


def test_body_over_the_limit_gets_413(client):
    big = json.dumps({"text": "a" * 5000}).encode()
    response = client.post("/translate", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"].startswith("body")

    def chunks():  # no Content-Length: the limit counts the bytes as they come
        yield b'{"text": "'
        for _ in range(100):
            yield b"a" * 100
        yield b'"}'

    response = client.post("/translate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["error"]


def test_settings_reject_bad_values():
    from attnmt.errors import AttnmtError

    with pytest.raises(AttnmtError, match="--max-batch-size"):
        ServeSettings.from_options(max_batch_size=0)
    assert ServeSettings.from_options(batching=False, max_wait_ms=50).max_batch_size == 1
    assert ServeSettings.from_options(max_texts=None).max_texts == ServeSettings().max_texts


# ---- malformed input ------------------------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("body, headers, status, field", [
    (b'{"text": ', JSON, 400, "body"),
    (b"\xff\xfe\x00\x01", JSON, 400, "body"),
    (b'{"text": "\xc3\x28"}', JSON, 400, "body"),  # invalid UTF-8
    ('{"text": "é"}'.encode("latin-1"), JSON, 400, "body"),
    (b"[" * 3000, JSON, 400, "body"),  # nesting deeper than the JSON parser goes
    (b'{"text": ' + b"[" * 1500 + b"]" * 1500 + b"}", JSON, 400, "body"),
    (b"", JSON, 422, "body"),
    (b"null", JSON, 422, "body"),
    (b"[1, 2]", JSON, 422, "body"),
    (b'"a b c"', JSON, 422, "body"),
    (b"42", JSON, 422, "body"),
    (b"{}", JSON, 422, "text, texts"),
    (b'{"text": null}', JSON, 422, "text"),  # absent, or a string: the schema says so too
    (b'{"text": null, "texts": ["a"]}', JSON, 422, "text"),
    (b'{"texts": []}', JSON, 422, "texts"),
    (b'{"text": 5}', JSON, 422, "text"),
    (b'{"text": ["a"]}', JSON, 422, "text"),
    (b'{"text": {"a": 1}}', JSON, 422, "text"),
    (b'{"text": true}', JSON, 422, "text"),
    (b'{"texts": "a b"}', JSON, 422, "texts"),
    (b'{"texts": [1]}', JSON, 422, "texts[0]"),
    (b'{"texts": ["a", ["b"]]}', JSON, 422, "texts[1]"),
    (b'{"texts": ["a", null]}', JSON, 422, "texts[1]"),
    (b'{"text": "a", "texts": ["b"]}', JSON, 422, "text, texts"),
    (b'{"text": "a", "beam_size": "3"}', JSON, 422, "beam_size"),
    (b'{"text": "a", "beam_size": 2.5}', JSON, 422, "beam_size"),
    (b'{"text": "a", "beam_size": true}', JSON, 422, "beam_size"),
    (b'{"text": "a", "n_best": [2]}', JSON, 422, "n_best"),
    (b'{"text": "a", "return_attention": "yes"}', JSON, 422, "return_attention"),
    (b'{"text": "a", "beam": 3}', JSON, 422, "beam"),
    (b'{"text": "\\ud800"}', JSON, 422, "text"),  # a lone surrogate is not text
    (b'{"texts": ["a", "\\udfff b"]}', JSON, 422, "texts[1]"),
    (b'{"text": "a"}', {}, 422, "body"),  # no Content-Type
    (b'{"text": "a"}', {"content-type": "text/plain"}, 422, "body"),
    (b"text=a", {"content-type": "application/x-www-form-urlencoded"}, 422, "body"),
    (b'{"text": "a"}', {"content-type": "application/json", "content-length": "abc"}, 400, "Content-Length"),
])
def test_malformed_requests_get_4xx_naming_the_field(client, body, headers, status, field):
    response = client.post("/translate", content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.startswith(field), error
    assert len(response.text) < 4000  # the answer does not echo a big input back


def test_wrong_methods_and_paths(client):
    for response, status in ((client.get("/translate"), 405), (client.post("/health"), 405),
                             (client.get("/no/such/thing"), 404), (client.delete("/info"), 405)):
        assert response.status_code == status
        assert response.json()["error"]


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x80, 0x2FFF), rng.randint(0xAC00, 0xD7A3),
                                       rng.randint(0x1F300, 0x1F6FF)])) for _ in range(rng.randint(0, 12)))
    if kind == "int":
        return rng.choice([0, -1, 1, 2, 10**20, -(10**20), rng.randint(-100, 100)])
    if kind == "float":
        return rng.choice([0.5, -1.5, 1e308, 3.0])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["text", "texts", "beam_size", "n_best", "return_attention", "x"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def test_fuzzed_bodies_never_give_a_500(client):
    rng = random.Random(5)
    statuses = set()
    for i in range(120):
        if i % 3 == 0:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        else:
            value = random_json(rng)
            if i % 3 == 2:  # valid-looking: a text and maybe an option, either of which may be junk
                value = {"text": random_json(rng) if rng.random() < 0.2 else random_json(rng, depth=4) or ""}
                if rng.random() < 0.5:
                    value[rng.choice(["beam_size", "n_best"])] = rng.choice([1, 2, 3, 0, "2", None, 2.0])
            body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        response = client.post("/translate", content=body, headers=JSON)
        assert response.status_code in (200, 400, 413, 422), (body[:200], response.status_code, response.text)
        assert "error" in response.json() or response.status_code == 200
        statuses.add(response.status_code)
    assert {200, 400, 422} <= statuses
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["incoming_requests"] == 0  # still serving, and counting right
    assert post(client, {"text": "a b c"}).json()["translations"][0]["text"] == "c b a"


# ---- the other endpoints and the page -------------------------------------------------------------------------------

def test_health(client):
    post(client, {"text": "a b"})
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["queued_texts"] == 0 and body["incoming_requests"] == 0
    assert body["batching"]["model_calls"] >= 1 and body["batching"]["requests"] >= 1


def test_info(client, reversal_translator, settings):
    info = client.get("/info").json()
    model = info["model"]
    assert model["family"] == "rnn" and model["settings"]["cell"] == "gru"
    assert model["attention"] == "additive" and model["settings"]["attention"]["normalizer"] == "softmax"
    assert (model["attention_layers"], model["attention_heads"]) == (1, 1)
    assert "GRU" in model["summary"] and "additive attention" in model["summary"]
    assert (info["source_language"], info["target_language"]) == ("src", "tgt")  # the tiny config's defaults
    assert info["source_vocab_size"] == reversal_translator.tokenizer.src_vocab_size
    assert info["target_vocab_size"] == reversal_translator.tokenizer.tgt_vocab_size
    assert model["parameters"] == sum(p.numel() for p in reversal_translator.model.parameters())
    assert info["device"] == str(reversal_translator.device)
    assert info["limits"]["max_text_chars"] == settings.max_text_chars
    assert info["defaults"]["beam_size"] == 5
    assert info["batching"]["max_batch_size"] == settings.max_batch_size


def test_openapi_schema_documents_the_api_and_its_limits(client, settings):
    schema = client.get("/openapi.json").json()
    assert {"/translate", "/health", "/info"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["TranslateRequest"]
    text, texts = request["properties"]["text"], request["properties"]["texts"]
    assert text["type"] == "string" and texts["type"] == "array"  # not nullable: absent is how to leave one out
    assert text["maxLength"] == settings.max_text_chars and texts["maxItems"] == settings.max_texts
    assert request["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]  # exactly one of them
    assert request["additionalProperties"] is False
    assert "TranslateResponse" in schema["components"]["schemas"]


def test_page_and_its_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for needle in ('id="source"', 'id="translate"', 'id="heatmap"', 'id="nbest"', "/static/app.js"):
        assert needle in page.text
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from elsewhere
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/shared.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200
    font = client.get("/fonts/NanumGothic.ttf")
    assert font.status_code == 200 and font.headers["content-type"] == "font/ttf" and len(font.content) > 100_000


def test_app_restarts_with_its_lifespan(reversal_translator, settings):
    app = create_app(reversal_translator, settings)
    for _ in range(2):
        with TestClient(app) as test_client:
            assert post(test_client, {"text": "a b c"}).json()["translations"][0]["text"] == "c b a"


# ---- batching -------------------------------------------------------------------------------------------------------

class CountingTranslator:
    """The real translator, with each `translate` call recorded; a text containing "boom" makes the call fail."""

    def __init__(self, inner, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.calls: list[tuple[list[str], dict]] = []
        self._lock = threading.Lock()

    def translate(self, texts, **options):
        with self._lock:
            self.calls.append((list(texts), dict(options)))
        if self.delay:
            time.sleep(self.delay)
        if any("boom" in text for text in texts):
            raise RuntimeError("boom")
        return self.inner.translate(texts, **options)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def concurrent_posts(app, payloads: list[dict]) -> list[httpx.Response]:
    """POST all payloads at once through httpx against the ASGI app (the batcher starts on the first request)."""
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://attnmt.test") as http:
            return await asyncio.gather(*(http.post("/translate", json=p) for p in payloads))
    finally:
        await app.state.batcher.close()


def test_concurrent_requests_share_a_model_call(reversal_translator, reversal_model):
    counting = CountingTranslator(reversal_translator)
    app = create_app(counting, ServeSettings(max_batch_size=64, max_wait_ms=200))
    texts = sources(reversal_model, 12)
    responses = asyncio.run(concurrent_posts(app, [{"text": t, "beam_size": 2} for t in texts]))
    assert all(r.status_code == 200 for r in responses)
    assert len(counting.calls) < len(texts)  # batched: 12 requests, fewer calls (1 unless the machine stalls)
    assert max(len(call_texts) for call_texts, _ in counting.calls) > 1
    expected = [t.text for t in reversal_translator.translate(texts, beam_size=2)]
    assert [r.json()["translations"][0]["text"] for r in responses] == expected  # each its own result


def test_batches_never_mix_search_options(reversal_translator, reversal_model):
    counting = CountingTranslator(reversal_translator)
    app = create_app(counting, ServeSettings(max_batch_size=64, max_wait_ms=200))
    texts = sources(reversal_model, 12)
    payloads = [{"text": t, "beam_size": 1 if i % 2 else 3, **({"n_best": 2} if i % 4 == 0 else {})}
                for i, t in enumerate(texts)]
    responses = asyncio.run(concurrent_posts(app, payloads))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sum(len(call_texts) for call_texts, _ in counting.calls) == len(texts)
    assert len(counting.calls) < len(texts)
    assert {(o["beam_size"], o["n_best"]) for _, o in counting.calls} == {(1, 1), (3, 1), (3, 2)}
    for payload, response in zip(payloads, responses):
        options = {"beam_size": payload["beam_size"], "n_best": payload.get("n_best", 1)}
        expected = reversal_translator.translate([payload["text"]], **options)[0]
        result = response.json()["translations"][0]
        assert result["text"] == expected.text
        assert len(result.get("n_best") or [None]) == options["n_best"]


def test_multi_text_requests_come_back_whole_and_in_order(reversal_translator, reversal_model):
    counting = CountingTranslator(reversal_translator)
    app = create_app(counting, ServeSettings(max_batch_size=8, max_wait_ms=200))
    texts = sources(reversal_model, 12)
    payloads = [{"texts": texts[0:3]}, {"texts": texts[3:4]}, {"texts": texts[4:9]}, {"texts": texts[9:12]}]
    responses = asyncio.run(concurrent_posts(app, payloads))
    for payload, response in zip(payloads, responses):
        expected = [t.text for t in reversal_translator.translate(payload["texts"])]
        assert [r["text"] for r in response.json()["translations"]] == expected
    assert all(len(call_texts) <= 8 for call_texts, _ in counting.calls)
    assert len(counting.calls) < len(payloads)


def test_batching_off_translates_each_request_alone(reversal_translator, reversal_model):
    counting = CountingTranslator(reversal_translator)
    app = create_app(counting, ServeSettings.unbatched())
    texts = sources(reversal_model, 6)
    responses = asyncio.run(concurrent_posts(app, [{"text": t} for t in texts]))
    assert all(r.status_code == 200 for r in responses)
    assert sorted(call_texts[0] for call_texts, _ in counting.calls) == sorted(texts)
    assert all(len(call_texts) == 1 for call_texts, _ in counting.calls)


def test_a_failing_request_does_not_fail_its_batch(reversal_translator, reversal_model):
    counting = CountingTranslator(reversal_translator)
    app = create_app(counting, ServeSettings(max_batch_size=64, max_wait_ms=200))
    texts = sources(reversal_model, 5)
    payloads = [{"text": t} for t in texts[:2]] + [{"text": "boom"}] + [{"text": t} for t in texts[2:]]
    responses = asyncio.run(concurrent_posts(app, payloads))
    assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200]  # a model bug, reported as one
    assert "internal error" in responses[2].json()["error"]
    assert [r.json()["translations"][0]["text"] for r in responses if r.status_code == 200] == \
        [t.text for t in reversal_translator.translate(texts)]


def test_a_full_queue_answers_503(reversal_translator):
    counting = CountingTranslator(reversal_translator, delay=0.3)
    app = create_app(counting, ServeSettings(max_batch_size=1, max_wait_ms=0, max_queued_texts=2))
    responses = asyncio.run(concurrent_posts(app, [{"text": "a b"}] * 6))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) >= 2 and 503 in statuses and set(statuses) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"].startswith("busy")


# ---- the batcher alone (no model) -----------------------------------------------------------------------------------

def echo_batcher(calls: list, **settings) -> Batcher:
    def translate(texts, **options):
        calls.append((list(texts), options))
        return [f"{text}/{options.get('beam_size')}" for text in texts]

    return Batcher(translate=translate, **settings)


def test_batcher_gathers_splits_and_groups():
    calls: list = []

    async def main():
        batcher = echo_batcher(calls, max_batch_size=4, max_wait_ms=100)
        jobs = [batcher.submit([f"t{i}"], beam_size=1 + i % 2) for i in range(10)]
        results = await asyncio.gather(*jobs)
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert results == [[f"t{i}/{1 + i % 2}"] for i in range(10)]
    assert all(len(texts) <= 4 for texts, _ in calls)
    assert all(len({int(text[1:]) % 2 for text in texts}) == 1 for texts, _ in calls)  # one beam size per call
    assert len(calls) == 4  # beam 1: 5 texts → 4 + 1; beam 2: 5 texts → 4 + 1


def test_batcher_survives_cancelled_requests_and_closes():
    calls: list = []

    async def main():
        batcher = echo_batcher(calls, max_batch_size=8, max_wait_ms=50)
        gone = asyncio.ensure_future(batcher.submit(["gone"], beam_size=1))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await batcher.submit(["kept"], beam_size=1)
        assert await batcher.submit([], beam_size=1) == []
        await batcher.close()
        with pytest.raises(BatcherClosed):
            await batcher.submit(["late"], beam_size=1)
        return kept

    assert asyncio.run(main()) == ["kept/1"]
    assert [texts for texts, _ in calls] == [["kept"]]  # the cancelled request never reached the model


def test_batcher_queue_limit():
    async def main():
        batcher = echo_batcher([], max_batch_size=1, max_wait_ms=0, max_queued_texts=3)
        first = asyncio.ensure_future(batcher.submit(["a", "b"], beam_size=1))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(["c", "d"], beam_size=1)
        result = await first
        await batcher.close()
        return result

    assert asyncio.run(main()) == ["a/1", "b/1"]


# ---- serve(): what `attnmt serve` runs ------------------------------------------------------------------------------

def test_serve_rejects_a_directory_that_is_not_a_model(tmp_path):
    from attnmt.errors import AttnmtError
    from attnmt.serve import serve

    with pytest.raises(AttnmtError, match="not an attnmt model directory"):
        serve(tmp_path)


def test_serve_runs_a_real_server(reversal_model):
    with served(reversal_model.model_dir, "max_texts=3") as (url, port, output):
        answer = httpx.post(url + "/translate", json={"texts": ["a b c", "d e"]}, timeout=30).json()
        assert [t["text"] for t in answer["translations"]] == ["c b a", "e d"]
        assert httpx.post(url + "/translate", json={"texts": ["a"] * 4}, timeout=30).status_code == 422
        assert httpx.get(url + "/info", timeout=5).json()["limits"]["max_texts"] == 3
    assert f"at http://127.0.0.1:{port}/" in output[0]  # the start-up line says where


def test_a_model_without_attention(tmp_path, tiny_config):
    from attnmt.training import Trainer
    from attnmt.translator import Translator

    config = tiny_config(tmp_path / "plain", {"model.attention": "none", "training.max_steps": 2,
                                              "training.validate_every": 2})
    Trainer(config, show_progress=False).train()
    with TestClient(create_app(Translator.load(tmp_path / "plain"))) as plain:
        model = plain.get("/info").json()["model"]
        assert model["attention"] == "none" and (model["attention_layers"], model["attention_heads"]) == (0, 0)
        response = post(plain, {"text": "a b c", "return_attention": True, "beam_size": 1})
        assert response.status_code == 200, response.text
        result = response.json()["translations"][0]
        assert result["attention"] is None and result["source_tokens"] == ["▁a", "▁b", "▁c"]
