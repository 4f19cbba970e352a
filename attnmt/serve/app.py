"""The FastAPI app: `POST /translate`, `GET /health`, `GET /info`, the page at `/`, and FastAPI's `/openapi.json`.

Every answer to a bad request is a 4xx JSON object `{"error": "<field>: <what is wrong>", "detail": ...}`: 400 for a
body that is not JSON, 413 for a body over `max_body_bytes`, 422 for JSON that does not fit the schema (wrong types,
unknown fields, empty lists, limits). 503 means the server is busy or shutting down; a 500 is a bug in attnmt.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations, and the request model is
# built per app (its limits come from the settings), so it is a local name that string annotations could not find.

import io
import logging
import math
import time
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

import attnmt
from attnmt import fonts
from attnmt.config import SearchConfig
from attnmt.errors import ConfigError
from attnmt.models import ModelDescription
from attnmt.serve import ServeSettings
from attnmt.serve.batcher import Batcher, BatcherClosed, QueueFull
from attnmt.translator import Translation, Translator, attention_view

log = logging.getLogger("attnmt.serve")

STATIC = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {
    # The page loads nothing from elsewhere, runs no inline script and may not be framed.
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}
ATTENTION_DECIMALS = 4


def _web_font(path: Path) -> bytes:
    """The font without its TSI* tables (VTT hinting sources): Chromium's font sanitizer rejects the empty TSI3 of
    the NanumGothic that koreanize-matplotlib ships. fontTools comes with matplotlib, also a dependency."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return path.read_bytes()
    font = TTFont(str(path), lazy=True)
    for tag in [tag for tag in font.keys() if tag.startswith("TSI")]:
        del font[tag]
    buffer = io.BytesIO()
    font.save(buffer)
    return buffer.getvalue()


# ---- response models ----------------------------------------------------------------------------------------------

class Hypothesis(BaseModel):
    text: str
    score: float | None = Field(description="log-probability Σ log p(y_t | y_<t, x); null if not finite")


class TranslationOut(BaseModel):
    text: str = Field(description="the best translation, detokenized")
    score: float | None = Field(description="its log-probability Σ log p(y_t | y_<t, x); null if not finite")
    n_best: list[Hypothesis] | None = Field(None, description="the n best hypotheses, best first (when n_best > 1)")
    source_tokens: list[str] | None = Field(None, description="source subwords: the columns of `attention` "
                                                              "(with return_attention)")
    target_tokens: list[str] | None = Field(None, description="target subwords and a final `</s>`: the rows of "
                                                              "`attention` (with return_attention)")
    attention: list[list[float]] | None = Field(None, description="[len(target_tokens)][len(source_tokens)] weights "
                                                                  "(the last attention layer, averaged over its "
                                                                  "heads); null for a model without attention")
    attention_heads: list[list[list[list[float]]]] | None = Field(
        None, description="[layers][heads][len(target_tokens)][len(source_tokens)]: every attention layer and head, "
                          "when the model has more than one (see /info model.attention_layers, attention_heads)")
    attention_layer_means: list[list[list[float]]] | None = Field(
        None, description="[layers][len(target_tokens)][len(source_tokens)]: each layer averaged over its heads, "
                          "with attention_heads")


class TranslateResponse(BaseModel):
    translations: list[TranslationOut] = Field(description="one per text, in request order")
    beam_size: int
    n_best: int
    elapsed_ms: float = Field(description="time in the server, queueing and batching included")


class ErrorResponse(BaseModel):
    error: str = Field(description="what is wrong, starting with the field it is about")
    detail: Any = None


class HealthResponse(BaseModel):
    status: Literal["ok"]
    uptime_s: float
    queued_texts: int = Field(description="texts waiting for the model")
    incoming_requests: int = Field(description="translation requests being read or validated")
    batching: dict[str, Any]


