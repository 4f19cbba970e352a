"""How much of the machine's matrix-multiply rate does training use? Model FLOP/s against measured matmul FLOP/s.

    python benchmarks/efficiency.py                       # both Multi30k configs, 2 threads, ~3 minutes
    python benchmarks/efficiency.py --configs configs/multi30k_de_en_rnn.yaml --steps 30

1. The machine's float32 matmul rate: the best of several timed `torch.mm` calls for square n×n products
   (2n³ FLOPs each) and for the shape of a model's output layer (tokens × hidden @ hidden × vocabulary).
2. Model FLOPs of one training step: `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of every matrix
   product (mm, bmm, addmm, attention kernels) in the forward and backward pass of a real batch.
   Element-wise work (activations, softmax, Adam) is not counted, as is usual for "model FLOPs utilisation".
3. The time of the same training steps (after warm-up), so model FLOP/s = FLOPs per step / seconds per step.

Writes benchmarks/results/efficiency.json and the "Efficiency" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from report import machine, replace_section

from attnmt.config import load_config
from attnmt.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- efficiency:begin -->", "<!-- efficiency:end -->"
DEFAULT_CONFIGS = ["configs/multi30k_de_en_rnn.yaml", "configs/multi30k_de_en_transformer.yaml"]


def matmul_flops_per_second(m: int, k: int, n: int, repeats: int = 10) -> float:
    """Best rate of C = A B with A: m×k, B: k×n in float32; one product is 2mkn FLOPs."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * m * k * n / min(times)


def step_flops(trainer: Trainer, batch) -> int:
    """Matrix-product FLOPs of one forward + backward pass on `batch` (no optimizer update)."""
    counter = FlopCounterMode(display=False)
    with counter:
        logits, _ = trainer.model(batch.src, batch.src_mask, batch.tgt_in)
        logits.float().logsumexp(-1).sum().backward()
    trainer.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure_config(config_path: str, steps: int, warmup: int, threads: int) -> dict:
    """FLOPs per step and seconds per step of the config's real training step on Multi30k batches."""
    overrides = {"training.threads": threads, "training.tensorboard": False}
    config = load_config(config_path, overrides)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(config, Path(model_dir), show_progress=False)
        order = trainer.train_data.batches(config.training.batch_tokens, shuffle=True, seed=1)
        batches = [trainer.train_data.batch(indices) for indices in order[:warmup + steps]]
        flops = [step_flops(trainer, batch) for batch in batches[warmup:]]
        for batch in batches[:warmup]:
            trainer.train_step(batch)
        seconds = []
        for batch in batches[warmup:]:
            started = time.perf_counter()
            trainer.train_step(batch)
            seconds.append(time.perf_counter() - started)
        tokens = sum(batch.num_tgt_tokens for batch in batches[warmup:])
        vocabulary, hidden = trainer.tokenizer.tgt_vocab_size, _output_input_size(trainer.model)
    return {"config": config_path, "steps": steps, "params": sum(p.numel() for p in trainer.model.parameters()),
            "flops_per_step": statistics.mean(flops), "seconds_per_step": statistics.mean(seconds),
            "model_flops_per_second": sum(flops) / sum(seconds), "tgt_tokens_per_second": tokens / sum(seconds),
            "output_layer": {"tokens": batches[warmup].tgt_in.numel(), "hidden": hidden, "vocabulary": vocabulary}}


def _output_input_size(model: torch.nn.Module) -> int:
    """The input size of the model's last Linear layer (the projection onto the target vocabulary)."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return linears[-1].in_features


def markdown(results: dict) -> str:
    peak = results["matmul"]["best"]
    lines = [f"`python benchmarks/efficiency.py --threads {results['threads']}` on {results['machine']}.",
             "",
             f"Measured float32 matmul rate (best of 10 calls each): 1024³: "
             f"{results['matmul']['square_1024'] / 1e9:,.1f} GFLOP/s; "
             + "; ".join(f"output-layer shape {row['shape']}: {row['flops_per_second'] / 1e9:,.1f} GFLOP/s"
                         for row in results["matmul"]["output_layers"]) + f". The last column divides by the best of these, {peak / 1e9:,.1f} GFLOP/s.",
             "",
             "| config | params | model GFLOPs / step | s / step | train tgt tok/s | model GFLOP/s | of matmul rate |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["configs"]:
        lines.append(f"| `{row['config']}` | {row['params'] / 1e6:.2f}M | {row['flops_per_step'] / 1e9:,.1f} | "
                     f"{row['seconds_per_step']:.3f} | {row['tgt_tokens_per_second']:,.0f} | "
                     f"{row['model_flops_per_second'] / 1e9:,.1f} | {row['model_flops_per_second'] / peak:.0%} |")
    lines += ["", "Model FLOPs count the matrix products of forward and backward (torch's FlopCounterMode); "
              "element-wise work and the optimizer are not counted."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per config")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "efficiency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = [measure_config(path, args.steps, args.warmup, args.threads) for path in args.configs]
    output_layers = []
    for row in rows:
        shape = row["output_layer"]
        rate = matmul_flops_per_second(shape["tokens"], shape["hidden"], shape["vocabulary"])
        output_layers.append({"shape": f"{shape['tokens']}×{shape['hidden']} @ {shape['hidden']}×"
                                       f"{shape['vocabulary']}", "flops_per_second": rate})
    square = matmul_flops_per_second(1024, 1024, 1024)
    best = max([square] + [row["flops_per_second"] for row in output_layers])
    results = {"machine": machine(), "threads": args.threads, "torch": torch.__version__,
               "matmul": {"square_1024": square, "output_layers": output_layers, "best": best},
               "configs": rows}
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = markdown(results)
    section = f"{BEGIN}\n## Efficiency: model FLOP/s against the matmul rate\n\n{table}\n{END}"
    replace_section(ROOT / "docs" / "benchmarks.md", BEGIN, END, section)
    print(table)


if __name__ == "__main__":
    main()
