"""The attention lab: `POST /trace` (one sentence decoded step by step, `attnmt.trace`) and the page at `/lab`.

A trace holds, for every hypothesis the search looked at, its parent, token, log p and score, and for every hypothesis
the model expanded, its attention over the source (the default view; every layer and head too when the model has more
than one), its top-k next tokens with their probabilities, and (an RNN) the energies before the normalizer with what
each normalizer makes of them; for a model with self-attention (a Transformer), the encoder's and the decoder's
self-attention of the best translation, every layer and head. Its cost is bounded as /translate's: the source's
subwords (max_source_tokens), the decoding work beam_size × the most target tokens (max_request_work) and the numbers
returned, self-attention included (max_attention_values); over any of them: 413 naming the field. The API key and the
rate limit guard it as they guard /translate. A server of several models traces the one a request names (`model`); a
model served without PyTorch (the CTranslate2 backend) cannot be traced: 501.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations (see app.py).

import asyncio
import threading
import time
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from attnmt.attention import NORMALIZERS, compare_normalizers
from attnmt.config import LENGTH_SLACK, MAX_LENGTH_PENALTY, SearchConfig
from attnmt.errors import ConfigError, TextTooLong
from attnmt.models import ModelDescription
from attnmt.search import max_output_lengths
from attnmt.serve import ServeSettings
from attnmt.serve.app import (ERROR_RESPONSES, STATIC, ErrorResponse, ServedModel, _error_response, _no_default,
                              _rounded, _score, _whole_number, model_choice, per_model_default)
from attnmt.trace import Node, Trace, trace
from attnmt.translator import Translator, check_source_lengths

MAX_CANDIDATES = 10  # top-k next tokens a trace may ask for per expanded hypothesis
DEFAULT_CANDIDATES = 5


# ---- response ---------------------------------------------------------------------------------------------------

class TraceCandidate(BaseModel):
    token: str = Field(description="a target subword (`</s>`: the end of the sentence)")
    probability: float = Field(description="p(token | the hypothesis, the source), the model's, before any decoding "
                                           "control")


class TraceNode(BaseModel):
    id: int = Field(description="its index in `nodes`")
    parent: int | None = Field(description="the node it extends; null for the root (the start of the sentence)")
    depth: int = Field(description="target subwords so far (the root: 0)")
    token: str = Field(description="the subword it adds (the root: `<s>`)")
    log_prob: float | None = Field(description="log p of `token` given its parent; null if not finite")
    score: float | None = Field(description="Σ log p along the path; null if not finite")
    status: Literal["root", "kept", "pruned", "finished"] = Field(
        description="kept: among the beam's best k and decoded further; pruned: looked at and dropped; finished: "
                    "ended with `</s>`")
    forced: bool = Field(description="a token of the forced prefix")
    normalized_score: float | None = Field(description="finished: score / ((5 + n) / 6) ** length_penalty, what the "
                                                       "beam ranks by; else null")
    attention: list[float] | None = Field(description="expanded nodes: the attention of the next step over the "
                                                      "source tokens (the last layer, mean of its heads); else null")
    attention_heads: list[list[list[float]]] | None = Field(
        description="[layers][heads][source tokens], expanded nodes of a model with several layers or heads")
    energies: list[float] | None = Field(description="expanded nodes of a model whose attention keeps them (RNN): "
                                                     "the energies e = score(query, key) before the normalizer")
    normalized: dict[str, list[float]] | None = Field(
        description=f"with energies: what each normalizer ({', '.join(NORMALIZERS)}) makes of them "
                    f"(normalize(e / temperature))")
    candidates: list[TraceCandidate] | None = Field(description="expanded nodes: the top-k next tokens, most "
                                                                "probable first")


class TraceSelfAttention(BaseModel):
    decoder_nodes: list[int] = Field(description="the nodes whose tokens the decoder read, `<s>` first: the best "
                                                 "translation's path without its `</s>`; rows and columns of "
                                                 "`decoder`")
    decoder_tokens: list[str] = Field(description="their tokens")
    encoder: list[list[list[list[float]]]] = Field(
        description="[encoder layers][heads][source tokens][source tokens]: row i, source token i's attention over "
                    "the source")
    encoder_layer_means: list[list[list[float]]] = Field(description="[encoder layers][source][source]: each "
                                                                     "layer averaged over its heads")
    decoder: list[list[list[list[float]]]] = Field(
        description="[decoder layers][heads][decoder tokens][decoder tokens]: row i, decoder token i's attention over "
                    "itself and the tokens before it (causal: 0 after it)")
    decoder_layer_means: list[list[list[float]]] = Field(description="[decoder layers][decoder tokens][decoder "
                                                                     "tokens]: each layer averaged over its heads")


class TraceResponse(BaseModel):
    model: str = Field(description="the served model that decoded (see /info models)")
    source_tokens: list[str]
    beam_size: int
    length_penalty: float
    prefix: str
    attention_layers: int
    attention_heads: int
    normalizer: str | None = Field(description="the model's normalizer, when energies are given")
    temperature: float | None = Field(description="its temperature T (weights = normalize(energies / T))")
    nodes: list[TraceNode] = Field(description="every hypothesis looked at; the root first")
    best: list[int] = Field(description="the node ids of the best translation, root first, its `</s>` last")
    finished: list[int] = Field(description="the finished hypotheses' node ids, best first")
    self_attention: TraceSelfAttention | None = Field(
        description="a model with self-attention (a Transformer): the encoder's and the decoder's, of the best "
                    "translation (teacher forced over its tokens); else null")
    elapsed_ms: float


# ---- request ------------------------------------------------------------------------------------------------------

def trace_request_model(settings: ServeSettings, defaults: SearchConfig | dict[str, SearchConfig]) -> type[BaseModel]:
    """The body of POST /trace: one text and the search (greedy or beam, no sampling); limits from the settings,
    defaults from the model's search settings (a server of several models: each model's by name, and a `model`
    field to choose one, the first by default)."""
    models = dict(defaults) if isinstance(defaults, dict) else {"": defaults}
    names, several = list(models), len(models) > 1
    default = partial(per_model_default, models)
    Text = Annotated[str, StringConstraints(max_length=settings.max_text_chars)]
    BeamSize = Annotated[int, Field(ge=1, le=settings.max_beam_size), BeforeValidator(_whole_number)]
    Count = Annotated[int, Field(ge=0), BeforeValidator(_whole_number)]
    Candidates = Annotated[int, Field(ge=1, le=MAX_CANDIDATES), BeforeValidator(_whole_number)]

    def schema_extra(schema: dict) -> None:
        schema["examples"] = [{"text": "나는 학생이다."}, {"text": "나는 학생이다.", "beam_size": 3, "candidates": 5},
                              {"text": "나는 학생이다.", "prefix": "I", "beam_size": 1}]

    class TraceRequest(BaseModel):
        """One text, decoded step by step."""

        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra=schema_extra)

        text: Text = Field(description=f"the text, at most {settings.max_text_chars} characters")
        beam_size: BeamSize | None = Field(None, description=f"1 = greedy; default "
                                                             f"{default(lambda d: str(d.beam_size))}")
        length_penalty: Annotated[float, Field(ge=0, le=MAX_LENGTH_PENALTY)] | None = Field(
            None, description=f"alpha of the beam's length penalty; default "
                              f"{default(lambda d: f'{d.length_penalty:g}')}")
        prefix: Text | None = Field(None, description="target text the translation must start with (forced)")
        min_length: Count | None = Field(None, description="target subwords before the end is allowed")
        no_repeat_ngram_size: Count | None = Field(None, description="n: no n-gram twice; 0: off")
        candidates: Candidates = Field(DEFAULT_CANDIDATES, description="top-k next tokens shown per step",
                                       json_schema_extra=_no_default)
        if several:  # a server of several models: which one decodes
            model: model_choice(models) = Field(names[0], description=f"the served model to trace, by name (see "  # type: ignore[valid-type]
                                                                      f"/info models); default {names[0]}")

        def chosen_model(self) -> str:
            """The name of the served model this request asks for (with one model: its name)."""
            return self.model if several else names[0]

        def search(self) -> SearchConfig:
            try:
                return models[self.chosen_model()].resolve(beam_size=self.beam_size, length_penalty=self.length_penalty,
                                        prefix=self.prefix, min_length=self.min_length,
                                        no_repeat_ngram_size=self.no_repeat_ngram_size, sampling=False)
            except ConfigError as error:  # the schema's ranges are the config's: not reached
                raise ValueError(str(error)) from None

    return TraceRequest


def trace_numbers_per_node(model: ModelDescription, source_length: int, candidates: int) -> int:
    """Numbers a trace returns per expanded hypothesis (`_node_out`): the attention (the default view, and every head
    for a model of several), the energies and each normalizer's weights, and the candidates."""
    heads = model.attention_layers * model.attention_heads
    attention = 0 if heads == 0 else 1 + (heads if heads > 1 else 0)
    return source_length * (attention + 1 + len(NORMALIZERS)) + candidates