class InfoResponse(BaseModel):
    name: str
    model: ModelDescription
    device: str = Field(description="where the model translates: cpu, cuda:0, ...")
    examples: list[str] = Field(description="a few source sentences to try (the model directory's examples.txt)")
    source_language: str
    target_language: str
    source_vocab_size: int
    target_vocab_size: int
    defaults: dict[str, Any]
    limits: dict[str, Any]
    batching: dict[str, Any]


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": description} for status, description in (
    (400, "the body is not JSON"), (413, "the body is over max_body_bytes"),
    (422, "the JSON does not fit the schema or a limit"), (503, "busy or shutting down: retry later"))}


# ---- the request model: its limits come from the settings -------------------------------------------------------

def request_model(settings: ServeSettings, defaults: SearchConfig) -> type[BaseModel]:
    """The body of POST /translate; its limits come from the settings, its search defaults from `defaults` (the
    model's, within the server's limits), and beam_size/n_best are checked by `SearchConfig.resolve`, as everywhere."""
    Text = Annotated[str, StringConstraints(max_length=settings.max_text_chars)]

    class TranslateRequest(BaseModel):
        """Give `text` (one string) or `texts` (a list of strings)."""

        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
            {"text": "나는 학생이다."},
            {"texts": ["나는 학생이다.", "고마워요."], "beam_size": 5, "n_best": 3, "return_attention": True}]})

        text: Text | None = Field(None, description=f"one text, at most {settings.max_text_chars} characters")
        texts: list[Text] | None = Field(None, min_length=1, max_length=settings.max_texts,
                                         description=f"1 to {settings.max_texts} texts of at most "
                                                     f"{settings.max_text_chars} characters each")
        beam_size: int | None = Field(None, ge=1, le=settings.max_beam_size,
                                      description=f"1 = greedy; default {defaults.beam_size} (the model's config)")
        n_best: int | None = Field(None, ge=1, le=settings.max_n_best,
                                   description=f"hypotheses to return per text, at most beam_size; default "
                                               f"{defaults.n_best}, or beam_size if that is smaller")
        return_attention: bool = Field(False, description="also return the source/target tokens and the attention")

        @model_validator(mode="after")
        def _consistent(self) -> "TranslateRequest":
            # Errors here are about the whole body; their messages start with the fields they are about.
            if self.text is None and self.texts is None:
                raise ValueError("text, texts: give `text` (one string) or `texts` (a list of strings)")
            if self.text is not None and self.texts is not None:
                raise ValueError("text, texts: give either `text` or `texts`, not both")
            self.search_options()
            return self

        def search_options(self) -> dict[str, int]:
            try:
                search = defaults.resolve(beam_size=self.beam_size, n_best=self.n_best)
            except ConfigError as error:
                raise ValueError(f"n_best: {error}") from None
            return {"beam_size": search.beam_size, "n_best": search.n_best}

    return TranslateRequest


# ---- errors -------------------------------------------------------------------------------------------------------

def _field_name(loc: tuple | list) -> str:
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


def _short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _validation_error(errors: list[dict]) -> tuple[int, str, list[dict]]:
    """(status, message, detail) for pydantic/FastAPI errors; the detail leaves out the input (it may be huge)."""
    detail = [{"loc": list(e.get("loc", ())), "msg": _short(e.get("msg", "")), "type": e.get("type", "")}
              for e in errors]
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    kind, field = first.get("type", ""), _field_name(first.get("loc", ("body",)))
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    if kind == "json_invalid":
        position = first.get("loc", ("body", "?"))[-1]
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        return 400, f"body: malformed JSON ({reason} at character {position})", detail
    if kind == "missing" and field == "body":
        return 422, 'body: missing; send a JSON object such as {"text": "..."} with Content-Type: application/json', \
            detail
    if field == "body" and isinstance(first.get("input"), (bytes, bytearray)):
        return 422, "body: not read as JSON; send it with Content-Type: application/json", detail
    if kind == "value_error" and field == "body":  # from the model validator: the message names the fields
        return 422, _short(message), detail
    if kind == "extra_forbidden":
        return 422, f"{field}: unknown field; the fields are text, texts, beam_size, n_best, return_attention", detail
    return 422, f"{field}: {_short(message)}", detail


def _error_response(status: int, message: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail if detail is not None else message}, status_code=status,
                        headers=headers)


SUBMITTED = "attnmt.submitted"  # scope key: this request has reached the batcher


