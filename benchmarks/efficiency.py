"""How much of the machine's matrix-multiply rate does training use? Model FLOP/s against measured matmul FLOP/s.

    python benchmarks/efficiency.py                       # both Multi30k configs, 2 threads, ~3 minutes
    python benchmarks/efficiency.py --configs configs/multi30k_de_en_rnn.yaml --steps 30
    python benchmarks/efficiency.py --mixed-precision none bf16     # float32 and bf16 autocast side by side

1. The machine's float32 matmul rate: the best of several timed `torch.mm` calls for square n×n products
   (2n³ FLOPs each) and for the shape of a model's output layer (tokens × hidden @ hidden × vocabulary).
2. Model FLOPs of one training step: `torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of every matrix
   product (mm, bmm, addmm, attention kernels) in the forward and backward pass of a real batch.
   Element-wise work (activations, softmax, Adam) is not counted, as is usual for "model FLOPs utilisation".
3. The time of the same training steps (after warm-up), so model FLOP/s = FLOPs per step / seconds per step.
   With several `--mixed-precision` modes, one trainer per mode (the same initial weights) takes each batch in turn,
   alternating which goes first, so that both see the same batches and the same drift of the machine; the rate of a
   bf16 run is compared with the bf16 matmul rate. The mean training loss of the timed steps is printed with it, to
   show that the cheaper arithmetic trains the same (quality after a full budget is measured by the BLEU runs).

Writes benchmarks/results/efficiency.json and the "Efficiency" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from report import machine, publish, shared_data_overrides

from attnmt.config import load_config
from attnmt.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ["configs/multi30k_de_en_rnn.yaml", "configs/multi30k_de_en_transformer.yaml"]


DTYPES = {"none": torch.float32, "bf16": torch.bfloat16}


def matmul_flops_per_second(m: int, k: int, n: int, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """Best rate of C = A B with A: m×k, B: k×n (float32, or the dtype given); one product is 2mkn FLOPs."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
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


def measure_config(config_path: str, steps: int, warmup: int, threads: int, precisions: list[str]) -> list[dict]:
    """FLOPs per step and seconds per step of the config's real training step on Multi30k batches, one row per
    mixed-precision mode; the modes' trainers take each batch in turn."""
    trainers = {}
    with tempfile.TemporaryDirectory() as model_dir:
        for precision in precisions:
            overrides = {"training.threads": threads, "training.tensorboard": False,
                         "training.mixed_precision": precision, **shared_data_overrides(config_path)}
            config = load_config(config_path, overrides)
            trainers[precision] = Trainer(config, Path(model_dir) / precision, show_progress=False)
        first = trainers[precisions[0]]
        order = first.train_data.batches(config.training.batch_tokens, shuffle=True, seed=1)
        batches = [first.train_data.batch(indices) for indices in order[:warmup + steps]]
        flops = [step_flops(first, batch) for batch in batches[warmup:]]
        for batch in batches[:warmup]:
            for trainer in trainers.values():
                trainer.train_step(batch)
        seconds: dict[str, list[float]] = {precision: [] for precision in precisions}
        losses: dict[str, list[float]] = {precision: [] for precision in precisions}
        for i, batch in enumerate(batches[warmup:]):
            for precision in (precisions if i % 2 == 0 else precisions[::-1]):
                started = time.perf_counter()
                loss = trainers[precision].train_step(batch)
                seconds[precision].append(time.perf_counter() - started)
                losses[precision].append(loss)
        tokens = sum(batch.num_tgt_tokens for batch in batches[warmup:])
        vocabulary, hidden = first.tokenizer.tgt_vocab_size, _output_input_size(first.model)
    return [{"config": config_path, "mixed_precision": precision, "steps": steps,
             "params": first.model.describe().parameters,
             "flops_per_step": statistics.mean(flops), "seconds_per_step": statistics.mean(seconds[precision]),
             "model_flops_per_second": sum(flops) / sum(seconds[precision]),
             "tgt_tokens_per_second": tokens / sum(seconds[precision]),
             "mean_loss_of_timed_steps": statistics.mean(losses[precision]),
             "output_layer": {"tokens": batches[warmup].tgt_in.numel(), "hidden": hidden, "vocabulary": vocabulary}}
            for precision in precisions]


