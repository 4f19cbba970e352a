"""Load test of the HTTP server: N concurrent clients for a bounded time, batched vs unbatched.

    python benchmarks/serve_load.py --model-dir runs/demo                       # 1, 8 and 64 clients, 30 s each
    python benchmarks/serve_load.py --model-dir runs/demo --seconds 5 --clients 1 8

For each mode (batched: `--max-batch-size`, `--max-wait-ms`; unbatched: batch size 1, no wait) one server process is
started on 127.0.0.1 at a free port, exactly as `attnmt serve` runs it (`attnmt.serve.serve`). Then for each client
count, that many clients (httpx, asyncio, in this process) send one sentence per request, each waiting for its answer
before sending the next, for `--seconds` after a short warm-up. Sentences are the model's test (else dev, else
train) sources in a fixed shuffled order, or the lines of `--sentences`.

Per mode and client count: requests/s, p50/p99 latency, errors (any non-200 or failed connection), the server's
peak RSS (VmHWM, reset before each run where the kernel allows), and the mean batch the server formed. Results go to
benchmarks/results/serve_load.json and to the serve section of docs/benchmarks.md (between its markers; other
sections are kept). The clients share the machine with the server: on a small machine they take CPU from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from report import machine, replace_section

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- serve:begin -->", "<!-- serve:end -->"
SERVER = ("import json, sys; from attnmt.serve import ServeSettings, serve; a = json.loads(sys.argv[1]); "
          "serve(a['model_dir'], a['host'], a['port'], ServeSettings(**a['settings']), log_level='warning')")
COLUMNS = [("mode", "mode"), ("clients", "clients"), ("requests_per_s", "requests/s"), ("p50_ms", "p50 ms"),
           ("p99_ms", "p99 ms"), ("requests", "requests"), ("errors", "errors"), ("mean_batch", "mean batch"),
           ("server_peak_rss_mib", "server peak RSS MiB")]


def load_sentences(model_dir: Path, path: str | None, max_chars: int, limit: int = 2000) -> list[str]:
    if path:
        sentences = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    else:
        from attnmt.config import load_config
        from attnmt.data import read_corpus
        from attnmt.errors import AttnmtError

        config = load_config(model_dir / "config.yaml")
        sentences = []
        for spec in (config.data.test, config.data.dev, config.data.train):
            if spec is None:
                continue
            try:
                sentences = [src for src, _ in read_corpus(spec)]
                break
            except AttnmtError:
                continue
        if not sentences:
            sys.exit(f"cannot read any corpus of {model_dir}/config.yaml: pass --sentences FILE (one per line)")
    sentences = [s for s in sentences if s and len(s) <= max_chars]
    random.Random(1).shuffle(sentences)
    return sentences[:limit]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Server:
    """`attnmt.serve.serve` in a child process."""

    def __init__(self, model_dir: Path, settings: dict, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port(host)
        self.url = f"http://{host}:{self.port}"
        arguments = json.dumps({"model_dir": str(model_dir), "host": host, "port": self.port, "settings": settings})
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, arguments], stdout=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the server exited with {self.process.returncode} before it was ready")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        sys.exit(f"the server did not answer /health within {timeout:.0f} s")

    def reset_peak_rss(self) -> None:
        try:  # "5" resets VmHWM (Linux ≥ 4.0); without it, the peak is since the server started
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_rss_mib(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def stats(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()["batching"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def run_clients(url: str, clients: int, seconds: float, sentences: list[str], options: dict,
                      warmup: float) -> dict:
    latencies: list[float] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    # One httpx client (one keep-alive connection) per simulated client: independent clients, as in real use,
    # and much cheaper than one pool of 64 connections, whose bookkeeping grows with its size.
    https = [httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(120.0),
                               limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
             for _ in range(clients)]

    async def client(index: int, until: float, record: bool) -> None:
        nonlocal errors
        http = https[index]
        position = index * 7919
        while time.perf_counter() < until:
            text = sentences[position % len(sentences)]
            position += 1
            began = time.perf_counter()
            try:
                response = await http.post("/translate", json={"text": text, **options})
                kind = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                kind = type(error).__name__
            if not record:
                continue
            if kind is None:
                latencies.append(time.perf_counter() - began)
            else:
                errors += 1
                error_kinds[kind] = error_kinds.get(kind, 0) + 1

    try:
        if warmup > 0:
            until = time.perf_counter() + warmup
            await asyncio.gather(*(client(i, until, False) for i in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds, True) for i in range(clients)))
        elapsed = time.perf_counter() - started  # until the last answer came back
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    latencies.sort()

    def percentile(q: float) -> float | None:
        if not latencies:
            return None
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    return {"requests": len(latencies), "errors": errors, "error_kinds": error_kinds, "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else None}


def write_markdown(results: dict, path: Path) -> None:
    from attnmt.evaluation import markdown_table

    settings = results["settings"]
    lines = [
        BEGIN,
        "## Serving: requests/s under load, batched vs unbatched (serving issue)",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}.  ",
        f"Model: `{results['model_dir']}` ({results['model']}); one sentence per request, "
        f"beam size {results['beam_size']}; {results['seconds']} s per row after {results['warmup']} s of warm-up; "
        f"the clients (httpx, asyncio) run on the same machine as the server.  ",
        f"Batched: up to {settings['max_batch_size']} texts per model call, {settings['max_wait_ms']} ms wait; "
        f"unbatched: one request per model call. Server torch threads: {settings['threads']}.",
        "",
        markdown_table(results["rows"], COLUMNS),
    ]
    lines.append("")
    lines.append("Batched / unbatched throughput: " + ", ".join(
        f"**{ratio}×** with {clients} client{'' if clients == '1' else 's'}"
        for clients, ratio in results["speedup"].items()) + ".")
    lines.append(END)
    replace_section(path, BEGIN, END, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, help="a trained attnmt model directory (e.g. runs/demo)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured time per mode and client count")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each run; default min(3, seconds/5)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--modes", nargs="+", choices=["batched", "unbatched"], default=["batched", "unbatched"])
    parser.add_argument("--beam-size", type=int, help="sent with every request; default the model's")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--sentences", help="a text file, one sentence per line; default the model's corpus")
    parser.add_argument("--json", default="benchmarks/results/serve_load.json")
    parser.add_argument("--markdown", default="docs/benchmarks.md")
    args = parser.parse_args()

    model_dir = Path(args.model_dir)
    if not (model_dir / "config.yaml").is_file():
        sys.exit(f"{model_dir} is not a trained attnmt model directory (no config.yaml)")
    from attnmt.config import load_config
    from attnmt.serve import ServeSettings

    config = load_config(model_dir / "config.yaml")
    base = ServeSettings(threads=args.threads)
    sentences = load_sentences(model_dir, args.sentences, base.max_text_chars)
    if not sentences:
        sys.exit("no sentences to send")
    warmup = args.warmup if args.warmup is not None else min(3.0, args.seconds / 5)
    options = {"beam_size": args.beam_size} if args.beam_size else {}
    mode_settings = {
        "batched": ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                                 threads=args.threads,
                                 max_queued_texts=max(base.max_queued_texts, 4 * max(args.clients))),
        "unbatched": ServeSettings.unbatched(threads=args.threads,
                                             max_queued_texts=max(base.max_queued_texts, 4 * max(args.clients))),
    }
    rows = []
    for mode in args.modes:
        settings = mode_settings[mode]
        print(f"{mode}: starting the server ({model_dir}) ...", flush=True)
        server = Server(model_dir, settings.model_dump())
        try:
            server.wait_ready()
            for clients in args.clients:
                server.reset_peak_rss()
                before = server.stats()
                result = asyncio.run(run_clients(server.url, clients, args.seconds, sentences, options, warmup))
                after = server.stats()
                calls = after["model_calls"] - before["model_calls"]
                row = {"mode": mode, "clients": clients, **result,
                       "mean_batch": round((after["texts"] - before["texts"]) / calls, 2) if calls else None,
                       "server_peak_rss_mib": server.peak_rss_mib()}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()

    def throughput(mode: str, clients: int) -> float | None:
        return next((r["requests_per_s"] for r in rows if r["mode"] == mode and r["clients"] == clients), None)

    speedup = {}
    for clients in args.clients:
        batched, unbatched = throughput("batched", clients), throughput("unbatched", clients)
        if batched and unbatched:
            speedup[str(clients)] = round(batched / unbatched, 2)
    model = config.model
    results = {
        "command": "python " + " ".join(["benchmarks/serve_load.py"] + sys.argv[1:]),
        "machine": machine(), "model_dir": str(model_dir),
        "model": f"{model.type} {model.cell} {model.hidden_size}, attention "
                 f"{model.attention.score if model.uses_attention else 'none'}",
        "beam_size": args.beam_size or config.search.beam_size, "seconds": args.seconds, "warmup": warmup,
        "settings": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                     "threads": args.threads},
        "sentences": len(sentences), "rows": rows, "speedup": speedup,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    write_markdown(results, Path(args.markdown))
    from attnmt.evaluation import markdown_table

    print(markdown_table(rows, COLUMNS))
    for clients, ratio in speedup.items():
        print(f"batched / unbatched with {clients} concurrent clients: {ratio}x")
    top = str(max(args.clients))
    if top in speedup:
        errors = sum(r["errors"] for r in rows if r["clients"] == int(top))
        print(f"target at {top} clients: 0 errors ({'met' if errors == 0 else f'{errors} errors'}), "
              f"batched ≥ 3× unbatched ({'met' if speedup[top] >= 3 else 'not met'})")


if __name__ == "__main__":
    main()
