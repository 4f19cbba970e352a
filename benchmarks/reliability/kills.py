"""Kills during training: a run SIGKILLed at random instants, inside its checkpoint writes too, and resumed each time,
ends with the very model an uninterrupted run trains, and every state a kill leaves loads.

    python benchmarks/reliability/kills.py --kills 20     → benchmarks/results/reliability_kills.json

A tiny GRU with attention and dropout learns to reverse letter sequences (`attnmt train --quiet` in a subprocess,
`--resume` once the folder holds a run), train_state/ saved after every step (`save_every_minutes` tiny). Each kill
lands in one window, in turn: after save_train_state has written train_state.new/, after its first rename, after its
second rename, inside its removal of train_state.old/ (the test hook ATTNMT_TEST_KILL_AT=POINT:COUNT of
attnmt/checkpoint.py SIGKILLs the process at the COUNT-th save that passes POINT, COUNT drawn from 1-3), or anywhere
("timer": SIGKILL from outside after a random 0.3-3 s, start-up included). After each kill a copy of the folder is
loaded as a resume would load it (train_state/ after recovery) and as `Translator.load` loads the best model; then
the run is resumed, until it finishes. The finished folder is compared with an uninterrupted run's:
model.safetensors and train_state/ bit for bit (state.json without its clock), and validations.jsonl (each step
once).
`def run(kills) -> dict` is what tests/test_training_faults.py (3 kills) and this script's main call.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/: report.py

from report import machine  # noqa: E402

from attnmt import checkpoint  # noqa: E402
from attnmt.config import Config, parse_config  # noqa: E402
from attnmt.data import Tokenizer  # noqa: E402
from attnmt.models import build_model  # noqa: E402
from attnmt.training import VALIDATION_LOG  # noqa: E402
from attnmt.translator import Translator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "reliability_kills.json"
WINDOWS = (*checkpoint.KILL_POINTS, "timer")  # the order kills take them in
TIMER_SECONDS = (0.3, 3.0)  # a timer kill comes this long after the start (start-up takes about 2 s)
STEPS_PER_KILL = 3  # training steps the run is given per planned kill (a hook kill lands within 3 saves)
WORDS = "abcdefghij"


def reversal_tsv(path: Path, count: int, rng: random.Random) -> Path:
    """`count` lines 'c a j<TAB>j a c' of 3-8 random letters."""
    lines = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        lines.append(f"{' '.join(words)}\t{' '.join(reversed(words))}\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def tiny_config(folder: Path, steps: int) -> dict:
    """A config whose model trains in a second or two; train_state/ saved after every step."""
    rng = random.Random(7)
    return {
        "name": "kills",
        "data": {"train": {"tsv": str(reversal_tsv(folder / "train.tsv", 300, rng))},
                 "dev": {"tsv": str(reversal_tsv(folder / "dev.tsv", 12, rng))}, "max_length": 30},
        "tokenizer": {"vocab_size": 16, "model_type": "word"},
        "model": {"cell": "gru", "embedding_size": 16, "hidden_size": 32, "encoder_hidden_size": 16,
                  "bidirectional": True, "dropout": 0.2, "attention": "additive"},
        "training": {"seed": 1, "max_steps": steps, "batch_tokens": 200, "learning_rate": 0.005,
                     "schedule": "plateau", "plateau_patience": 0, "label_smoothing": 0.1, "validate_every": 10,
                     "save_every_minutes": 1e-9, "tensorboard": False, "threads": 1, "device": "cpu"},
    }


def train_once(config_path: Path, model_dir: Path, window: str | None, rng: random.Random) -> tuple[int, str]:
    """One `attnmt train` process (--resume once the folder holds a run), killed in `window` (None: not at all);
    returns its exit status (-9: killed) and its stderr."""
    command = [sys.executable, "-m", "attnmt", "train", str(config_path), "--model-dir", str(model_dir), "--quiet"]
    if checkpoint.has_train_state(model_dir):
        command.append("--resume")
    environment = {name: value for name, value in os.environ.items() if name != checkpoint.KILL_AT}
    if window in checkpoint.KILL_POINTS:
        environment[checkpoint.KILL_AT] = f"{window}:{rng.randint(1, 3)}"
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = process.communicate(timeout=rng.uniform(*TIMER_SECONDS) if window == "timer" else 600)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err


def loads(model_dir: Path, config: Config) -> tuple[str | None, int]:
    """Load what a kill left, on a copy: train_state/ as the resumed run would (after recovery), the best model as
    `Translator.load` does. Returns None if both load (or nothing was saved yet: a fresh start follows), else why
    not; and the step the run resumes from (0: a fresh start)."""
    with tempfile.TemporaryDirectory() as copy:
        copy = shutil.copytree(model_dir, Path(copy) / "run", symlinks=True)
        step = 0
        try:
            if checkpoint.has_train_state(copy):
                tokenizer = Tokenizer.load(copy)
                model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
                checkpoint.recover_train_state(copy)
                state = checkpoint.load_train_state(copy, model, torch.optim.Adam(model.parameters()))
                step = state["progress"]["step"]
            if (copy / checkpoint.MODEL_FILE).exists():
                Translator.load(copy, device="cpu")
        except Exception as error:  # what this benchmark counts: any failure to load
            return f"{type(error).__name__}: {error}", step
    return None, step


def compared_files() -> list[str]:
    """The files compared bit for bit: the best model and train_state/ (state.json apart: it holds the clock)."""
    return [checkpoint.MODEL_FILE] + [f"{checkpoint.TRAIN_STATE}/{name}" for name in checkpoint.TRAIN_STATE_FILES
                                      if name != checkpoint.STATE_FILE]


def without_clock(model_dir: Path) -> tuple[dict, list[dict]]:
    """state.json and the validation log of a finished folder, less their clock ("seconds")."""
    state = json.loads((model_dir / checkpoint.TRAIN_STATE / checkpoint.STATE_FILE).read_text(encoding="utf-8"))
    del state["progress"]["seconds"]
    records = [json.loads(line) for line in (model_dir / VALIDATION_LOG).read_text(encoding="utf-8").splitlines()]
    return state, [{key: value for key, value in record.items() if key != "seconds"} for record in records]


def run(kills: int, seed: int = 0) -> dict:
    """Kill a training run `kills` times (the windows in turn), resume it each time until it finishes, and compare
    it with an uninterrupted run."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = tiny_config(work, steps=10 + STEPS_PER_KILL * kills)
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
        config = parse_config(data)
        straight, killed = work / "straight", work / "killed"
        code, err = train_once(config_path, straight, None, rng)
        if code != 0:
            raise RuntimeError(f"the uninterrupted run failed ({code}):\n{err}")
        windows: Counter[str] = Counter()
        unloadable: list[str] = []
        resumed_from: list[int] = []  # the step each kill left the run at
        processes = 0
        while True:
            landed = sum(windows.values())
            window = WINDOWS[landed % len(WINDOWS)] if landed < kills else None
            code, err = train_once(config_path, killed, window, rng)
            processes += 1
            if code != -signal.SIGKILL:
                break
            windows[window] += 1
            problem, step = loads(killed, config)
            resumed_from.append(step)
            if problem:
                unloadable.append(f"after a kill in {window}: {problem}")
        finished = code == 0
        identical = finished and all((straight / name).read_bytes() == (killed / name).read_bytes()
                                     for name in compared_files())
        state, log = without_clock(killed) if finished else ({}, [])
        straight_state, straight_log = without_clock(straight)
        steps = [record["step"] for record in log]
        return {"kills": sum(windows.values()), "planned": kills, "windows": dict(windows),
                "processes": processes, "resumed_from_steps": resumed_from, "finished": finished,
                "bit_identical": identical and state == straight_state,
                "validations_logged_once": finished and len(steps) == len(set(steps)) and log == straight_log,
                "unloadable": len(unloadable), "unloadable_why": unloadable,
                "last_exit": {"status": code, "stderr": err[-3000:]},
                "leftovers": sorted(path.name for path in killed.rglob("*")
                                    if path.name.endswith((".tmp", ".new", ".old"))),
                "steps": data["training"]["max_steps"], "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to land, the windows in turn")
    parser.add_argument("--seed", type=int, default=0, help="of the kill counts and timer delays")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results JSON")
    args = parser.parse_args()
    result = run(args.kills, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{result['kills']} kills {result['windows']}: finished {result['finished']}, bit-identical "
          f"{result['bit_identical']}, unloadable {result['unloadable']} → {args.out}")


if __name__ == "__main__":
    main()
