"""Serving: an HTTP API (FastAPI + uvicorn) with request batching, and a page that draws attention.

    attnmt serve runs/demo --port 8000            # the CLI
    serve("runs/demo", port=8000)                 # the same from Python
    app = create_app(Translator.load("runs/demo"), ServeSettings(max_batch_size=32))   # an ASGI app for tests
    attnmt serve runs/rnn runs/transformer        # several models: requests choose one by name ("model": "rnn")

Layout: `ServeSettings` (here: limits, batching and access, validated by pydantic), `app.py` (the FastAPI app:
endpoints, error responses, the guard in front of them: allowed hosts, API key, rate limit, body size and read time;
the page), `batcher.py` (gathers concurrent requests into `translate` calls run on one worker thread, taking
requests in turn), `static/` (the page: plain HTML, CSS and JS; no CDN, so it works offline).

What one request may cost is bounded three ways, so that no request can hold the model for long: each text's source
subwords (`max_source_tokens`, by default the model's `data.max_length`), the decoding work of the whole request
(`max_request_work`) and the attention it gets back (`max_attention_values`); a request over any of them gets 413
before it reaches the model. A request not answered within `request_timeout_s` gets 504, and its texts not yet
translated are dropped. docs/serving.md describes the limits and the access options.

This module imports neither FastAPI nor uvicorn at import time, so that `attnmt --help` stays fast.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from attnmt.errors import AttnmtError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from attnmt.translator import Translator

__all__ = ["ServeSettings", "create_app", "serve"]

API_KEY_ENV = "ATTNMT_API_KEY"  # where `attnmt serve` reads the API key when --api-key is not given
MIN_API_KEY_CHARS = 16
LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


class ServeSettings(BaseModel):
    """Limits on what one request may ask, how requests are batched, and who may ask. Every limit is enforced with a
    4xx answer that names the field (413 for the size of the body or of the work asked for)."""

    model_config = ConfigDict(extra="forbid")

    max_text_chars: int = Field(1000, ge=1, description="characters (code points) in one text")
    max_source_tokens: int | None = Field(None, ge=1, description="source subwords in one text; default the "
                                                                  "model's data.max_length, the longest source it "
                                                                  "was trained on")
    max_texts: int = Field(64, ge=1, description="texts in one request")
    max_beam_size: int = Field(16, ge=1, description="largest beam_size a request may ask for")
    max_n_best: int = Field(10, ge=1, description="largest n_best a request may ask for")
    max_request_work: int = Field(50_000, ge=1, description="decoding work of one request: Σ over its texts of "
                                                             "beam_size × the most target tokens the text may get")
    max_attention_values: int = Field(1_000_000, ge=1, description="numbers of attention one request may get back "
                                                                    "(with return_attention), at most")
    max_body_bytes: int = Field(1_048_576, ge=64, description="request body size, in bytes")
    max_batch_size: int = Field(32, ge=1, description="texts translated together in one model call; 1 = no batching")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the first request of a batch waits for others")
    max_queued_texts: int = Field(4096, ge=1, description="texts waiting for the model before new requests get 503")
    threads: int = Field(1, ge=1, description="torch CPU threads of the model worker (like `training.threads`)")
    request_timeout_s: float = Field(30.0, gt=0, description="a translation request not answered in this many "
                                                             "seconds gets 504")
    body_timeout_s: float = Field(10.0, gt=0, description="seconds a client may take to send a request body (408)")
    header_timeout_s: float = Field(10.0, gt=0, description="seconds a client may take to send a request's headers "
                                                            "before its connection is closed (`serve`)")
    keep_alive_s: float = Field(5.0, gt=0, description="seconds an idle connection is kept open (`serve`)")
    max_header_bytes: int = Field(16_384, ge=1024, description="request line and headers not yet complete, in bytes "
                                                               "(`serve`; more: 400)")
    allowed_hosts: list[str] | None = Field(
        None, description="Host header names the server answers (any IP address is always allowed; '*': any name); "
                          "None: `serve` allows the name it listens on and localhost, `create_app` checks nothing")
    api_key: SecretStr | None = Field(None, description="when set, POST /translate needs `Authorization: Bearer KEY`")
    rate_limit: int | None = Field(None, ge=1, description="translation requests per minute from one client address; "
                                                           "None: no limit")

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_API_KEY_CHARS:
            raise ValueError(f"give a key of at least {MIN_API_KEY_CHARS} characters (--api-key or ${API_KEY_ENV}), "
                             f"e.g. the output of "
                             f"`python -c 'import secrets; print(secrets.token_urlsafe())'`")
        return key

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @classmethod
    def unbatched(cls, **options: Any) -> "ServeSettings":
        """`batching: off`: each request is its own model call, with no waiting."""
        return cls(**{**options, "max_batch_size": 1, "max_wait_ms": 0.0})

    @classmethod
    def from_options(cls, batching: bool = True, **options: Any) -> "ServeSettings":
        """Settings from CLI-style options: None means the default (the API key: $ATTNMT_API_KEY, if set); bad values
        raise AttnmtError naming the option."""
        given = {key: value for key, value in options.items() if value is not None}
        if "api_key" not in given and os.environ.get(API_KEY_ENV):
            given["api_key"] = os.environ[API_KEY_ENV]
        try:
            return cls(**given) if batching else cls.unbatched(**given)
        except ValidationError as error:
            problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg'].removeprefix('Value error, ')}"
                                 for e in error.errors())
            raise AttnmtError(f"bad serve option: {problems}") from None


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def default_allowed_hosts(host: str) -> list[str]:
    """The Host names a server listening on `host` answers by default: the localhost names, and `host` itself (when
    it listens on every interface: this machine's names). IP addresses are always allowed (`app._Guard`)."""
    names = [*LOCAL_HOST_NAMES, *((socket.gethostname(), socket.getfqdn()) if host in ANY_ADDRESS else (host,))]
    return list(dict.fromkeys(name.lower() for name in names if name))


def create_app(translator: "Translator | Mapping[str, Translator]", settings: ServeSettings | None = None,
               examples: "list[str] | Mapping[str, list[str]] | None" = None) -> "FastAPI":
    """The FastAPI app serving `translator`, or several translators by name (see `attnmt.serve.app.create_app`)."""
    from attnmt.serve.app import create_app as _create_app

    return _create_app(translator, settings, examples)


def model_names(model_dirs: Sequence[str | Path]) -> list[str]:
    """The names a server of several models gives them: each directory's name, numbered from 2 where names repeat
    (runs/a/model, runs/b/model → model, model-2)."""
    names: list[str] = []
    for model_dir in model_dirs:
        base = Path(model_dir).resolve().name or "model"
        name, number = base, 2
        while name in names:
            name, number = f"{base}-{number}", number + 1
        names.append(name)
    return names


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise AttnmtError(f"--host {host!r} cannot be resolved ({error})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise AttnmtError(f"cannot listen on {host}:{port} ({error.strerror}); is another server running "
                              f"there? pick another with --port") from None


def _http_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing a connection whose next request line and headers have not arrived within
    `header_timeout_s` of the connection opening or of the last answer (uvicorn alone waits for them forever, so slow
    clients could hold every connection open)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        def _await_headers(self) -> None:
            self._awaited_after = self.cycle  # a new cycle means the next request's headers have arrived
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _headers_late(self) -> None:
            if self.cycle is self._awaited_after and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._awaited_after:
                self._header_timer.cancel()

        def on_response_complete(self) -> None:
            self._header_timer.cancel()
            self._await_headers()  # before a pipelined request may start its cycle
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


def serve(model_dir: str | Path | Sequence[str | Path], host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info", device: str = "auto",
          mixed_precision: str = "none", quantization: str = "none", backend: str = "torch",
          compute_type: str | None = None, parallel_batches: int | None = None) -> None:
    """Load the model directory onto `device` (auto | cpu | cuda | cuda:N), translating in `mixed_precision` (none |
    bf16 | fp16) or `quantization` (none | int8: `Translator.load`), and serve it until interrupted (Ctrl-C). Host
    names not in `settings.allowed_hosts` (default: `default_allowed_hosts(host)`) get 421, a defence against DNS
    rebinding. Several model directories: each is served under its name (`model_names`), the first the default."""
    import uvicorn

    from attnmt import checkpoint
    from attnmt.translator import Translator

    settings = settings or ServeSettings()
    if settings.allowed_hosts is None:
        settings = settings.model_copy(update={"allowed_hosts": default_allowed_hosts(host)})
    model_dirs = [model_dir] if isinstance(model_dir, (str, Path)) else list(model_dir)
    # a CheckpointError (an AttnmtError) for a bad directory, a QuantizationError for int8 where it cannot run
    translators = [Translator.load(one, device, mixed_precision, quantization=quantization, backend=backend,
                                   compute_type=compute_type, parallel_batches=parallel_batches)
                   for one in model_dirs]  # backend: attnmt.backends
    _check_port_free(host, port)
    if len(model_dirs) == 1:
        app = create_app(translators[0], settings, checkpoint.read_examples(model_dirs[0]))
        served = f"{model_dirs[0]} on {translators[0].device}"
    else:
        names = model_names(model_dirs)
        app = create_app(dict(zip(names, translators)),
                         settings, {name: checkpoint.read_examples(one) for name, one in zip(names, model_dirs)})
        served = ", ".join(f"{name} ({one} on {t.device})" for name, one, t in zip(names, model_dirs, translators))
        served = f"{len(names)} models: {served}; requests choose one with \"model\", default {names[0]}"
    batching = (f"batches of up to {settings.max_batch_size} texts, {settings.max_wait_ms:g} ms wait"
                if settings.batching else "no batching")
    shown_host = f"[{host}]" if ":" in host else host
    access = [f"Host names: {', '.join(settings.allowed_hosts)} and IP addresses (more: --allowed-host)"]
    if settings.api_key is not None:
        access.append("POST /translate needs the API key")
    if settings.rate_limit is not None:
        access.append(f"{settings.rate_limit} translation requests/minute per client")
    print(f"attnmt serve: {served} at http://{shown_host}:{port}/ ({batching}; "
          f"API docs at /docs, schema at /openapi.json)\n  {'; '.join(access)}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                http=_http_protocol(settings.header_timeout_s), timeout_keep_alive=settings.keep_alive_s,
                h11_max_incomplete_event_size=settings.max_header_bytes,
                proxy_headers=False)  # the client address is the peer's: X-Forwarded-For would let one client be many
