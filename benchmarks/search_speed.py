"""Decoding speed with and without gathering attention, side by side in one run.

    python benchmarks/search_speed.py --models runs/peers-rnn/model runs/peers-transformer/model
    python benchmarks/search_speed.py --models DIR --src my.de --repeats 5

Search keeps every step's attention weights (the RNN's [S] per step, the Transformer's [L, H, S]) so that heatmaps
can be drawn; `attnmt translate` and `attnmt evaluate` only need the text and call `translate(..., attention=False)`,
which neither asks the model for the weights (the Transformer's attention then takes the fused
`scaled_dot_product_attention` path) nor gathers them. This benchmark translates the same sentences both ways,
alternating the order each repetition so that drift hits both alike, and reports sentences/s (median) and their
ratio, for greedy search and beam 5, in batches of 64 sentences. It also counts the sentences whose translations
differ between the two ways (expected 0: the same search, only float rounding may differ).

Writes benchmarks/results/search_speed.json and the "Decoding" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from report import machine, replace_section

from attnmt.data import read_lines
from attnmt.translator import Translator

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- search-speed:begin -->", "<!-- search-speed:end -->"
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "multi30k" / "test2016.de"
WAYS = {"with attention": True, "text only": False}


def timed_translation(translator: Translator, sentences: list[str], beam: int, attention: bool, batch: int
                      ) -> tuple[float, list[str]]:
    started = time.perf_counter()
    texts = [t.text for t in translator.translate(sentences, beam_size=beam, batch_size=batch, attention=attention)]
    return time.perf_counter() - started, texts


def measure_model(model_dir: str, sentences: list[str], beams: list[int], repeats: int, batch: int) -> dict:
    translator = Translator.load(model_dir, device="cpu")
    rows = []
    for beam in beams:
        timed_translation(translator, sentences[:batch], beam, True, batch)  # warm-up
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}
        outputs: dict[str, list[str]] = {}
        for repetition in range(repeats):
            ways = list(WAYS) if repetition % 2 == 0 else list(reversed(WAYS))
            for way in ways:
                elapsed, outputs[way] = timed_translation(translator, sentences, beam, WAYS[way], batch)
                seconds[way].append(elapsed)
        rate = {way: len(sentences) / statistics.median(times) for way, times in seconds.items()}
        differ = sum(a != b for a, b in zip(outputs["with attention"], outputs["text only"]))
        rows.append({"beam": beam, "sentences_per_second": rate, "seconds": seconds,
                     "speed_up": rate["text only"] / rate["with attention"], "translations_that_differ": differ})
        print(f"{model_dir} beam {beam}: " + ", ".join(f"{way} {value:,.1f} sent/s" for way, value in rate.items())
              + f" ({rows[-1]['speed_up']:.2f}×; {differ} differ)", flush=True)
    config = translator.config.model
    kind = config.type if config.type == "transformer" else f"{config.type} {config.cell}"
    return {"model": model_dir, "kind": kind, "params": sum(p.numel() for p in translator.model.parameters()),
            "beams": rows}


def markdown(results: dict) -> str:
    lines = [f"`{results['command']}` on {results['machine']}; {results['threads']} threads, "
             f"{results['sentences']:,} sentences of `{results['source']}`, batches of {results['batch']}, median of "
             f"{results['repeats']} alternating repetitions.",
             "",
             "| model | search | with attention sent/s | text only sent/s | speed-up | translations that differ |",
             "|---|---|---:|---:|---:|---:|"]
    for model in results["models"]:
        for row in model["beams"]:
            search = "greedy" if row["beam"] == 1 else f"beam {row['beam']}"
            rate = row["sentences_per_second"]
            lines.append(f"| {model['kind']} ({model['params'] / 1e6:.1f}M) | {search} | "
                         f"{rate['with attention']:,.1f} | {rate['text only']:,.1f} | {row['speed_up']:.2f}× | "
                         f"{row['translations_that_differ']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="trained attnmt model directories")
    parser.add_argument("--src", default=str(DEFAULT_SOURCE), help="source sentences, one per line")
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sentences = read_lines(Path(args.src), role="source file")
    models = [measure_model(model, sentences, args.beams, args.repeats, args.batch) for model in args.models]
    command = "python benchmarks/search_speed.py --models " + " ".join(args.models) + \
        ("" if args.repeats == 3 else f" --repeats {args.repeats}")
    results = {"machine": machine(), "torch": torch.__version__, "threads": args.threads, "command": command,
               "source": os.path.relpath(args.src, ROOT), "sentences": len(sentences), "batch": args.batch, "repeats": args.repeats,
               "models": models}
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    section = f"{BEGIN}\n## Decoding: gathering attention or not\n\n{markdown(results)}\n{END}"
    replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, section)
    print(markdown(results))


if __name__ == "__main__":
    main()
