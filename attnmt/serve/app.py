"""The FastAPI app: `POST /translate`, `GET /health`, `GET /info`, the page at `/`, and FastAPI's `/openapi.json`.

Every answer to a bad request is a 4xx JSON object `{"error": "<field>: <what is wrong>", "detail": ...}`: 400 for a
body that is not JSON, 401 for POST /translate without the API key (when the server has one), 408 for a body not sent
within `body_timeout_s`, 413 for a body over `max_body_bytes` or a request over a limit the schema cannot say (a
text's source subwords, the decoding work, the attention returned), 421 for a Host header the server does not answer
to, 422 for JSON that does not fit the schema (wrong types, unknown fields, empty lists, limits; the schema at
/openapi.json says exactly what is accepted), 429 for a client over its rate limit, 501 for POST /trace on a model
served without PyTorch (lab.py). 503 means the server is busy or shutting down, 504 that the translation took longer
than `request_timeout_s`; a 500 is a bug in attnmt.

A server may serve several models (`create_app({name: translator, ...})`, `attnmt serve A B`): each is a
`ServedModel` with its own defaults and batcher; requests name one in `model` (the first by default), /info lists them.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations, and the request model is
# built per app (its limits come from the settings), so it is a local name that string annotations could not find.

import asyncio
import hmac
import io
import logging
import math
import re
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

import attnmt
from attnmt import fonts
from attnmt.config import LENGTH_SLACK, MAX_LENGTH_PENALTY, SAMPLING_OPTIONS, SearchConfig
from attnmt.errors import ConfigError, TextTooLong
from attnmt.models import ModelDescription
from attnmt.search import max_output_lengths
from attnmt.serve import ServeSettings, is_ip_address
from attnmt.serve.batcher import Batcher, BatcherClosed, QueueFull
from attnmt.translator import Translation, Translator, attention_view, check_source_lengths

log = logging.getLogger("attnmt.serve")

STATIC = Path(__file__).resolve().parent / "static"
PAGE_HEADERS = {
    # The page loads nothing from elsewhere, runs no inline script and may not be framed.
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}
ATTENTION_DECIMALS = 4
FAILING_AFTER = 3  # model calls failed in a row before /health says "failing"
SELF_CHECK_TEXT = "a"  # what the start-up self-check translates when the model directory offers no example
MODEL_PATHS = ("/translate", "/trace")  # POST endpoints that run the model: the API key and the rate limit guard them
PAGE_PATHS = ("/", "/lab")  # the pages (with /static/): they get PAGE_HEADERS


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
    score: float | None = Field(description="the ranking score: log_prob / ((5 + n) / 6) ** length_penalty, n its "
                                            "tokens with EOS (equal to log_prob for greedy search or "
                                            "length_penalty 0); null if not finite")
    log_prob: float | None = Field(description="log-probability Σ log p(y_t | y_<t, x); null if not finite")


class TranslationOut(BaseModel):
    text: str = Field(description="the best translation, detokenized")
    score: float | None = Field(description="its ranking score (see Hypothesis.score); null if not finite")
    log_prob: float | None = Field(description="its log-probability Σ log p(y_t | y_<t, x); null if not finite")
    n_best: list[Hypothesis] | None = Field(None, description="the n best hypotheses, best first by score (when "
                                                              "n_best > 1)")
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
    status: Literal["ok", "failing"] = Field(description="failing (with HTTP 503): the model cannot translate")
    error: str | None = Field(None, description="why it is failing: the start-up self-check's error, or failed calls")
    uptime_s: float
    queued_texts: int = Field(description="texts waiting for the model")
    incoming_requests: int = Field(description="translation requests being read or validated")
    batching: dict[str, Any]


class ServedModelInfo(BaseModel):
    name: str = Field(description="what a request sends as `model` to choose this model (a server of several)")
    model: ModelDescription
    device: str = Field(description="where the model translates: cpu, cuda:0, ...")
    examples: list[str] = Field(description="a few source sentences to try (the model directory's examples.txt)")
    source_language: str
    target_language: str
    defaults: dict[str, Any] = Field(description="its search defaults, within the server's limits")
    max_source_tokens: int = Field(description="source subwords in one text, for this model")


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
    api_key_required: bool = Field(description="POST /translate needs `Authorization: Bearer <key>`")
    models: list[ServedModelInfo] = Field(description="every model this server serves, the default first (the "
                                                      "fields above are the default's); with several, requests "
                                                      "choose one by its name in `model`")


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": description} for status, description in (
    (400, "the body is not JSON"), (401, "no API key, or not the server's (when it has one)"),
    (408, "the body was not sent within body_timeout_s"),
    (413, "the body is over max_body_bytes, a text over max_source_tokens subwords, or the request over "
          "max_request_work or max_attention_values (see /info limits)"),
    (421, "the Host header is not a name this server answers to"), (422, "the JSON does not fit the schema"),
    (429, "over the rate limit: retry after Retry-After seconds"), (503, "busy or shutting down: retry later"),
    (504, "not translated within request_timeout_s"))}
HOST_RESPONSES = {421: ERROR_RESPONSES[421]}


# ---- the request model: its limits come from the settings -------------------------------------------------------

def _whole_number(value: Any) -> Any:
    """2.0 → 2: JSON Schema's integers include the numbers whose fraction is zero, so the server takes them too."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


