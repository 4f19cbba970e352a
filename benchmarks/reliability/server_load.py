"""A server under load that one request must not stall: normal requests from many clients, with a heavy request
every second, and what the normal ones see.

    python benchmarks/reliability/server_load.py [--clients 64] [--seconds 60] [--family rnn] [--work DIR]
                                                 → benchmarks/results/reliability_server_load.json

The server is `attnmt serve` with its default settings (`attnmt.serve.serve` in a child process, as
benchmarks/serve_load.py starts it) on the tiny model of benchmarks/reliability/tamper.py (a reversal task; reused
from --work when it is there). `clients` clients (httpx, asyncio, in this process) each send one normal request at a
time for `seconds`: one sentence like the training data (3 to 8 words), the model's default search. Beside them, one
heavy request a second, alternating two kinds: issue 15's probe (1,000 characters that are 500 subwords, beam 16,
with attention; it once held the only worker for 269 s), which the source-length cap now refuses (413), and the same
request cut to the cap (data.max_length subwords), which is bounded and translated.

Reported: the normal requests' count, p50/p99 latency and errors (anything but 200); each heavy kind's statuses and
latencies; the server's peak RSS (VmHWM, reset after start-up) and its batching counters. The clients share the
machine with the server: on a small machine they take CPU from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import httpx  # noqa: E402
from report import machine  # noqa: E402
from serve_load import Server  # noqa: E402

from attnmt.serve import ServeSettings  # noqa: E402

ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "reliability_server_load.json"
DEFAULT_WORK = ROOT / "benchmarks" / "results" / "tmp" / "reliability_server"
WORDS = "abcdefghij"


def normal_sentences(count: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(count)]


def heavy_requests(cap: int) -> dict[str, dict]:
    """Issue 15's probe, and the same cut to `cap` subwords (the tiny models' tokenizer splits at spaces)."""
    probe = {"beam_size": 16, "return_attention": True}
    return {"probe (500 subwords)": {"text": "a " * 500, **probe},
            f"at the cap ({cap} subwords)": {"text": " ".join(WORDS[i % 10] for i in range(cap)), **probe}}


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1) if values else None


async def load(url: str, clients: int, seconds: float, heavy: dict[str, dict]) -> dict[str, Any]:
    sentences = normal_sentences(1000)
    normal: list[float] = []
    errors: dict[str, int] = {}
    heavy_seen: dict[str, dict[str, Any]] = {kind: {"statuses": {}, "latencies": []} for kind in heavy}
    https = [httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0),
                               limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
             for _ in range(clients + 1)]
    until = time.perf_counter() + seconds

    async def client(index: int) -> None:
        position = index * 7919
        while time.perf_counter() < until:
            text = sentences[position % len(sentences)]
            position += 1
            began = time.perf_counter()
            try:
                response = await https[index].post("/translate", json={"text": text})
                kind = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                kind = type(error).__name__
            if kind is None:
                normal.append(time.perf_counter() - began)
            else:
                errors[kind] = errors.get(kind, 0) + 1

    async def one_heavy(kind: str) -> None:
        began = time.perf_counter()
        try:
            response = await https[clients].post("/translate", json=heavy[kind])
            status = str(response.status_code)
        except httpx.HTTPError as error:
            status = type(error).__name__
        seen = heavy_seen[kind]
        seen["statuses"][status] = seen["statuses"].get(status, 0) + 1
        seen["latencies"].append(time.perf_counter() - began)

    async def heavy_sender() -> None:
        kinds, sent, tasks = list(heavy), 0, []
        while time.perf_counter() < until:
            tasks.append(asyncio.ensure_future(one_heavy(kinds[sent % len(kinds)])))
            sent += 1
            await asyncio.sleep(1.0)
        await asyncio.gather(*tasks)

    started = time.perf_counter()
    try:
        await asyncio.gather(heavy_sender(), *(client(i) for i in range(clients)))
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    elapsed = time.perf_counter() - started
    return {"seconds": round(elapsed, 1),
            "normal": {"requests": len(normal), "requests_per_s": round(len(normal) / elapsed, 1),
                       "p50_ms": percentile(normal, 0.50), "p99_ms": percentile(normal, 0.99),
                       "max_ms": percentile(normal, 1.0), "errors": sum(errors.values()), "error_kinds": errors},
            "heavy": {kind: {"sent": len(seen["latencies"]), "statuses": seen["statuses"],
                             "p50_ms": percentile(seen["latencies"], 0.50),
                             "max_ms": percentile(seen["latencies"], 1.0)} for kind, seen in heavy_seen.items()}}


def run(clients: int, seconds: float, family: str = "rnn", work: Path = DEFAULT_WORK) -> dict[str, Any]:
    """Start the server, load it for `seconds`, stop it; writes RESULTS."""
    from tamper import trained_models

    from attnmt.config import load_config

    model_dir = trained_models(work)[family]
    cap = load_config(model_dir / "config.yaml").data.max_length
    settings = ServeSettings()
    server = Server(model_dir, settings.model_dump(mode="json"))
    try:
        server.wait_ready()
        server.reset_peak_rss()
        result = asyncio.run(load(server.url, clients, seconds, heavy_requests(cap)))
        result["server_peak_rss_mib"] = server.peak_rss_mib()
        result["batching"] = server.stats()
    finally:
        server.stop()
    results = {"command": "python " + " ".join(["benchmarks/reliability/server_load.py"] + sys.argv[1:]),
               "machine": machine(), "family": family, "clients": clients,
               "settings": {key: value for key, value in settings.model_dump(mode="json").items()
                            if key != "api_key"},
               **result}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--family", choices=["rnn", "transformer"], default="rnn")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the tiny models are (trained if not)")
    args = parser.parse_args()
    results = run(args.clients, args.seconds, args.family, args.work)
    normal = results["normal"]
    print(f"normal requests: {normal['requests']} ({normal['requests_per_s']}/s), p50 {normal['p50_ms']} ms, "
          f"p99 {normal['p99_ms']} ms, {normal['errors']} errors; heavy: "
          + "; ".join(f"{kind}: {h['statuses']}" for kind, h in results["heavy"].items())
          + f"; server peak RSS {results['server_peak_rss_mib']} MiB → {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