class _Guard:
    """Pure ASGI middleware: caps the request body at `max_bytes` (413, whether Content-Length is given or the body
    comes in chunks), adds safety headers (the page gets a strict Content-Security-Policy), and counts the
    translation requests on their way to the batcher (`Batcher.incoming`), so that it waits for company only when
    some is coming."""

    def __init__(self, app, max_bytes: int, batcher: Batcher) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.batcher = batcher

    def _too_large(self) -> str:
        return f"body: larger than the limit of {self.max_bytes} bytes (max_body_bytes); send fewer or shorter texts"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope.get("path", "") == "/" or scope.get("path", "").startswith("/static/")

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers.extend((k.encode(), v.encode()) for k, v in PAGE_HEADERS.items())
                message = {**message, "headers": headers}
            await send(message)

        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await _error_response(400, "Content-Length: not a number")(scope, receive, send_with_headers)
                return
            if declared > self.max_bytes:
                await _error_response(413, self._too_large())(scope, receive, send_with_headers)
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, self._too_large())
            return message

        counted = scope.get("path") == "/translate" and scope.get("method") == "POST"
        if counted:
            self.batcher.expect(+1)
        try:
            await self.app(scope, limited_receive, send_with_headers)
        finally:
            if counted and not scope.get(SUBMITTED):  # rejected before it reached the batcher
                self.batcher.expect(-1)


# ---- results ------------------------------------------------------------------------------------------------------