def self_attention_numbers(model: ModelDescription, source_length: int, decoder_length: int) -> int:
    """Numbers of a trace's self-attention (`_self_attention_out`): every head and each layer's mean, S × S per
    encoder layer and T × T per decoder layer (T: the tokens the decoder read); 0 without self-attention."""
    per_layer = model.self_attention_heads + 1 if model.self_attention_heads else 0
    return per_layer * (model.encoder_layers * source_length ** 2 + model.decoder_layers * decoder_length ** 2)


# ---- rendering ----------------------------------------------------------------------------------------------------

def _node_out(node: Node, pieces, traced: Trace, mask: torch.Tensor) -> TraceNode:
    expansion = node.expansion
    fields: dict[str, Any] = {"attention": None, "attention_heads": None, "energies": None, "normalized": None,
                              "candidates": None}
    if expansion is not None:
        if expansion.attention is not None:
            heads = expansion.attention  # [L, H, S]
            fields["attention"] = _rounded(heads[-1].mean(axis=0))
            if heads.shape[0] * heads.shape[1] > 1:
                fields["attention_heads"] = _rounded(heads)
        if expansion.energies is not None:
            energies = torch.tensor(expansion.energies, dtype=torch.float32).view(1, 1, -1)
            fields["energies"] = _rounded(expansion.energies)
            weights = compare_normalizers(energies, mask, traced.temperature or 1.0)
            fields["normalized"] = {name: _rounded(w.view(-1).numpy()) for name, w in weights.items()}
        fields["candidates"] = [TraceCandidate(token=pieces([c.token])[0], probability=round(float(np.exp(c.log_prob)), 6))
                                for c in expansion.candidates]
    return TraceNode(id=node.id, parent=node.parent, depth=node.depth,
                     token="<s>" if node.parent is None else pieces([node.token])[0], log_prob=_score(node.log_prob),
                     score=_score(node.score), status=node.status, forced=node.forced,
                     normalized_score=None if node.normalized_score is None else _score(node.normalized_score),
                     **fields)


