"""Serving: an HTTP API (FastAPI + uvicorn) with request batching, and a page that draws attention.

    attnmt serve runs/demo --port 8000            # the CLI
    serve("runs/demo", port=8000)                 # the same from Python
    app = create_app(Translator.load("runs/demo"), ServeSettings(max_batch_size=32))   # an ASGI app for tests

Layout: `ServeSettings` (here: limits and batching, validated by pydantic), `app.py` (the FastAPI app: endpoints,
error responses, the body-size limit, the page), `batcher.py` (gathers concurrent requests into one `translate` call
run on one worker thread), `static/` (the page: plain HTML, CSS and JS; no CDN, so it works offline).

This module imports neither FastAPI nor uvicorn at import time, so that `attnmt --help` stays fast.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attnmt.errors import AttnmtError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from attnmt.translator import Translator

__all__ = ["ServeSettings", "create_app", "serve"]


class ServeSettings(BaseModel):
    """Limits on what one request may ask, and how requests are batched. Every limit is enforced with a 4xx answer
    that names the field (413 for the body size)."""

    model_config = ConfigDict(extra="forbid")

    max_text_chars: int = Field(1000, ge=1, description="characters (code points) in one text")
    max_texts: int = Field(64, ge=1, description="texts in one request")
    max_beam_size: int = Field(16, ge=1, description="largest beam_size a request may ask for")
    max_n_best: int = Field(10, ge=1, description="largest n_best a request may ask for")
    max_body_bytes: int = Field(1_048_576, ge=64, description="request body size, in bytes")
    max_batch_size: int = Field(32, ge=1, description="texts translated together in one model call; 1 = no batching")
    max_wait_ms: float = Field(5.0, ge=0, description="how long the first request of a batch waits for others")
    max_queued_texts: int = Field(4096, ge=1, description="texts waiting for the model before new requests get 503")
    threads: int = Field(1, ge=1, description="torch CPU threads of the model worker (like `training.threads`)")

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1

    @classmethod
    def unbatched(cls, **options: Any) -> "ServeSettings":
        """`batching: off`: each request is its own model call, with no waiting."""
        return cls(**{**options, "max_batch_size": 1, "max_wait_ms": 0.0})

    @classmethod
    def from_options(cls, batching: bool = True, **options: Any) -> "ServeSettings":
        """Settings from CLI-style options: None means the default; bad values raise AttnmtError naming the option."""
        given = {key: value for key, value in options.items() if value is not None}
        try:
            return cls(**given) if batching else cls.unbatched(**given)
        except ValidationError as error:
            problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                                 for e in error.errors())
            raise AttnmtError(f"bad serve option: {problems}") from None


def create_app(translator: "Translator", settings: ServeSettings | None = None, examples: list[str] | None = None
               ) -> "FastAPI":
    """The FastAPI app serving `translator` (see `attnmt.serve.app.create_app`)."""
    from attnmt.serve.app import create_app as _create_app

    return _create_app(translator, settings, examples)


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


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          log_level: str = "info", device: str = "auto", mixed_precision: str = "none") -> None:
    """Load the model directory onto `device` (auto | cpu | cuda | cuda:N), translating in `mixed_precision` (none |
    bf16 | fp16), and serve it until interrupted (Ctrl-C)."""
    import uvicorn

    from attnmt import checkpoint
    from attnmt.translator import Translator

    settings = settings or ServeSettings()
    translator = Translator.load(model_dir, device, mixed_precision)  # CheckpointError (an AttnmtError) for a bad directory
    _check_port_free(host, port)
    app = create_app(translator, settings, checkpoint.read_examples(model_dir))
    batching = (f"batches of up to {settings.max_batch_size} texts, {settings.max_wait_ms:g} ms wait"
                if settings.batching else "no batching")
    shown_host = f"[{host}]" if ":" in host else host
    print(f"attnmt serve: {model_dir} on {translator.device} at http://{shown_host}:{port}/ ({batching}; "
          f"API docs at /docs, schema at /openapi.json)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