SEARCH_FIELDS = ("beam_size", "n_best", "length_penalty", "prefix", "min_length", "no_repeat_ngram_size", "sampling",
                 *SAMPLING_OPTIONS)  # the request's fields that `SearchConfig.resolve` checks


def _no_default(schema: dict) -> None:
    schema.pop("default", None)  # absent, not null: the schema says which of text and texts must be there


def _accepted(defaults: SearchConfig, **options) -> bool:
    """Whether `SearchConfig.resolve` takes these options: the one owner of the rules the schema states."""
    try:
        defaults.resolve(**options)
    except ConfigError:
        return False
    return True


def _n_best_rules(settings: ServeSettings, defaults: SearchConfig, **fixed) -> list[dict]:
    """JSON Schema clauses saying which beam_size each n_best needs (none where any will do), with the options
    `fixed`. They are found by asking `SearchConfig.resolve`, the one owner of the rule n_best ≤ beam_size, about
    every pair within the limits, so that the schema admits exactly the pairs the server accepts."""
    every_beam = list(range(1, settings.max_beam_size + 1))
    rules = []
    for n_best in range(1, settings.max_n_best + 1):
        beams = [beam for beam in every_beam if _accepted(defaults, beam_size=beam, n_best=n_best, **fixed)]
        default = _accepted(defaults, n_best=n_best, **fixed)
        if beams == every_beam and default:
            continue
        then: dict | bool = False  # no beam_size within the limits allows this n_best
        if beams:
            beam = {"type": "integer",
                    **({"minimum": beams[0]} if beams == every_beam[beams[0] - 1:] else {"enum": beams})}
            then = ({"properties": {"beam_size": {"anyOf": [beam, {"type": "null"}]}}} if default else
                    {"properties": {"beam_size": beam}, "required": ["beam_size"]})
        rules.append({"if": {"properties": {"n_best": {"const": n_best}}, "required": ["n_best"]}, "then": then})
    return rules


SAMPLING_EXAMPLES = {"top_k": 1, "top_p": 0.5, "temperature": 1.0, "seed": 0}  # a valid value of each option


def _sampling_option_rule(settings: ServeSettings, defaults: SearchConfig, name: str, **fixed) -> dict | None:
    """The clause saying with which beam_size the sampling option `name` may be given (it needs sampling on, and a
    config's default sampling gives way to a beam_size asked for), or None where it takes what `fixed` takes."""
    every_beam = list(range(1, settings.max_beam_size + 1))
    example = {name: SAMPLING_EXAMPLES[name]}
    beams = [beam for beam in every_beam if _accepted(defaults, beam_size=beam, **example, **fixed)]
    without_beam = _accepted(defaults, **example, **fixed)
    if (beams, without_beam) == ([beam for beam in every_beam if _accepted(defaults, beam_size=beam, **fixed)],
                                 _accepted(defaults, **fixed)):
        return None
    if not beams and not without_beam:
        return {"properties": {name: {"type": "null"}}}  # never
    allowed = [{"enum": beams}] if beams else []
    then = ({"properties": {"beam_size": {"anyOf": [*allowed, {"type": "null"}]} if beams else {"type": "null"}}}
            if without_beam else
            {"properties": {"beam_size": allowed[0]}, "required": ["beam_size"]})
    return {"if": {"properties": {name: {"not": {"type": "null"}}}, "required": [name]}, "then": then}