def _layer_means(heads: np.ndarray) -> list:
    """[L, H, Q, K] → each layer's mean over its heads, [L, Q, K], rounded."""
    return _rounded(heads.mean(axis=1))


def _self_attention_out(traced: Trace, pieces) -> TraceSelfAttention | None:
    weights = traced.self_attention
    if weights is None:
        return None
    return TraceSelfAttention(
        decoder_nodes=weights.nodes,
        decoder_tokens=["<s>" if traced.nodes[i].parent is None else pieces([traced.nodes[i].token])[0]
                        for i in weights.nodes],
        encoder=_rounded(weights.encoder), encoder_layer_means=_layer_means(weights.encoder),
        decoder=_rounded(weights.decoder), decoder_layer_means=_layer_means(weights.decoder))


def _render_trace(name: str, translator: Translator, traced: Trace, prefix: str, begin: float) -> bytes:
    layout = translator.describe()
    mask = torch.ones(1, len(traced.source_ids), dtype=torch.bool)
    pieces = translator.tokenizer.target_pieces
    response = TraceResponse(
        model=name, source_tokens=translator.tokenizer.source_pieces(traced.source_ids), beam_size=traced.beam_size,
        length_penalty=traced.length_penalty, prefix=prefix, attention_layers=layout.attention_layers,
        attention_heads=layout.attention_heads, normalizer=traced.normalizer, temperature=traced.temperature,
        nodes=[_node_out(node, pieces, traced, mask) for node in traced.nodes], best=traced.best,
        finished=traced.finished, self_attention=_self_attention_out(traced, pieces),
        elapsed_ms=round((time.perf_counter() - begin) * 1000, 2))
    return response.model_dump_json().encode()


# ---- routes -------------------------------------------------------------------------------------------------------

NOT_TRACEABLE = {501: {"model": ErrorResponse, "description": "the model is served by a backend without a PyTorch "
                                                            "model (CTranslate2): it cannot be traced"}}