def _output_input_size(model: torch.nn.Module) -> int:
    """The input size of the model's last Linear layer (the projection onto the target vocabulary)."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return linears[-1].in_features


def markdown(results: dict) -> str:
    rates = results["matmul"]
    lines = [f"`{results['command']}` on {results['machine']}.",
             "",
             f"Measured float32 matmul rate (best of 10 calls each): 1024³: "
             f"{rates['none']['square_1024'] / 1e9:,.1f} GFLOP/s; "
             + "; ".join(f"output-layer shape {row['shape']}: {row['flops_per_second'] / 1e9:,.1f} GFLOP/s"
                         for row in rates["none"]["output_layers"])
             + f". The last column divides by the best of these, {rates['none']['best'] / 1e9:,.1f} GFLOP/s"
             + "".join(f"; for {mode} by the best {mode} rate, {rates[mode]['best'] / 1e9:,.1f} GFLOP/s"
                       for mode in rates if mode != "none") + ".",
             "",
             "| config | mixed precision | params | model GFLOPs / step | s / step | train tgt tok/s | "
             "mean loss of the timed steps | model GFLOP/s | of matmul rate |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    baseline = {row["config"]: row for row in results["configs"] if row["mixed_precision"] == "none"}
    for row in results["configs"]:
        speed_up = ""
        if row["mixed_precision"] != "none" and row["config"] in baseline:
            speed_up = f" ({row['tgt_tokens_per_second'] / baseline[row['config']]['tgt_tokens_per_second']:.2f}×)"
        lines.append(f"| `{row['config']}` | {row['mixed_precision']} | {row['params'] / 1e6:.2f}M | "
                     f"{row['flops_per_step'] / 1e9:,.1f} | {row['seconds_per_step']:.3f} | "
                     f"{row['tgt_tokens_per_second']:,.0f}{speed_up} | {row['mean_loss_of_timed_steps']:.3f} | "
                     f"{row['model_flops_per_second'] / 1e9:,.1f} | "
                     f"{row['model_flops_per_second'] / rates[row['mixed_precision']]['best']:.0%} |")
    lines += ["", "Model FLOPs count the matrix products of forward and backward (torch's FlopCounterMode); "
              "element-wise work and the optimizer are not counted. Rows of one config ran side by side (each "
              "batch by every mode in turn, the same initial weights)."]
    return "\n".join(lines)


def matmul_rates(rows: list[dict], dtype: torch.dtype) -> dict:
    """The square 1024³ rate, the rate at each config's output-layer shape, and the best of them."""
    output_layers = []
    for row in rows:
        shape = row["output_layer"]
        rate = matmul_flops_per_second(shape["tokens"], shape["hidden"], shape["vocabulary"], dtype=dtype)
        output_layers.append({"shape": f"{shape['tokens']}×{shape['hidden']} @ {shape['hidden']}×"
                                       f"{shape['vocabulary']}", "flops_per_second": rate})
    square = matmul_flops_per_second(1024, 1024, 1024, dtype=dtype)
    return {"square_1024": square, "output_layers": output_layers,
            "best": max([square] + [row["flops_per_second"] for row in output_layers])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per config")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mixed-precision", nargs="+", choices=list(DTYPES), default=["none"],
                        help="training.mixed_precision modes to compare (CPU: none, bf16)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "efficiency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = ["none"] + [mode for mode in args.mixed_precision if mode != "none"]

    rows = [row for path in args.configs
            for row in measure_config(path, args.steps, args.warmup, args.threads, precisions)]
    first_mode = [row for row in rows if row["mixed_precision"] == "none"]
    matmul = {mode: matmul_rates(first_mode, DTYPES[mode]) for mode in precisions}
    command = "python " + shlex.join(["benchmarks/efficiency.py", *sys.argv[1:]])
    results = {"machine": machine(), "threads": args.threads, "torch": torch.__version__, "command": command,
               "matmul": matmul, "configs": rows}
    publish(results, args.out, "efficiency", "Efficiency: model FLOP/s against the matmul rate", markdown(results))


if __name__ == "__main__":
    main()
