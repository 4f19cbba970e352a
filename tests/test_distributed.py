"""Tests of distributed training: 2 CPU processes with gloo train exactly like 1 process taking the same global batch,
only rank 0 writes, and a stopped distributed run resumes exactly.

Each process runs one torch thread; the tiny corpus and model of conftest keep every run to a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from attnmt import distributed
from attnmt.cli import main
from attnmt.config import Config, load_config
from attnmt.errors import AttnmtError, ConfigError
from attnmt.training import Trainer, train

PROCESSES = 2
STEPS = 3
TRAIN_STATE_TENSORS = ("model.safetensors", "optimizer.safetensors")


def assert_close_tensors(first: Path, second: Path) -> None:
    """Same names, and the same values up to float rounding (the order of a sum may differ between the runs)."""
    a, b = load_file(str(first)), load_file(str(second))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7, msg=lambda m: f"{first.name} {name}: {m}")


def progress(model_dir: Path) -> dict:
    return json.loads((model_dir / "train_state" / "state.json").read_text())["progress"]


def validations(model_dir: Path) -> list[dict]:
    """validations.jsonl without the clock."""
    lines = (model_dir / "validations.jsonl").read_text().splitlines()
    return [{key: value for key, value in json.loads(line).items() if key != "seconds"} for line in lines]


def files(model_dir: Path) -> set[str]:
    return {str(path.relative_to(model_dir)) for path in model_dir.rglob("*") if path.is_file()}


# ---- pieces ----------------------------------------------------------------------------------------------------------


def test_shards_are_disjoint_and_cover_the_step():
    batches = [[0, 1], [2], [3, 4], [5], [6]]
    shards = [distributed.shard(batches, rank, 2) for rank in range(2)]
    assert shards == [[[0, 1], [3, 4], [6]], [[2], [5]]]
    assert distributed.shard(batches, 0, 1) == batches


def test_without_torchrun_training_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.init()
    assert (context.enabled, context.world_size, context.rank, context.is_main) == (False, 1, 0, True)
    assert context.sum(torch.tensor([2.0])).item() == 2.0 and context.from_main("x") == "x"
    model = torch.nn.Linear(2, 2)
    assert context.wrap(model) is model


def test_world_size_without_torchrun_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(AttnmtError, match="torchrun"):
        distributed.init()
    assert not dist.is_initialized()


def test_a_step_that_needs_more_batches_than_an_epoch_has_is_a_config_error(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path / "run", {"training.batches_per_step": 1000}), show_progress=False)
    with pytest.raises(ConfigError, match="batches_per_step"):
        trainer.train()


def test_distributed_inside_torchrun_is_a_user_error(capsys, tiny_config_file, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", str(tiny_config_file[0]), "--distributed", "2"]) == 2
    assert "drop --distributed" in capsys.readouterr().err


# ---- 2 processes = 1 process with the same global batch --------------------------------------------------------------


def write_config(tmp_path: Path, tiny_config_file, overrides: dict) -> Path:
    """The tiny CLI config with `overrides` (dotted keys), written to a YAML file of its own."""
    _, data = tiny_config_file
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = data
        for key in parents:
            section = section[key]
        section[leaf] = value
    path = tmp_path / "distributed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_two_processes_train_like_one_process_with_the_same_global_batch(tiny_config_file, tmp_path):
    """`attnmt train --distributed 2` (torchrun, gloo) for 3 steps of 1 batch per process = 1 process taking 2 batches
    per step: the same parameters and optimizer state, the same validations, and only rank 0 wrote files."""
    config = write_config(tmp_path, tiny_config_file, {
        "model.dropout": 0.0, "training.batch_tokens": 200, "training.max_steps": STEPS,
        "training.validate_every": 2, "training.label_smoothing": 0.1, "training.tensorboard": True,
        "training.log_every": 1, "training.threads": 1})
    together, alone = tmp_path / "together", tmp_path / "alone"
    command = [sys.executable, "-m", "attnmt", "train", str(config), "--model-dir", str(together), "--quiet",
               "--distributed", str(PROCESSES)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        environment.pop(name, None)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.count(f"trained {STEPS} steps") == 1  # rank 0 alone reports

    train(load_config(config, {"training.batches_per_step": PROCESSES}), alone, show_progress=False)

    for name in TRAIN_STATE_TENSORS:
        assert_close_tensors(alone / "train_state" / name, together / "train_state" / name)
    assert_close_tensors(alone / "model.safetensors", together / "model.safetensors")
    assert {k: v for k, v in progress(together).items() if k != "seconds"} == \
        {k: v for k, v in progress(alone).items() if k != "seconds"}
    assert progress(together)["batch_in_epoch"] == STEPS * PROCESSES
    assert validations(together) == validations(alone) and [r["step"] for r in validations(alone)] == [2, 3]
    assert files(together) - {f for f in files(together) if f.startswith("tensorboard/")} == \
        files(alone) - {f for f in files(alone) if f.startswith("tensorboard/")}
    assert len(list((together / "tensorboard").glob("events.*"))) == 1  # one writer: rank 0


# ---- resume ----------------------------------------------------------------------------------------------------------


def train_together(rank: int, world_size: int, store: str, runs: list[tuple[Config, bool]]) -> None:
    """One of `world_size` processes (spawned): join the others as torchrun would, then train `runs` in turn, each
    (config, resume) as `attnmt train` would. The group outlives the runs, so `train` uses it and leaves it running."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        for config, resume in runs:
            train(config, resume=resume, show_progress=False)
    finally:
        dist.destroy_process_group()


def run_together(runs: list[tuple[Config, bool]], store: Path, timeout: float = 180) -> None:
    """`train_together` in PROCESSES spawned processes; fail (and end them) after `timeout` seconds."""
    processes = mp.start_processes(train_together, args=(PROCESSES, str(store), runs), nprocs=PROCESSES,
                                   join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not processes.join(timeout=1):
        if time.monotonic() > deadline:
            for process in processes.processes:
                process.kill()
            pytest.fail(f"distributed training did not finish in {timeout} s")


def test_a_stopped_distributed_run_resumes_exactly(tiny_config, tmp_path):
    """2 processes: 5 steps straight = 3 steps, stop, resume to 5, with dropout (seeded per step and rank) and a
    validation at step 3 that the straight run does not make. An epoch of this corpus is shorter than 5 steps, so
    the resumed run crosses an epoch boundary."""
    def config(folder: str, steps: int) -> Config:
        return tiny_config(tmp_path / folder, {"training.max_steps": steps, "training.validate_every": 2,
                                               "model.dropout": 0.3})

    run_together([(config("straight", 5), False), (config("stopped", 3), False), (config("stopped", 5), True)],
                 tmp_path / "store")
    for name in TRAIN_STATE_TENSORS:
        assert_close_tensors(tmp_path / "straight" / "train_state" / name, tmp_path / "stopped" / "train_state" / name)
    straight, resumed = progress(tmp_path / "straight"), progress(tmp_path / "stopped")
    for key in ("step", "epoch", "batch_in_epoch", "target_tokens"):
        assert straight[key] == resumed[key], key
    assert straight["step"] == 5 and straight["epoch"] == 1