def untraceable(served: ServedModel, several: bool) -> str | None:
    """Why the model cannot be traced (a trace steps through a PyTorch model, `attnmt.trace`), or None."""
    if served.translator.model is not None:
        return None
    subject = f"model: {served.name!r} is" if several else "backend: the model is"
    return (f"{subject} served by the {served.translator.backend} backend, which decodes without a PyTorch model, "
            f"so it cannot be traced step by step; serve it with the PyTorch backend (leave out --backend) to use "
            f"/trace and the lab")


def add_lab(app: FastAPI, models: dict[str, ServedModel], settings: ServeSettings, dependencies: list
            ) -> type[BaseModel]:
    """Add POST /trace and the page /lab to `app`, for the served `models` (the first the default); returns the
    request model (for the validation errors)."""
    TraceRequest = trace_request_model(settings, {name: served.defaults for name, served in models.items()})
    several = len(models) > 1
    one_at_a_time = threading.Lock()  # traces run beside the batchers' workers, one at a time

    def refusal(served: ServedModel, request: TraceRequest, search: SearchConfig  # type: ignore[valid-type]
                ) -> str | None:
        translator, model = served.translator, served.description
        [length] = translator.source_lengths([request.text])
        try:
            check_source_lengths([length], served.max_source_tokens)
        except TextTooLong as error:
            return f"text: {error.length} subwords, over the limit of {error.limit} ({served.source_cap})"
        prefix = translator.prefix_lengths([search.prefix])[0] if search.prefix else 0
        outputs = int(max_output_lengths(torch.tensor([length]), search.max_length_ratio, prefix)[0])
        work = search.beam_size * outputs
        if work > settings.max_request_work:
            return (f"text, beam_size: up to {work:,} decoding steps (beam_size {search.beam_size} × at most "
                    f"{outputs} target tokens: {search.max_length_ratio:g} × {length} subwords + {LENGTH_SLACK}"
                    f"{f' + the prefix’s {prefix}' if prefix else ''}), over the limit of "
                    f"{settings.max_request_work:,} a request (max_request_work); send a shorter text or a smaller "
                    f"beam_size")
        values = (search.beam_size * (outputs + 1) * trace_numbers_per_node(model, length, request.candidates)
                  + self_attention_numbers(model, length, outputs + 1))
        if values > settings.max_attention_values:
            return (f"text, beam_size: the trace could hold {values:,} numbers, over the limit of "
                    f"{settings.max_attention_values:,} a request (max_attention_values); send a shorter text or a "
                    f"smaller beam_size")
        return None

    def run(served: ServedModel, request: TraceRequest, search: SearchConfig,  # type: ignore[valid-type]
            begin: float) -> bytes:
        with one_at_a_time:
            traced = trace(served.translator, request.text, beam_size=search.beam_size,
                           length_penalty_alpha=search.length_penalty, prefix=search.prefix,
                           min_length=search.min_length, no_repeat_ngram_size=search.no_repeat_ngram_size,
                           candidates=request.candidates, max_length_ratio=search.max_length_ratio)
        return _render_trace(served.name, served.translator, traced, search.prefix, begin)

    @app.post("/trace", response_model=TraceResponse, responses={**ERROR_RESPONSES, **NOT_TRACEABLE},
              dependencies=dependencies,
              summary="Decode one text step by step: every hypothesis, its attention and next-token candidates")
    async def trace_endpoint(request: TraceRequest) -> Any:  # type: ignore[valid-type]
        """The tree of hypotheses the search looked at (greedy: a chain), with per expanded hypothesis the attention,
        the top-k next tokens and (an RNN) the energies before the normalizer; for a Transformer, the self-attention
        of the best translation. Over a limit (see /info limits): 413. A model served without PyTorch
        (CTranslate2): 501."""
        begin = time.perf_counter()
        served = models[request.chosen_model()]
        problem = untraceable(served, several)
        if problem is not None:
            return _error_response(501, problem)
        search = request.search()
        problem = refusal(served, request, search)
        if problem is not None:
            return _error_response(413, problem)
        try:
            body = await asyncio.wait_for(run_in_threadpool(run, served, request, search, begin),
                                          settings.request_timeout_s)
        except asyncio.TimeoutError:
            return _error_response(504, f"timeout: not traced within {settings.request_timeout_s:g} s "
                                        f"(request_timeout_s); send a shorter text or a smaller beam_size")
        return Response(body, media_type="application/json")

    @app.get("/lab", include_in_schema=False)
    async def lab_page() -> FileResponse:
        return FileResponse(STATIC / "lab.html", media_type="text/html; charset=utf-8")

    return TraceRequest