def _search_rules(settings: ServeSettings, defaults: SearchConfig) -> list[dict]:
    """The schema's clauses for the search options, per value of `sampling` (absent or null, false, true): which
    beam_size each n_best needs (`_n_best_rules`), which beam_size is allowed at all (sampling needs 1), and with which
    beam_size each sampling option may be given (`_sampling_option_rule`). Each is found by asking
    `SearchConfig.resolve`."""
    every_beam = list(range(1, settings.max_beam_size + 1))
    conditions = {None: {"properties": {"sampling": {"type": "null"}}},
                  False: {"properties": {"sampling": {"const": False}}, "required": ["sampling"]},
                  True: {"properties": {"sampling": {"const": True}}, "required": ["sampling"]}}
    by_value = {}
    for value in conditions:
        rules = _n_best_rules(settings, defaults, sampling=value)
        beams = [beam for beam in every_beam if _accepted(defaults, beam_size=beam, sampling=value)]
        if beams != every_beam:
            allowed = [{"enum": beams}] if beams else []
            rules.append({"properties": {"beam_size": {"anyOf": [*allowed, {"type": "null"}]} if
                                         _accepted(defaults, sampling=value) else {"enum": beams}}})
        rules += [rule for name in SAMPLING_EXAMPLES
                  if (rule := _sampling_option_rule(settings, defaults, name, sampling=value)) is not None]
        by_value[value] = rules
    if by_value[None] == by_value[False] == by_value[True]:
        return by_value[None]
    return [{"if": conditions[value], "then": {"allOf": rules}} for value, rules in by_value.items() if rules]


def per_model_rules(models: dict[str, SearchConfig], rules_of) -> list[dict]:
    """JSON Schema clauses `rules_of(defaults)` for each served model: as they are when every model has the same ones
    (one model: always), else each model's under `if model is that model` (the first: also when `model` is absent,
    as a request without it goes to the first)."""
    by_model = {name: rules_of(defaults) for name, defaults in models.items()}
    if all(rules == next(iter(by_model.values())) for rules in by_model.values()):
        return next(iter(by_model.values()))
    return [{"if": {"properties": {"model": {"const": name}}, **({"required": ["model"]} if i else {})},
             "then": {"allOf": rules}} for i, (name, rules) in enumerate(by_model.items()) if rules]


def per_model_default(models: dict[str, SearchConfig], show) -> str:
    """A default as a description says it: `show(defaults)` when every served model has the same, else each
    model's ("5 (rnn), 4 (transformer)")."""
    shown = {name: show(defaults) for name, defaults in models.items()}
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return ", ".join(f"{value} ({name})" for name, value in shown.items())


def model_choice(models: dict[str, SearchConfig]) -> Any:
    """The type of a request's `model` field: one of the served models' names."""
    return Literal[tuple(models)]  # type: ignore[valid-type]


