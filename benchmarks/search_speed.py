"""Decoding speed with and without gathering attention, and under bf16 autocast, side by side in one run.

    python benchmarks/search_speed.py --models runs/peers-rnn/model runs/peers-transformer/model
    python benchmarks/search_speed.py --models DIR --src my.de --repeats 5

Search keeps every step's attention weights (the RNN's [S] per step, the Transformer's [L, H, S]) so that heatmaps
can be drawn; `attnmt translate` and `attnmt evaluate` only need the text and call `translate(..., attention=False)`,
which neither asks the model for the weights (the Transformer's attention then takes the fused
`scaled_dot_product_attention` path) nor gathers them. `--mixed-precision bf16` (`Translator.load(...,
mixed_precision="bf16")`) runs the matrix products in bfloat16 and keeps the log-probabilities float32.

This benchmark translates the same sentences each way, rotating the order each repetition so that drift hits all
alike, and reports sentences/s (median), the ratio to the first way, the sentences whose translation differs from the
first way's (0 expected without bf16: the same search, only float rounding may differ) and sacreBLEU against
`--ref`, for greedy search and beam 5, in batches of 64 sentences.

Writes benchmarks/results/search_speed.json and the "Decoding" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import sacrebleu
import torch

from report import machine, publish

from attnmt.data import read_lines
from attnmt.translator import Translator

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "multi30k"
# name: (gather attention, mixed precision); the first is the reference the others are compared with
WAYS = {"with attention": (True, "none"), "text only": (False, "none"), "text only, bf16": (False, "bf16")}


def timed_translation(translator: Translator, sentences: list[str], beam: int, attention: bool, batch: int
                      ) -> tuple[float, list[str]]:
    started = time.perf_counter()
    texts = [t.text for t in translator.translate(sentences, beam_size=beam, batch_size=batch, attention=attention)]
    return time.perf_counter() - started, texts


def measure_model(model_dir: str, sentences: list[str], references: list[str], ways: list[str], beams: list[int],
                  repeats: int, batch: int) -> dict:
    translators = {precision: Translator.load(model_dir, device="cpu", mixed_precision=precision)
                   for precision in {WAYS[way][1] for way in ways}}
    first = ways[0]
    rows = []
    for beam in beams:
        for way in ways:  # warm-up
            timed_translation(translators[WAYS[way][1]], sentences[:batch], beam, WAYS[way][0], batch)
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        outputs: dict[str, list[str]] = {}
        for repetition in range(repeats):
            shift = repetition % len(ways)
            for way in ways[shift:] + ways[:shift]:
                attention, precision = WAYS[way]
                elapsed, outputs[way] = timed_translation(translators[precision], sentences, beam, attention, batch)
                seconds[way].append(elapsed)
        row = {"beam": beam, "ways": {}}
        for way in ways:
            rate = len(sentences) / statistics.median(seconds[way])
            row["ways"][way] = {
                "sentences_per_second": rate, "seconds": seconds[way],
                "speed_up": rate / (len(sentences) / statistics.median(seconds[first])),
                "translations_that_differ": sum(a != b for a, b in zip(outputs[first], outputs[way])),
                "bleu": round(sacrebleu.corpus_bleu(outputs[way], [references]).score, 2)}
        rows.append(row)
        print(f"{model_dir} beam {beam}: " + "; ".join(
            f"{way} {r['sentences_per_second']:,.1f} sent/s ({r['speed_up']:.2f}×, {r['translations_that_differ']} "
            f"differ, BLEU {r['bleu']})" for way, r in row["ways"].items()), flush=True)
    translator = translators[WAYS[first][1]]
    description = translator.describe()
    return {"model": model_dir, "kind": description.summary, "params": description.parameters,
            "beams": rows}


def markdown(results: dict) -> str:
    lines = [f"`{results['command']}` on {results['machine']}; {results['threads']} threads, "
             f"{results['sentences']:,} sentences of `{results['source']}`, batches of {results['batch']}, median of "
             f"{results['repeats']} repetitions in rotating order; BLEU: sacreBLEU against `{results['reference']}`.",
             "",
             "| model | search | way | sentences/s | speed-up | translations that differ | BLEU |",
             "|---|---|---|---:|---:|---:|---:|"]
    for model in results["models"]:
        for row in model["beams"]:
            search = "greedy" if row["beam"] == 1 else f"beam {row['beam']}"
            for way, r in row["ways"].items():
                lines.append(f"| {model['kind']} ({model['params'] / 1e6:.1f}M) | {search} | {way} | "
                             f"{r['sentences_per_second']:,.1f} | {r['speed_up']:.2f}× | "
                             f"{r['translations_that_differ']} | {r['bleu']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="trained attnmt model directories")
    parser.add_argument("--src", default=str(DATA / "test2016.de"), help="source sentences, one per line")
    parser.add_argument("--ref", default=str(DATA / "test2016.en"), help="their reference translations")
    parser.add_argument("--ways", nargs="+", choices=list(WAYS), default=list(WAYS))
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="sentences per batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sentences = read_lines(Path(args.src), role="source file")
    references = read_lines(Path(args.ref), role="reference file")
    models = [measure_model(model, sentences, references, args.ways, args.beams, args.repeats, args.batch)
              for model in args.models]
    command = "python " + shlex.join(["benchmarks/search_speed.py", *sys.argv[1:]])
    results = {"machine": machine(), "torch": torch.__version__, "threads": args.threads, "command": command,
               "source": os.path.relpath(args.src, ROOT), "reference": os.path.relpath(args.ref, ROOT), "sentences": len(sentences), "batch": args.batch, "repeats": args.repeats,
               "models": models}
    publish(results, args.out, "search-speed", "Decoding: gathering attention or not, float32 or bf16",
            markdown(results))


if __name__ == "__main__":
    main()
