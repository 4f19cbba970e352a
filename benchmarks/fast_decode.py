"""Fast decoding: each decoding path on one model, greedy and beam 5, sentences per second against torch float32.

    python benchmarks/fast_decode.py --model runs/MODEL --src test.src --ref test.ref [--limit N] [--reps 3]

Paths (`PATHS`): torch float32 and torch int8 (`--quantization int8`: dynamic int8, attnmt/quantization.py; RNN and
Transformer), and the model's CTranslate2 export (`attnmt export`, written here when missing or stale) in float32, int8
and int8_float32, with CTranslate2's own choice of matrix library and the backend's thread layout (one batch per thread,
batches decoded at once); for float32 and int8 also one batch at a time on all the threads (`parallel_batches=1`), and
with Intel's MKL forced (`CT2_USE_MKL=1`; CTranslate2 picks oneDNN on AMD CPUs). Each (path, search) decodes the whole
--src in a process of its own (so its peak RSS is its own, model loading included), the paths alternating within each of
--reps repetitions; a row gets the median sentences/s, its ratio to torch float32 with the same search, BLEU (sacreBLEU,
the model's target-language tokenizer) and the peak RSS. Results: benchmarks/results/fast_decode_MODEL.json and the
"Fast decoding" section of docs/benchmarks.md (report.publish). Threads: torch's default, and CTranslate2 as many
(`attnmt.backends.ctranslate2_threads`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import machine, publish  # noqa: E402

JSON_PATH = Path(__file__).resolve().parent / "results" / "fast_decode.json"
PATHS = {  # name → Translator.load options
    "torch float32": {},
    "torch int8": {"quantization": "int8"},
    "ctranslate2 float32": {"backend": "ctranslate2", "compute_type": "float32"},
    "ctranslate2 int8": {"backend": "ctranslate2", "compute_type": "int8"},
    "ctranslate2 int8_float32": {"backend": "ctranslate2", "compute_type": "int8_float32"},
    "ctranslate2 float32, one batch at a time": {"backend": "ctranslate2", "compute_type": "float32",
                                                 "parallel_batches": 1},
    "ctranslate2 int8, one batch at a time": {"backend": "ctranslate2", "compute_type": "int8", "parallel_batches": 1},
    "ctranslate2 float32, CT2_USE_MKL=1": {"backend": "ctranslate2", "compute_type": "float32"},
    "ctranslate2 int8, CT2_USE_MKL=1": {"backend": "ctranslate2", "compute_type": "int8"},
}
ENVIRONMENT = {  # path → variables set in its process (CTranslate2 reads CT2_USE_MKL as it is imported)
    "ctranslate2 float32, CT2_USE_MKL=1": {"CT2_USE_MKL": "1"},
    "ctranslate2 int8, CT2_USE_MKL=1": {"CT2_USE_MKL": "1"},
}
SEARCHES = {"greedy": 1, "beam 5": 5}
EXPORTS = ("float32", "int8", "int8_float32")  # the exports the CTranslate2 paths read


def read_lines(path: str, limit: int | None) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return lines[:limit] if limit else lines


def one(args) -> None:
    """Child: load one path, decode --src once with one search; print {seconds, hypotheses, peak_rss_mb} as JSON."""
    from attnmt.translator import Translator

    translator = Translator.load(args.model, device="cpu", **PATHS[args.one])
    sources = read_lines(args.src, args.limit)
    start = time.perf_counter()
    results = translator.translate(sources, beam_size=SEARCHES[args.search], attention=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes
    print(json.dumps({"seconds": seconds, "hypotheses": [r.text for r in results], "peak_rss_mb": peak_mb}))


def ensure_exports(model_dir: str) -> None:
    """Export each quantization the CTranslate2 paths read, unless an up-to-date export is there."""
    from attnmt.errors import AttnmtError
    from attnmt.export import check_export, default_output, export_ctranslate2

    for quantization in EXPORTS:
        out = default_output(model_dir, quantization)
        try:
            check_export(out, Path(model_dir))
        except AttnmtError:
            export_ctranslate2(model_dir, out, quantization=quantization)


def child(args, path: str, search: str) -> dict:
    command = [sys.executable, __file__, "--one", path, "--search", search, "--model", args.model, "--src", args.src,
               "--ref", args.ref] + (["--limit", str(args.limit)] if args.limit else [])
    environment = {**os.environ, **ENVIRONMENT.get(path, {})}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"{path} / {search} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| path | search | sentences/s (median) | × torch float32 | BLEU | peak RSS (MB) |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['path']} | {row['search']} | {row['sentences_per_s']:.1f} | {row['ratio']:.2f} | "
                     f"{row['bleu']:.2f} | {row['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="a model directory: an RNN or a Transformer (the CTranslate2 paths: Transformers only)")
    parser.add_argument("--src", required=True)
    parser.add_argument("--ref", required=True)
    parser.add_argument("--limit", type=int, help="the first N lines only (smoke runs)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--paths", nargs="+", choices=list(PATHS),
                        help="default: every path the model can take (a model without a CTranslate2 export: torch)")
    parser.add_argument("--one", choices=list(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--search", choices=list(SEARCHES), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="where the results go (default: benchmarks/results/fast_decode_MODEL.json)")
    parser.add_argument("--smoke", action="store_true", help="print the table only: docs/benchmarks.md untouched")
    args = parser.parse_args()
    if args.one:
        return one(args)

    from attnmt.config import load_config
    from attnmt.evaluation import corpus_scores, default_tokenizer

    from attnmt.errors import AttnmtError

    chosen, args.paths = args.paths, args.paths or list(PATHS)
    if any(PATHS[p].get("backend") == "ctranslate2" for p in args.paths):
        try:
            ensure_exports(args.model)
        except AttnmtError as error:  # e.g. an RNN: CTranslate2 paths only when asked for by name
            if chosen:
                raise SystemExit(f"fast_decode: {error}") from None
            print(f"fast_decode: torch paths only ({error})", file=sys.stderr)
            args.paths = [p for p in args.paths if PATHS[p].get("backend") != "ctranslate2"]
    references = read_lines(args.ref, args.limit)
    tokenize = default_tokenizer(load_config(Path(args.model) / "config.yaml").data.tgt_lang)
    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.reps):
        for search in SEARCHES:
            for path in args.paths:  # alternating: no path gets all the quiet (or busy) minutes
                runs.setdefault((path, search), []).append(child(args, path, search))
    rows = []
    for (path, search), measured in runs.items():
        rate = statistics.median(len(references) / m["seconds"] for m in measured)
        rows.append({"path": path, "search": search, "sentences_per_s": rate,
                     "seconds": [m["seconds"] for m in measured],
                     "bleu": corpus_scores(measured[0]["hypotheses"], references, tokenize=tokenize)["bleu"],
                     "peak_rss_mb": max(m["peak_rss_mb"] for m in measured)})
    for row in rows:
        base = next((r for r in rows if r["path"] == "torch float32" and r["search"] == row["search"]), None)
        row["ratio"] = row["sentences_per_s"] / base["sentences_per_s"] if base else float("nan")
    rows.sort(key=lambda r: (list(SEARCHES).index(r["search"]), list(PATHS).index(r["path"])))
    results = {"machine": machine(), "model": Path(args.model).name, "sentences": len(references),
               "reps": args.reps, "command": " ".join(["python", "benchmarks/fast_decode.py", *sys.argv[1:]]),
               "rows": rows}
    header = (f"Model `{results['model']}`, {len(references)} sentences, median of {args.reps} runs per path "
              f"(each in its own process, paths alternating); {results['machine']}.\n\n")
    if args.smoke:
        return print(header + table(rows))
    name = results["model"]  # each model its own results file and section
    publish(results, args.json or JSON_PATH.with_name(f"fast_decode_{name}.json"), f"fast_decode_{name}",
            f"Fast decoding (CTranslate2, int8): {name}", header + table(rows))


if __name__ == "__main__":
    main()