def request_model(settings: ServeSettings, defaults: SearchConfig | dict[str, SearchConfig]) -> type[BaseModel]:
    """The body of POST /translate; its limits come from the settings, its search defaults from `defaults` (the
    model's, within the server's limits; a server of several models: each model's, by name, the first the default),
    and the search options are checked by `SearchConfig.resolve`, as everywhere. Its JSON schema says exactly what it
    accepts: one of `text` and `texts` (oneOf), and which beam_size each n_best needs and what sampling allows
    (`_search_rules`, per model). With several models it has a `model` field naming one."""
    models = dict(defaults) if isinstance(defaults, dict) else {"": defaults}
    names, several = list(models), len(models) > 1
    Text = Annotated[str, StringConstraints(max_length=settings.max_text_chars)]
    # (constraints before the validator: so they reach the JSON schema as minimum and maximum)
    BeamSize = Annotated[int, Field(ge=1, le=settings.max_beam_size), BeforeValidator(_whole_number)]
    NBest = Annotated[int, Field(ge=1, le=settings.max_n_best), BeforeValidator(_whole_number)]
    Count = Annotated[int, Field(ge=0), BeforeValidator(_whole_number)]
    search_rules = per_model_rules(models, partial(_search_rules, settings))
    default = partial(per_model_default, models)

    def schema_extra(schema: dict) -> None:
        schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
        if search_rules:
            schema["allOf"] = search_rules
        schema["examples"] = [
            {"text": "나는 학생이다."},
            {"texts": ["나는 학생이다.", "고마워요."], "beam_size": 5, "n_best": 3, "return_attention": True},
            {"text": "나는 학생이다.", "prefix": "I", "min_length": 3, "no_repeat_ngram_size": 3,
             "length_penalty": 0.6},
            {"texts": ["나는 학생이다.", "고마워요."], "sampling": True, "top_p": 0.9, "temperature": 0.8,
             "seed": 1}]

    class TranslateRequest(BaseModel):
        """Give `text` (one string) or `texts` (a list of strings); n_best may not exceed beam_size."""

        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra=schema_extra)

        text: Text = Field(None, description=f"one text, at most {settings.max_text_chars} characters",
                           json_schema_extra=_no_default)
        texts: list[Text] = Field(None, min_length=1, max_length=settings.max_texts, json_schema_extra=_no_default,
                                  description=f"1 to {settings.max_texts} texts of at most "
                                              f"{settings.max_text_chars} characters each")
        beam_size: BeamSize | None = Field(None, description=f"1 = greedy; default "
                                                             f"{default(lambda d: str(d.beam_size))} (the "
                                                             f"model's config)")
        n_best: NBest | None = Field(None, description=f"hypotheses to return per text, at most beam_size; default "
                                                       f"{default(lambda d: str(d.n_best))}, or beam_size if that is "
                                                       f"smaller")
        return_attention: bool = Field(False, description="also return the source/target tokens and the attention")
        length_penalty: Annotated[float, Field(ge=0, le=MAX_LENGTH_PENALTY)] | None = Field(
            None, description=f"alpha of the beam's length penalty ((5 + n) / 6) ** alpha: higher favours longer "
                              f"translations; default {default(lambda d: f'{d.length_penalty:g}')}")
        prefix: Text | None = Field(None, description=f"target text every translation of this request starts with: "
                                                      f"its subwords are forced first (their log-probabilities count "
                                                      f"in the score), then decoding goes on; default "
                                                      f"{default(lambda d: repr(d.prefix))}")
        min_length: Count | None = Field(None, description=f"target subwords (the prefix's included) before the end "
                                                           f"of the sentence is allowed; default "
                                                           f"{default(lambda d: str(d.min_length))}")
        no_repeat_ngram_size: Count | None = Field(
            None, description=f"n: a subword that would repeat an n-gram of the translation is never chosen; 0: off; "
                              f"default {default(lambda d: str(d.no_repeat_ngram_size))}")
        sampling: bool | None = Field(None, description=f"draw each subword from the model's distribution instead of "
                                                         f"taking the best (needs beam_size 1, its default then); "
                                                         f"default {default(lambda d: str(d.sampling).lower())}")
        top_k: Count | None = Field(None, description=f"with sampling: draw among the k most probable subwords; 0: "
                                                      f"all; default {default(lambda d: str(d.top_k))}")
        top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(
            None, description=f"with sampling: draw within the fewest most probable subwords whose probability sums "
                              f"to at least p; default {default(lambda d: f'{d.top_p:g}')}")
        temperature: Annotated[float, Field(gt=0)] | None = Field(
            None, description=f"with sampling: draw from p ** (1 / temperature); default "
                              f"{default(lambda d: f'{d.temperature:g}')}")
        seed: Count | None = Field(None, description="with sampling: the same seed draws the same translation of the "
                                                     "same text, whatever else is batched with it; default: a new "
                                                     "draw each time")
        if several:  # a server of several models: which one translates
            model: model_choice(models) = Field(names[0], description=f"the served model to translate with, by "  # type: ignore[valid-type]
                                                                      f"name (see /info models); default {names[0]}")

        @model_validator(mode="after")
        def _consistent(self) -> "TranslateRequest":
            # Errors here are about the whole body; their messages start with the fields they are about.
            if self.text is None and self.texts is None:
                raise ValueError("text, texts: give `text` (one string) or `texts` (a list of strings)")
            if self.text is not None and self.texts is not None:
                raise ValueError("text, texts: give either `text` or `texts`, not both")
            self.search_options()
            return self

        def all_texts(self) -> list[str]:
            return [self.text] if self.texts is None else list(self.texts)

        def field(self, index: int) -> str:
            """The name of text `index` in this request."""
            return "text" if self.texts is None else f"texts[{index}]"

        def chosen_model(self) -> str:
            """The name of the served model this request asks for (with one model: its name)."""
            return self.model if several else names[0]

        def search_options(self) -> dict[str, Any]:
            """The options of `Translator.translate`, resolved (`SearchConfig.resolve`) with the chosen model's
            defaults, so that requests asking for the same search share model calls; sampling's options only with
            sampling on."""
            try:
                search = models[self.chosen_model()].resolve(**{name: getattr(self, name) for name in SEARCH_FIELDS})
            except ConfigError as error:
                fields = [name for name in re.findall(r"`(\w+)`", str(error)) if name in SEARCH_FIELDS]
                raise ValueError(f"{', '.join(dict.fromkeys(fields)) or 'body'}: {error}") from None
            names = [name for name in SEARCH_FIELDS if search.sampling or name not in SAMPLING_OPTIONS]
            return {name: getattr(search, name) for name in names}

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


def _validation_error(errors: list[dict], fields: list[str]) -> tuple[int, str, list[dict]]:
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
        return 422, f"{field}: unknown field; the fields are {', '.join(fields)}", detail
    return 422, f"{field}: {_short(message)}", detail


def _error_response(status: int, message: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail if detail is not None else message}, status_code=status,
                        headers=headers)


SUBMITTED = "attnmt.submitted"  # scope key: this request has reached the batcher