def _score(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _rounded(matrix: np.ndarray) -> list:
    """Attention weights as JSON: NaN/inf made finite, ATTENTION_DECIMALS decimals."""
    matrix = np.nan_to_num(np.asarray(matrix, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return matrix.round(ATTENTION_DECIMALS).tolist()


def _translation_out(result: Translation, with_n_best: bool, with_attention: bool) -> TranslationOut:
    fields: dict[str, Any] = {"text": result.text, "score": _score(result.score)}
    if with_n_best:
        fields["n_best"] = [Hypothesis(text=h.text, score=_score(h.score)) for h in (result.n_best or [result])]
    if with_attention:
        fields["source_tokens"] = list(result.source_tokens)
        fields["target_tokens"] = result.target_tokens_with_eos if result.source_tokens else []
        heads = result.attention_heads  # [L, H, T, S] or None
        fields["attention"] = None if heads is None else _rounded(result.attention) if heads.size else []
        if heads is not None and heads.shape[0] * heads.shape[1] > 1:  # an empty text: both empty lists
            fields["attention_heads"] = _rounded(heads) if heads.size else []
            fields["attention_layer_means"] = [_rounded(attention_view(heads, layer))
                                               for layer in range(1, heads.shape[0] + 1)] if heads.size else []
    return TranslationOut(**fields)


# ---- the app ------------------------------------------------------------------------------------------------------

def create_app(translator: Translator, settings: ServeSettings | None = None, examples: list[str] | None = None
               ) -> FastAPI:
    """A FastAPI app serving `translator`, offering `examples` on the page; the batcher starts and stops with the
    app's lifespan (use `with TestClient(app)` in tests, so that startup and shutdown run)."""
    settings = settings or ServeSettings()
    config = translator.config
    model = translator.describe()
    defaults = translator.search_settings(beam_size=min(config.search.beam_size, settings.max_beam_size))
    defaults = defaults.resolve(n_best=min(defaults.n_best, settings.max_n_best))  # the model's, within the limits
    TranslateRequest = request_model(settings, defaults)
    batcher = Batcher(translate=translator.translate, max_batch_size=settings.max_batch_size,
                      max_wait_ms=settings.max_wait_ms, max_queued_texts=settings.max_queued_texts,
                      thread_initializer=partial(torch.set_num_threads, settings.threads))
    started = time.monotonic()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(title="attnmt", version=attnmt.__version__, lifespan=lifespan,
                  description="Translate with an attnmt model and see where it looked: `POST /translate`. "
                              "The page at `/` draws the attention.")
    app.state.settings = settings
    app.state.translator = translator
    app.state.batcher = batcher
    batcher.incoming = 0
    app.add_middleware(_Guard, max_bytes=settings.max_body_bytes, batcher=batcher)

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        status, message, detail = _validation_error(list(error.errors()))
        return _error_response(status, message, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 400 and message == "There was an error parsing the body":
            message = "body: cannot be read as JSON (not UTF-8, or nested too deeply)"
        elif error.status_code == 404:
            message = f"{request.url.path}: no such endpoint; see /docs"
        elif error.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed; see /docs"
        return _error_response(error.status_code, message, headers=getattr(error, "headers", None))

    @app.post("/translate", response_model=TranslateResponse, response_model_exclude_unset=True,
              responses=ERROR_RESPONSES, summary="Translate one text or a list of texts")
    async def translate(request: TranslateRequest, http: Request) -> Any:  # type: ignore[valid-type]
        """Translations in request order, with scores; `n_best` hypotheses when n_best > 1; with
        `return_attention`, the source tokens, the target tokens (ending in `</s>`) and the attention matrix
        (one row per target token, one column per source token). An empty text gives an empty translation."""
        begin = time.perf_counter()
        texts = [request.text] if request.text is not None else list(request.texts)
        options = request.search_options()
        http.scope[SUBMITTED] = True
        batcher.expect(-1)  # no await between this and the job joining the queue in `submit`
        try:
            # text-only requests skip gathering attention; the two kinds are never batched together
            results = await batcher.submit(texts, attention=request.return_attention, **options)
        except QueueFull as error:
            return _error_response(503, f"busy: {error}; retry shortly", headers={"retry-after": "1"})
        except BatcherClosed as error:
            return _error_response(503, f"unavailable: {error}")
        except Exception as error:  # a bug, not the client's doing: say so, keep serving
            log.exception("translation failed")
            return _error_response(500, f"internal error while translating: {type(error).__name__}")
        items = [_translation_out(r, options["n_best"] > 1, request.return_attention) for r in results]
        return TranslateResponse(translations=items, elapsed_ms=round((time.perf_counter() - begin) * 1000, 2),
                                 **options)

    @app.get("/health", response_model=HealthResponse, summary="Liveness, queue length and batching counters")
    async def health() -> HealthResponse:
        return HealthResponse(status="ok", uptime_s=round(time.monotonic() - started, 1),
                              queued_texts=batcher.queued_texts, incoming_requests=batcher.incoming or 0,
                              batching=batcher.stats.as_dict())

    info = InfoResponse(
        name=config.name, model=model, device=str(translator.device),
        examples=list(examples or []),
        source_language=config.data.src_lang, target_language=config.data.tgt_lang,
        source_vocab_size=translator.tokenizer.src_vocab_size, target_vocab_size=translator.tokenizer.tgt_vocab_size,
        defaults={"beam_size": defaults.beam_size, "n_best": defaults.n_best,
                  "length_penalty": defaults.length_penalty, "max_length_ratio": defaults.max_length_ratio},
        limits={"max_text_chars": settings.max_text_chars, "max_texts": settings.max_texts,
                "max_beam_size": settings.max_beam_size, "max_n_best": settings.max_n_best,
                "max_body_bytes": settings.max_body_bytes},
        batching={"enabled": settings.batching, "max_batch_size": settings.max_batch_size,
                  "max_wait_ms": settings.max_wait_ms, "threads": settings.threads})

    @app.get("/info", response_model=InfoResponse, summary="The model: type, languages, vocabularies, attention")
    async def get_info() -> InfoResponse:
        return info

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    font_cache: dict[str, bytes] = {}

    @app.get("/fonts/" + fonts.HANGUL_FONT_FILE, include_in_schema=False)
    async def hangul_font() -> Response:
        # So that Korean shows on machines without a Hangul font; the CSS asks for it only when the page holds
        # Hangul (unicode-range).
        path = fonts.hangul_font_file()
        if path is None:
            raise StarletteHTTPException(404, "no Hangul font here: install koreanize-matplotlib")
        if "font" not in font_cache:
            font_cache["font"] = await run_in_threadpool(_web_font, path)
        return Response(font_cache["font"], media_type="font/ttf", headers={"cache-control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
