"""Shared fixtures: tiny corpora and configs, and one trained model reused by the search, training and CLI tests.

The trained model learns to reverse sequences of single-letter words ("c a j" → "j a c"): a task a tiny GRU with
attention masters in a few hundred steps, so its translations can be checked exactly, and a held-out set shows
whether it really learned.

Everything runs with one torch thread: these models are so small that a second thread only adds synchronization,
and on a machine shared with another training job two threads per process slow training down more than tenfold.
And everything runs on the CPU, on a machine with a GPU too (`training.device: cpu`), so that exact comparisons hold
anywhere; tests/test_devices.py covers the choice of device.
"""

from __future__ import annotations

import contextlib
import copy
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch
import yaml

from attnmt.config import Config, parse_config
from attnmt.training import Trainer
from attnmt.translator import Translator

torch.set_num_threads(1)

WORDS = list("abcdefghij")


def random_sentences(count: int, seed: int, min_length: int = 3, max_length: int = 8) -> list[str]:
    """`count` sentences of `min_length`..`max_length` random words from `WORDS`, written with spaces."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_length, max_length))) for _ in range(count)]


def reverse(sentence: str) -> str:
    return " ".join(reversed(sentence.split()))


def reversal_pairs(count: int, seed: int, min_length: int = 3, max_length: int = 8) -> list[tuple[str, str]]:
    return [(s, reverse(s)) for s in random_sentences(count, seed, min_length, max_length)]


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{src}\t{tgt}\n" for src, tgt in pairs), encoding="utf-8")
    return path


def set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value


def tiny_config_dict(train_tsv: Path, dev_tsv: Path, model_dir: Path, overrides: dict | None = None) -> dict:
    """A complete config for a tiny model on a TSV corpus; `overrides` maps dotted keys to values."""
    data = {
        "name": "tiny",
        "model_dir": str(model_dir),
        "data": {"train": {"tsv": str(train_tsv)}, "dev": {"tsv": str(dev_tsv)}, "max_length": 30},
        "tokenizer": {"vocab_size": 16, "model_type": "word"},
        "model": {"cell": "gru", "embedding_size": 32, "hidden_size": 64, "encoder_hidden_size": 32,
                  "bidirectional": True, "dropout": 0.0, "attention": "additive", "decoder_style": "luong",
                  "combine": "concat"},
        "training": {"seed": 1, "max_steps": 400, "batch_tokens": 640, "learning_rate": 0.005,
                     "schedule": "constant", "label_smoothing": 0.0, "validate_every": 200, "tensorboard": False,
                     "threads": 1, "device": "cpu"},
        "search": {"beam_size": 5, "length_penalty": 0.0, "batch_size": 64},
    }
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return data


@contextlib.contextmanager
def served(model_dir: Path, settings: str = "") -> Iterator[tuple[str, int, list[str]]]:
    """`attnmt.serve.serve` on `model_dir` in another process, on a free port, with `ServeSettings(settings)` (Python
    keyword arguments as text); yields (url, port, output), `output` holding the server's printed lines once it has
    stopped."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import sys, torch; torch.set_num_threads(1); from attnmt.serve import ServeSettings, serve; "
            f"serve(sys.argv[1], port=int(sys.argv[2]), log_level='warning', settings=ServeSettings({settings}))")
    process = subprocess.Popen([sys.executable, "-c", code, str(model_dir), str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, output = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the server did not come up in 60 s"
                time.sleep(0.1)
        yield url, port, output
    finally:
        process.terminate()
        output.append(process.communicate(timeout=20)[0])


def schema_disagreements(client, schema, bodies: list[dict]) -> list[tuple[dict, int]]:
    """The request bodies on which the server (200 or 422, nothing else) and the schema's validator disagree."""
    disagreements = []
    for body in bodies:
        status = client.post("/translate", json=body).status_code
        assert status in (200, 422), (body, status)
        if schema.is_valid(body) != (status == 200):
            disagreements.append((body, status))
    return disagreements


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A reversal training TSV of 200 pairs and a dev TSV of 12, shared by the tests that train many tiny runs."""
    folder = tmp_path_factory.mktemp("corpus")
    return (write_tsv(folder / "train.tsv", reversal_pairs(200, seed=11)),
            write_tsv(folder / "dev.tsv", reversal_pairs(12, seed=12)))


@pytest.fixture
def tiny_corpus(tmp_path) -> tuple[Path, Path]:
    """A small reversal corpus (train.tsv, dev.tsv) for runs that only need a few steps."""
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(200, seed=11))
    dev = write_tsv(tmp_path / "dev.tsv", reversal_pairs(12, seed=12))
    return train, dev


@pytest.fixture
def tiny_config(tmp_path, tiny_corpus):
    """Factory: `tiny_config(model_dir, **{"dotted.key": value})` → a validated `Config` on `tiny_corpus`, a small
    model with dropout (so that the random state matters) and a few steps."""
    train, dev = tiny_corpus

    def make(model_dir: Path | None = None, overrides: dict | None = None) -> Config:
        base = {"model.embedding_size": 16, "model.hidden_size": 32, "model.encoder_hidden_size": 16,
                "model.dropout": 0.3, "training.batch_tokens": 200, "training.max_steps": 4,
                "training.validate_every": 3, "training.label_smoothing": 0.1, "training.schedule": "plateau",
                "training.plateau_patience": 0}
        data = tiny_config_dict(train, dev, model_dir or tmp_path / "model", {**base, **(overrides or {})})
        return parse_config(data, origin="tiny test config")

    return make


@pytest.fixture
def tiny_config_file(tmp_path, tiny_corpus):
    """A YAML file with the tiny config (for the CLI), and the dict written to it."""
    train, dev = tiny_corpus
    data = tiny_config_dict(train, dev, tmp_path / "cli_model",
                            {"model.embedding_size": 16, "model.hidden_size": 32, "model.encoder_hidden_size": 16,
                             "training.max_steps": 3, "training.validate_every": 2})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, copy.deepcopy(data)


@dataclass
class TrainedModel:
    model_dir: Path
    trainer: Trainer  # holds the in-memory model as it was after the last step
    test_pairs: list[tuple[str, str]]  # held out: none of these sources is in train or dev

    def translator(self) -> Translator:
        return Translator.load(self.model_dir, device="cpu")


@pytest.fixture(scope="session")
def reversal_model(tmp_path_factory) -> TrainedModel:
    """A bidirectional GRU with additive attention, trained for 400 steps to reverse 3-8 word sequences."""
    work = tmp_path_factory.mktemp("reversal")
    train = reversal_pairs(3000, seed=1)
    dev = reversal_pairs(100, seed=2)
    seen = {src for src, _ in train + dev}
    test = [pair for pair in reversal_pairs(400, seed=3) if pair[0] not in seen][:200]
    config = parse_config(tiny_config_dict(write_tsv(work / "train.tsv", train), write_tsv(work / "dev.tsv", dev),
                                           work / "model"))
    trainer = Trainer(config, show_progress=False)
    trainer.train()
    return TrainedModel(work / "model", trainer, test)


TINY_TRANSFORMER = {"type": "transformer", "encoder_layers": 2, "decoder_layers": 2, "hidden_size": 32, "heads": 4,
                    "feed_forward_size": 64, "dropout": 0.1, "share_embeddings": True,
                    "tie_target_embeddings": True}


@pytest.fixture(scope="session")
def transformer_model(tmp_path_factory) -> TrainedModel:
    """A tiny Transformer (2 + 2 layers, 4 heads) trained 30 steps on the reversal task, in seconds: enough for its
    translations to end at EOS; model.safetensors holds its last step. The Transformer twin of `reversal_model`."""
    work = tmp_path_factory.mktemp("transformer")
    train = reversal_pairs(400, seed=21)
    data = tiny_config_dict(write_tsv(work / "train.tsv", train), write_tsv(work / "dev.tsv", reversal_pairs(8, seed=22)),
                            work / "model", {"training.max_steps": 30, "training.validate_every": 1000,
                                             "training.schedule": "inverse_sqrt", "training.warmup_steps": 10,
                                             "training.learning_rate": 0.003})
    data["model"] = dict(TINY_TRANSFORMER)
    trainer = Trainer(parse_config(data), show_progress=False)
    trainer.train()
    seen = {src for src, _ in train}
    test = [pair for pair in reversal_pairs(100, seed=23) if pair[0] not in seen][:40]
    return TrainedModel(work / "model", trainer, test)


@pytest.fixture(scope="session")
def ensemble_partner(tmp_path_factory, reversal_model) -> TrainedModel:
    """A tiny Transformer trained 30 steps with the reversal model's tokenizer file (`tokenizer.src_model`: its
    spm.model, copied byte for byte), so that the two decode as one ensemble: an RNN beside a Transformer."""
    work = tmp_path_factory.mktemp("partner")
    train = reversal_pairs(400, seed=41)
    dev = write_tsv(work / "dev.tsv", reversal_pairs(8, seed=42))
    data = tiny_config_dict(write_tsv(work / "train.tsv", train), dev, work / "model",
                            {"training.max_steps": 30, "training.validate_every": 1000,
                             "training.schedule": "inverse_sqrt", "training.warmup_steps": 10,
                             "training.learning_rate": 0.003,
                             "tokenizer.src_model": str(reversal_model.model_dir / "spm.model")})
    data["model"] = dict(TINY_TRANSFORMER)
    trainer = Trainer(parse_config(data), show_progress=False)
    trainer.train()
    return TrainedModel(work / "model", trainer, reversal_model.test_pairs)


@pytest.fixture(scope="session", params=["rnn", "transformer"])
def family_model(request) -> TrainedModel:
    """Each model family in turn: the tests that take it run once for the RNN and once for the Transformer."""
    return request.getfixturevalue({"rnn": "reversal_model", "transformer": "transformer_model"}[request.param])


@pytest.fixture(scope="session")
def reversal_translator(reversal_model) -> Translator:
    """The trained reversal model as saved (model.safetensors), loaded once; tests must not change it."""
    return reversal_model.translator()