class RateLimiter:
    """A token bucket per client address: `per_minute` requests a minute on average, `per_minute` at most in one go.
    Buckets that have filled up again are forgotten, so the table stays as small as the set of recent clients."""

    def __init__(self, per_minute: int, clock=time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, when counted)

    def wait(self, client: str) -> float:
        """0 if `client` may send a request now (it takes a token), else the seconds until it may."""
        now = self.clock()
        tokens, then = self.buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        if len(self.buckets) > 10_000:
            self._forget_full(now)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        self.buckets = {client: (tokens, then) for client, (tokens, then) in self.buckets.items()
                        if tokens + (now - then) * self.rate < self.capacity}


def _header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", []) if key == name), None)


def _host_name(value: bytes) -> str:
    """The name of a Host header, without its port: `example.org:8000` → example.org, `[::1]:8000` → ::1."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return (host.rpartition(":")[0] if host.count(":") == 1 else host).rstrip(".")


class _Guard:
    """Pure ASGI middleware in front of every endpoint. Before any body is read, it refuses a Host header that is not
    an IP address or one of `allowed_hosts` (421: a page on another site that rebinds its DNS name to this server
    cannot use it), and a POST /translate from a client over its `rate_limit` (429, with Retry-After) or without the
    API key when the server has one (401). It caps the request body at `max_body_bytes` (413, whether Content-Length
    is given or the body comes in chunks) and the time to send it at `body_timeout_s` (408), adds safety headers (the
    page gets a strict Content-Security-Policy), and counts the translation requests on their way to the batcher
    (`Batcher.incoming`: each model's batcher, as any of them may get the request), so that it waits for company only
    when some is coming."""

    def __init__(self, app, settings: ServeSettings, batchers: list[Batcher]) -> None:
        self.app = app
        self.max_bytes = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_s
        hosts = settings.allowed_hosts
        self.hosts = None if hosts is None or "*" in hosts else {host.lower().rstrip(".") for host in hosts}
        self.key = None if settings.api_key is None else settings.api_key.get_secret_value().encode()
        self.limiter = None if settings.rate_limit is None else RateLimiter(settings.rate_limit)
        self.batchers = batchers

    def _too_large(self) -> str:
        return f"body: larger than the limit of {self.max_bytes} bytes (max_body_bytes); send fewer or shorter texts"

    def _refusal(self, scope) -> JSONResponse | None:
        """The answer to a request refused before its body is read, or None."""
        host = _header(scope, b"host")
        if self.hosts is not None:
            name = None if host is None else _host_name(host)
            if name is None or not (name in self.hosts or is_ip_address(name)):
                shown = "missing" if name is None else f"{_short(name, 100)!r} is not a name this server answers to"
                return _error_response(421, f"Host: {shown}; if it should be, start the server with "
                                            f"--allowed-host NAME")
        if not (scope.get("path") in MODEL_PATHS and scope.get("method") == "POST"):
            return None
        if self.limiter is not None:
            client = (scope.get("client") or ("unknown",))[0]
            wait = self.limiter.wait(client)
            if wait > 0:
                return _error_response(429, f"rate limit: more than {self.limiter.capacity:g} translation requests a "
                                            f"minute from {client} (rate_limit); retry in {math.ceil(wait)} s",
                                       headers={"retry-after": str(math.ceil(wait))})
        if self.key is not None:
            scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
            if not (scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)):
                problem = ("the API key is not the server's" if scheme else
                           "this server needs an API key: send `Authorization: Bearer <key>`")
                return _error_response(401, f"Authorization: {problem}", headers={"www-authenticate": "Bearer"})
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        page = scope.get("path", "") in PAGE_PATHS or scope.get("path", "").startswith("/static/")

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers.extend((k.encode(), v.encode()) for k, v in PAGE_HEADERS.items())
                message = {**message, "headers": headers}
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        length = _header(scope, b"content-length")
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
        body_done = False
        deadline: float | None = None

        async def limited_receive():
            nonlocal received, body_done, deadline
            if body_done:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.body_timeout
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise StarletteHTTPException(408, f"body: not all sent within {self.body_timeout:g} s "
                                                  f"(body_timeout_s); send the whole body at once",
                                             headers={"connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, self._too_large())
                body_done = not message.get("more_body", False)
            return message

        counted = scope.get("path") == "/translate" and scope.get("method") == "POST"
        if counted:
            for batcher in self.batchers:
                batcher.expect(+1)
        try:
            await self.app(scope, limited_receive, send_with_headers)
        finally:
            if counted and not scope.get(SUBMITTED):  # rejected before it reached the batcher
                for batcher in self.batchers:
                    batcher.expect(-1)


# ---- results ------------------------------------------------------------------------------------------------------

def _score(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _rounded(matrix: np.ndarray) -> list:
    """Attention weights as JSON: NaN/inf made finite, ATTENTION_DECIMALS decimals."""
    matrix = np.nan_to_num(np.asarray(matrix, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return matrix.round(ATTENTION_DECIMALS).tolist()


def _translation_out(result: Translation, with_n_best: bool, with_attention: bool) -> TranslationOut:
    fields: dict[str, Any] = {"text": result.text, "score": _score(result.score), "log_prob": _score(result.log_prob)}
    if with_n_best:
        fields["n_best"] = [Hypothesis(text=h.text, score=_score(h.score), log_prob=_score(h.log_prob))
                            for h in (result.n_best or [result])]
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


def attention_numbers_per_position(model: ModelDescription) -> int:
    """Numbers a response with return_attention carries per target × source position (`_translation_out`): the default
    view, and for a model of several layers or heads also every head and every layer's mean; none without attention."""
    if not model.has_attention:
        return 0
    heads = model.attention_layers * model.attention_heads
    return 1 if heads == 1 else 1 + heads + model.attention_layers


def _render(results: list[Translation], options: dict[str, Any], with_attention: bool, begin: float) -> bytes:
    """The JSON body of a TranslateResponse (run off the event loop: a body with attention can be large)."""
    items = [_translation_out(r, options["n_best"] > 1, with_attention) for r in results]
    response = TranslateResponse(translations=items, elapsed_ms=round((time.perf_counter() - begin) * 1000, 2),
                                 beam_size=options["beam_size"], n_best=options["n_best"])
    return response.model_dump_json(exclude_unset=True).encode()


def _failing_calls(served: "ServedModel") -> str | None:
    """What /health says of a model whose last FAILING_AFTER or more calls failed, else None."""
    streak = served.batcher.stats.failure_streak
    return f"the last {streak} model calls failed; see the server's log" if streak >= FAILING_AFTER else None


def _health_problem(models: dict[str, "ServedModel"], several: bool, problem_of) -> str | None:
    """The models' problems (`problem_of(served)`), each named by its model when the server has several; None."""
    problems = [(name, problem) for name, served in models.items() if (problem := problem_of(served))]
    if not problems:
        return None
    return "; ".join(f"{name}: {problem}" if several else problem for name, problem in problems)


def _self_check(translator: Translator, defaults: SearchConfig, text: str) -> str | None:
    """Translate one text as a request with the default options would: what is wrong, or None. /health reports it,
    so that a server whose model cannot translate does not say ok."""
    try:
        [result] = translator.translate([text], beam_size=defaults.beam_size, n_best=defaults.n_best)
    except Exception as error:  # what a request would get as a 500
        return f"the model cannot translate: a test translation failed ({type(error).__name__}: {_short(error)})"
    if not math.isfinite(result.log_prob):
        return (f"the model cannot translate: a test translation's log-probability is {result.log_prob}, not a finite "
                f"number; check or retrain the model")
    return None


@dataclass
class ServedModel:
    """One model of a server: its name (what a request sends as `model`), translator, search defaults (the model's,
    within the server's limits), source limit, batcher and start-up self-check."""

    name: str
    translator: Translator
    description: ModelDescription
    defaults: SearchConfig
    max_source_tokens: int
    source_cap: str  # how a refusal names the source limit
    batcher: Batcher
    examples: list[str]
    self_check: str | None = None  # the start-up self-check's error (the lifespan runs it)

    def info(self) -> ServedModelInfo:
        config = self.translator.config
        return ServedModelInfo(name=self.name, model=self.description, device=str(self.translator.device),
                               examples=self.examples, source_language=config.data.src_lang,
                               target_language=config.data.tgt_lang,
                               defaults={"max_length_ratio": self.defaults.max_length_ratio,
                                         **{name: getattr(self.defaults, name) for name in SEARCH_FIELDS}},
                               max_source_tokens=self.max_source_tokens)


def served_model(name: str, translator: Translator, settings: ServeSettings, examples: list[str] | None
                 ) -> ServedModel:
    """`translator` as a server serves it under `settings`."""
    config = translator.config
    defaults = translator.search_settings(beam_size=settings.max_beam_size if config.search.beam_size >
                                          settings.max_beam_size else None)
    defaults = defaults.resolve(n_best=min(defaults.n_best, settings.max_n_best))  # the model's, within the limits
    source_cap = ("max_source_tokens" if settings.max_source_tokens else
                  "max_source_tokens: the model's data.max_length, the longest source it was trained on")
    batcher = Batcher(translate=translator.translate, max_batch_size=settings.max_batch_size,
                      max_wait_ms=settings.max_wait_ms, max_queued_texts=settings.max_queued_texts,
                      thread_initializer=partial(torch.set_num_threads, settings.threads))
    batcher.incoming = 0
    return ServedModel(name, translator, translator.describe(), defaults,
                       settings.max_source_tokens or translator.max_source_tokens, source_cap, batcher,
                       list(examples or []))


def served_models(translator: Translator | Mapping[str, Translator], settings: ServeSettings,
                  examples: list[str] | Mapping[str, list[str]] | None) -> dict[str, ServedModel]:
    """The models of a server by name, the default first: one translator (named by its config), or several by name;
    `examples`: the first model's, or each model's by name."""
    translators = dict(translator) if isinstance(translator, Mapping) else {translator.config.name: translator}
    if not translators:
        raise ValueError("create_app: give at least one translator")
    first = next(iter(translators))
    return {name: served_model(name, t, settings, examples.get(name) if isinstance(examples, Mapping) else
                               examples if name == first else None) for name, t in translators.items()}


# ---- the app ------------------------------------------------------------------------------------------------------

def create_app(translator: Translator | Mapping[str, Translator], settings: ServeSettings | None = None,
               examples: list[str] | Mapping[str, list[str]] | None = None) -> FastAPI:
    """A FastAPI app serving `translator`, offering `examples` on the page; the batcher starts and stops with the
    app's lifespan (use `with TestClient(app)` in tests, so that startup and shutdown run).

    Several models: `translator` maps names to translators (the first is the default) and `examples` names to their
    examples; each model has its own batcher, and requests choose one by name (`model`)."""
    settings = settings or ServeSettings()
    models = served_models(translator, settings, examples)
    default = next(iter(models.values()))
    several = len(models) > 1
    TranslateRequest = request_model(settings, {name: m.defaults for name, m in models.items()})
    batchers = [m.batcher for m in models.values()]
    started = time.monotonic()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for served in models.values():
            served.batcher.start()
        for served in models.values():
            served.self_check = await run_in_threadpool(_self_check, served.translator, served.defaults,
                                                        (served.examples or [SELF_CHECK_TEXT])[0])
            if served.self_check:
                log.error("%s%s; /health answers 503", f"{served.name}: " if several else "", served.self_check)
        app.state.self_check = _health_problem(models, several, lambda served: served.self_check)
        try:
            yield
        finally:
            for served in models.values():
                await served.batcher.close()

    app = FastAPI(title="attnmt", version=attnmt.__version__, lifespan=lifespan,
                  description="Translate with an attnmt model and see where it looked: `POST /translate`. "
                              "The page at `/` draws the attention.")
    app.state.settings = settings
    app.state.models = models
    app.state.translator = default.translator  # the default model's (the only one's)
    app.state.batcher = default.batcher
    app.state.self_check = None  # the start-up self-checks' errors (the lifespan runs them)
    app.add_middleware(_Guard, settings=settings, batchers=batchers)
    # The guard checks the key; this declares it in the schema (and /docs asks for it).
    security = [] if settings.api_key is None else [Security(HTTPBearer(auto_error=False, description="the API key"))]

    def refusal(served: ServedModel, request: TranslateRequest) -> str | None:  # type: ignore[valid-type]
        """Why a request the schema admits is over a limit the schema cannot say (413), or None: a text over
        max_source_tokens subwords, decoding work over max_request_work, attention over max_attention_values."""
        translator, defaults = served.translator, served.defaults
        lengths = translator.source_lengths(request.all_texts())
        try:
            check_source_lengths(lengths, served.max_source_tokens)
        except TextTooLong as error:
            return (f"{request.field(error.index)}: {error.length} subwords, over the limit of {error.limit} "
                    f"({served.source_cap}); split it into shorter texts")
        sources = torch.tensor(lengths)
        options = request.search_options()
        prefix = translator.prefix_lengths([options["prefix"]])[0] if options["prefix"] else 0
        outputs = max_output_lengths(sources, defaults.max_length_ratio, prefix) * (sources > 0)  # empty: no search
        beam_size = options["beam_size"]
        work = beam_size * int(outputs.sum())
        if work > settings.max_request_work:
            forced = f" + the prefix's {prefix}" if prefix else ""
            return (f"{'text' if request.texts is None else 'texts'}, beam_size: up to {work:,} decoding steps "
                    f"(beam_size {beam_size} × the most target tokens of each text, {defaults.max_length_ratio:g} × "
                    f"its subwords + {LENGTH_SLACK}{forced}), over the limit of {settings.max_request_work:,} a "
                    f"request (max_request_work); send fewer or shorter texts, or a smaller beam_size"
                    f"{', or a shorter prefix' if prefix else ''}")
        values = attention_numbers_per_position(served.description) * int(((outputs + 1) * sources).sum())
        if request.return_attention and values > settings.max_attention_values:
            return (f"return_attention: the attention of these texts could hold {values:,} numbers, over the limit "
                    f"of {settings.max_attention_values:,} a request (max_attention_values); send fewer or shorter "
                    f"texts, or leave out return_attention")
        return None

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        fields = TraceRequest.model_fields if request.url.path == "/trace" else TranslateRequest.model_fields
        status, message, detail = _validation_error(list(error.errors()), list(fields))
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
              responses=ERROR_RESPONSES, dependencies=security, summary="Translate one text or a list of texts")
    async def translate(request: TranslateRequest, http: Request) -> Any:  # type: ignore[valid-type]
        """Translations in request order, with scores; `n_best` hypotheses when n_best > 1; with
        `return_attention`, the source tokens, the target tokens (ending in `</s>`) and the attention matrix
        (one row per target token, one column per source token). An empty text gives an empty translation.
        A text over max_source_tokens subwords, or a request over max_request_work or max_attention_values, gets 413
        (see /info limits)."""
        begin = time.perf_counter()
        served = models[request.chosen_model()]
        problem = refusal(served, request)
        if problem is not None:
            return _error_response(413, problem)
        options = request.search_options()
        http.scope[SUBMITTED] = True
        for batcher in batchers:  # no await between this and the job joining the queue in `enqueue`
            batcher.expect(-1)
        try:
            # text-only requests skip gathering attention; the two kinds are never batched together
            results = await asyncio.wait_for(
                served.batcher.enqueue(request.all_texts(), attention=request.return_attention, **options),
                settings.request_timeout_s)
        except QueueFull as error:
            return _error_response(503, f"busy: {error}; retry shortly", headers={"retry-after": "1"})
        except BatcherClosed as error:
            return _error_response(503, f"unavailable: {error}")
        except asyncio.TimeoutError:  # its texts not yet translated are dropped from the queue
            return _error_response(504, f"timeout: not translated within {settings.request_timeout_s:g} s "
                                        f"(request_timeout_s); the server is busy: retry later, or send fewer texts")
        except Exception as error:  # a bug, not the client's doing: say so, keep serving
            log.exception("translation failed")
            return _error_response(500, f"internal error while translating: {type(error).__name__}")
        body = await run_in_threadpool(_render, results, options, request.return_attention, begin)
        return Response(body, media_type="application/json")

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse, "description":
                                                                       "the model cannot translate"}, **HOST_RESPONSES},
             summary="Is the model translating? Queue length and batching counters")
    async def health(response: Response) -> HealthResponse:
        problem = app.state.self_check or _health_problem(models, several, _failing_calls)
        if problem is not None:
            response.status_code = 503
        batching = ({name: served.batcher.stats.as_dict() for name, served in models.items()} if several else
                    default.batcher.stats.as_dict())
        return HealthResponse(status="ok" if problem is None else "failing", error=problem,
                              uptime_s=round(time.monotonic() - started, 1),
                              queued_texts=sum(b.queued_texts for b in batchers),
                              incoming_requests=default.batcher.incoming or 0, batching=batching)

    default_info = default.info()
    tokenizer = default.translator.tokenizer
    info = InfoResponse(
        name=default.translator.config.name, model=default_info.model, device=default_info.device,
        examples=default_info.examples, source_language=default_info.source_language,
        target_language=default_info.target_language, defaults=default_info.defaults,
        source_vocab_size=tokenizer.src_vocab_size, target_vocab_size=tokenizer.tgt_vocab_size,
        limits={"max_text_chars": settings.max_text_chars, "max_source_tokens": default.max_source_tokens,
                "max_texts": settings.max_texts, "max_beam_size": settings.max_beam_size,
                "max_n_best": settings.max_n_best, "max_length_penalty": MAX_LENGTH_PENALTY,
                "max_request_work": settings.max_request_work,
                "max_attention_values": settings.max_attention_values, "max_body_bytes": settings.max_body_bytes,
                "request_timeout_s": settings.request_timeout_s, "rate_limit": settings.rate_limit},
        batching={"enabled": settings.batching, "max_batch_size": settings.max_batch_size,
                  "max_wait_ms": settings.max_wait_ms, "threads": settings.threads},
        api_key_required=settings.api_key is not None, models=[served.info() for served in models.values()])

    @app.get("/info", response_model=InfoResponse, responses=HOST_RESPONSES,
             summary="The model: type, languages, vocabularies, attention, limits")
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

    from attnmt.serve.lab import add_lab  # the lab imports this module

    TraceRequest = add_lab(app, models, settings, security)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
