"""Does the RNN learn faster from Glorot-initialized weights than from PyTorch's defaults? Dev loss at equal steps.

    python benchmarks/rnn_init.py --config ~/.cache/attnmt-peers/runs/RUN/bleu-rnn-attnmt/attnmt.yaml --steps 600
    python benchmarks/rnn_init.py --steps 600          # the shipped Multi30k RNN config (reads ../shared/data)

attnmt's RNN models keep PyTorch's initialization: embeddings N(0, 1); GRU/LSTM matrices and biases, and linear
layers, uniform within ±1/√fan_in. OpenNMT-py (`param_init_glorot`) and JoeyNMT (`initializer: xavier_uniform`) use
Glorot & Bengio (2010) instead: W ~ U(±√(6 / (fan_in + fan_out))), zero biases. This trains one model each way from
the same seed on the same batches, in the same order, and measures the dev loss every `--every` steps; the scheme
with the lower dev loss at equal steps learns more per step (each step costs the same time either way).

Writes benchmarks/results/rnn_init.json and the "RNN initialization" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from report import machine, publish, shared_data_overrides

from attnmt.config import load_config
from attnmt.training import Trainer

ROOT = Path(__file__).resolve().parent.parent


def glorot_initialize(model: nn.Module) -> None:
    """Glorot-uniform weight matrices, zero biases; an RNN's stacked gate matrices ([W_r; W_z; W_n] for a GRU) get one
    Glorot matrix per gate. Embeddings are left as they are."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RNNBase):
            gates = {"GRU": 3, "LSTM": 4}.get(module.mode, 1)
            for name, parameter in module.named_parameters():
                if name.startswith("weight"):
                    for gate in parameter.data.chunk(gates, dim=0):  # [gates·H, in] → gates × [H, in]
                        nn.init.xavier_uniform_(gate)
                else:
                    nn.init.zeros_(parameter)


SCHEMES = {"pytorch": lambda model: None, "glorot": glorot_initialize}


def dev_losses(config_path: str, scheme: str, steps: int, every: int, threads: int) -> list[dict]:
    """Train `steps` steps with the scheme's initialization; the dev loss every `every` steps."""
    with tempfile.TemporaryDirectory() as model_dir:
        config = load_config(config_path, {"training.threads": threads, "training.tensorboard": False,
                                           **shared_data_overrides(config_path)})
        trainer = Trainer(config, Path(model_dir), show_progress=False)
        SCHEMES[scheme](trainer.model)
        order: list[list[int]] = []
        epoch = 0
        while len(order) < steps:  # the same epochs, each shuffled by its own seed, for every scheme
            order += trainer.train_data.batches(config.training.batch_tokens, shuffle=True, seed=1 + epoch)
            epoch += 1
        losses = []
        for step, indices in enumerate(order[:steps], start=1):
            trainer.train_step(trainer.train_data.batch(indices))
            if step % every == 0:
                losses.append({"step": step, "dev_loss": trainer.dev_loss()})
                print(f"{scheme}: step {step}, dev loss {losses[-1]['dev_loss']:.4f}", flush=True)
    return losses


def markdown(results: dict) -> str:
    schemes = list(results["dev_loss"])
    intro = (f"`{results['command']}` on {results['machine']}. One model per scheme, trained from the same seed on the "
             "same batches in the same order; dev loss per target token.")
    if "bleu-rnn-attnmt" in results["config"]:
        intro += (" (The config is the one the peers benchmark writes for attnmt's RNN: "
                  "`python benchmarks/peers/run.py bleu --arch rnn --systems attnmt`.)")
    lines = [intro, "",
             "| step | " + " | ".join(f"dev loss, {scheme}" for scheme in schemes) + " |",
             "|---:|" + "---:|" * len(schemes)]
    for i, row in enumerate(results["dev_loss"][schemes[0]]):
        lines.append(f"| {row['step']:,} | "
                     + " | ".join(f"{results['dev_loss'][scheme][i]['dev_loss']:.4f}" for scheme in schemes) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/multi30k_de_en_rnn.yaml", help="an RNN training config")
    parser.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES))
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rnn_init.json"))
    args = parser.parse_args()
    results = {"machine": machine(), "torch": torch.__version__, "config": args.config,
               "command": "python " + shlex.join(["benchmarks/rnn_init.py", *sys.argv[1:]]),
               "dev_loss": {scheme: dev_losses(args.config, scheme, args.steps, args.every, args.threads)
                            for scheme in args.schemes}}
    publish(results, args.out, "rnn-init", "RNN initialization: PyTorch's defaults or Glorot", markdown(results))


if __name__ == "__main__":
    main()
