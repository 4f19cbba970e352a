"""Tamper with trained model directories in each way a probe found, and count what reaches the user through each
entry point: a one-line error naming the file (refused), a load with only the no-manifest warning (warned), a load that
says nothing (silent), an internal error, or a traceback.

    python benchmarks/reliability/tamper.py [--work DIR]   → benchmarks/results/reliability_tamper.json

Trains (or reuses, from --work) a tiny model directory of each family (RNN, Transformer) on a reversal task; then for
each tampering × family × entry point copies the directory, tampers with the copy and runs the entry point:
`Translator.load`, `attnmt translate`, `attnmt evaluate`, `attnmt serve` (up to the app's creation; uvicorn is not
started). Each tampering runs with the model's manifest.json, and again without it (a model trained before
manifests): then the files themselves show the damage, except a flipped exponent bit and a swapped tokenizer, which
only the manifest can tell (such a directory loads with the warning that it has no manifest: "warned"). Tracebacks,
internal errors, silent loads and errors that do not name the file must all be 0.

`TAMPERINGS` is also what tests/test_model_dir.py applies.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shlex
import shutil
import struct
import sys
import tempfile
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml
from safetensors.torch import load, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from report import machine  # noqa: E402

from kills import reversal_tsv  # noqa: E402  (the reversal corpus the kill suite trains on)

from attnmt import checkpoint, cli, manifest  # noqa: E402
from attnmt.config import TokenizerConfig, parse_config  # noqa: E402
from attnmt.data import Tokenizer  # noqa: E402
from attnmt.errors import AttnmtError  # noqa: E402
from attnmt.translator import Translator  # noqa: E402

ROOT = HERE.parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "reliability_tamper.json"
DEFAULT_WORK = ROOT / "benchmarks" / "results" / "tmp" / "reliability_tamper"
WORDS = list("abcdefghij")  # the models' vocabulary: 10 words + 4 special pieces
OTHER_WORDS = list("klmnopqrst")  # another vocabulary of the same size
SENTENCE = "c a j"


# ---- the tamperings ------------------------------------------------------------------------------------------------

def truncate(model_dir: Path, _: Path) -> None:
    path = model_dir / checkpoint.MODEL_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_exponent_bit(model_dir: Path, _: Path) -> None:
    """The top exponent bit of the first float32 below 1 in magnitude: it becomes a finite number near 2^128, so the
    file still loads and only the manifest can tell."""
    path = model_dir / checkpoint.MODEL_FILE
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]  # little-endian: byte 3 of a float32 holds sign + 7 exponent bits
    offset = next(i for i in range(start, len(data) - 3, 4) if 0 < (data[i + 3] & 0x7F) < 0x3F)
    data[offset + 3] ^= 0x40
    path.write_bytes(bytes(data))


def swap_tokenizer(model_dir: Path, other: Path) -> None:
    """The tokenizer of another model of the same vocabulary size: everything fits, the words are others."""
    name = Tokenizer.load(model_dir).files[0]
    assert Tokenizer.load(other.parent).src_vocab_size == Tokenizer.load(model_dir).src_vocab_size
    shutil.copy(other, model_dir / name)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, read into memory (load_file maps the file, which is about to be rewritten)."""
    return load((model_dir / checkpoint.MODEL_FILE).read_bytes())


def pickle_weights(model_dir: Path, _: Path) -> None:
    torch.save(_weights(model_dir), model_dir / checkpoint.MODEL_FILE)


def _edit_weights(model_dir: Path, edit: Callable[[dict], None]) -> None:
    path = model_dir / checkpoint.MODEL_FILE
    tensors = _weights(model_dir)
    edit(tensors)
    save_file(tensors, str(path))


def unknown_keys(model_dir: Path, _: Path) -> None:
    _edit_weights(model_dir, lambda tensors: tensors.update({"adapter.weight": torch.zeros(4, 4)}))


def nan_weights(model_dir: Path, _: Path) -> None:
    def poison(tensors: dict) -> None:
        tensors[sorted(tensors)[0]].view(-1)[0] = float("nan")
    _edit_weights(model_dir, poison)


def non_utf8_config(model_dir: Path, _: Path) -> None:
    path = model_dir / checkpoint.CONFIG_FILE
    path.write_bytes(path.read_bytes() + "# réglé\n".encode("latin-1"))


def config_that_does_not_fit(model_dir: Path, _: Path) -> None:
    path = model_dir / checkpoint.CONFIG_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["model"]["hidden_size"] *= 2
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


@dataclass(frozen=True)
class Tampering:
    apply: Callable[[Path, Path], None]  # (model directory, another model's tokenizer file)
    file: str  # the file tampered with, which the error names (the manifest's check: its path)
    without_manifest: str | None  # what the error says when there is no manifest; None: only the manifest can tell


TAMPERINGS = {
    "truncated_weights": Tampering(truncate, checkpoint.MODEL_FILE, "truncated or damaged"),
    "bit_flip": Tampering(flip_exponent_bit, checkpoint.MODEL_FILE, None),
    "swapped_tokenizer": Tampering(swap_tokenizer, "spm.model", None),
    "pickle_weights": Tampering(pickle_weights, checkpoint.MODEL_FILE, "a pickle"),
    "unknown_keys": Tampering(unknown_keys, checkpoint.MODEL_FILE, "unexpected tensors adapter.weight"),
    "nan_weights": Tampering(nan_weights, checkpoint.MODEL_FILE, "non-finite"),
    "non_utf8_config": Tampering(non_utf8_config, checkpoint.CONFIG_FILE, "not UTF-8"),
    "config_does_not_fit": Tampering(config_that_does_not_fit, checkpoint.CONFIG_FILE, "does not fit"),
}


def other_tokenizer(folder: Path) -> Path:
    """A word-level sentencepiece model over `OTHER_WORDS`: as many pieces as the tiny models' tokenizer."""
    rng = random.Random(5)
    sentences = [" ".join(rng.choice(OTHER_WORDS) for _ in range(rng.randint(3, 8))) for _ in range(300)]
    Tokenizer.train(TokenizerConfig(vocab_size=16, model_type="word"), sentences, sentences, folder)
    return folder / "spm.model"


# ---- the tiny models -----------------------------------------------------------------------------------------------

MODELS = {
    "rnn": {"cell": "gru", "embedding_size": 16, "hidden_size": 32, "encoder_hidden_size": 16, "bidirectional": True,
            "dropout": 0.0, "attention": "additive"},
    "transformer": {"type": "transformer", "encoder_layers": 2, "decoder_layers": 2, "hidden_size": 32, "heads": 4,
                    "feed_forward_size": 64, "dropout": 0.1, "share_embeddings": True,
                    "tie_target_embeddings": True},
}


def trained_models(work: Path) -> dict[str, Path]:
    """A tiny model directory of each family under `work`, trained now unless one that verifies is there."""
    from attnmt.training import Trainer

    work.mkdir(parents=True, exist_ok=True)
    folders = {}
    for family, model in MODELS.items():
        folder = work / family
        if not (folder / manifest.MANIFEST_FILE).is_file() or any(c.problem for c in manifest.verify(folder)):
            shutil.rmtree(folder, ignore_errors=True)
            data = {"name": f"tamper_{family}", "model_dir": str(folder),
                    "data": {"train": {"tsv": str(reversal_tsv(work / "train.tsv", 400, random.Random(1)))},
                             "dev": {"tsv": str(reversal_tsv(work / "dev.tsv", 8, random.Random(2)))}, "max_length": 30},
                    "tokenizer": {"vocab_size": 16, "model_type": "word"}, "model": model,
                    "training": {"seed": 1, "max_steps": 30, "batch_tokens": 640, "learning_rate": 0.003,
                                 "validate_every": 1000, "tensorboard": False, "threads": 1, "device": "cpu"}}
            Trainer(parse_config(data, origin=f"tamper {family}"), show_progress=False).train()
        folders[family] = folder
    return folders


# ---- the entry points ----------------------------------------------------------------------------------------------

@contextmanager
def _no_server():
    """`attnmt serve` up to the app's creation: uvicorn.run returns at once."""
    import uvicorn

    run = uvicorn.run
    uvicorn.run = lambda app, **options: None
    try:
        yield
    finally:
        uvicorn.run = run


def _command(argv: list[str]) -> tuple[str, int | None, str]:
    """Run `attnmt ARGV` in this process with SENTENCE on stdin: ("cli", exit status or None if it raised, stderr)."""
    stderr, stdin = io.StringIO(), sys.stdin
    sys.stdin = io.StringIO(SENTENCE + "\n")
    try:
        with redirect_stderr(stderr), redirect_stdout(io.StringIO()), _no_server():
            code = cli.main([str(arg) for arg in argv])
    except BaseException:  # an exception out of main is what this counts
        stderr.write(traceback.format_exc())
        code = None
    finally:
        sys.stdin = stdin
    return "cli", code, stderr.getvalue()


def _load(model_dir: Path) -> tuple[str, int | None, str]:
    """`Translator.load`: exit status 2 for an `AttnmtError` (its message), 0 when it loads, None for anything else."""
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr):
            Translator.load(model_dir, device="cpu")
        return "python", 0, stderr.getvalue()
    except AttnmtError as error:
        return "python", 2, stderr.getvalue() + f"{error}\n"
    except Exception:  # counted as a traceback
        return "python", None, stderr.getvalue() + traceback.format_exc()


def entry_points(model_dir: Path, texts: Path) -> dict[str, Callable[[], tuple[str, int | None, str]]]:
    return {
        "Translator.load": lambda: _load(model_dir),
        "translate": lambda: _command(["translate", model_dir]),
        "evaluate": lambda: _command(["evaluate", model_dir, "--src", texts, "--ref", texts]),
        "serve": lambda: _command(["serve", model_dir, "--port", "0"]),
    }


def outcome(code: int | None, stderr: str, model_dir: Path, file: str) -> str:
    """refused (exit 2, one line naming the directory and the file), unnamed (exit 2, one of them not named), warned
    (loaded, with the no-manifest warning only), silent (loaded, nothing said), internal_error (exit 1), traceback."""
    errors = [line for line in stderr.splitlines() if not line.startswith("attnmt: warning:")]
    if code is None or "Traceback" in stderr:
        return "traceback"
    if code == 1:
        return "internal_error"
    if code == 0:
        return "warned" if stderr.strip() else "silent"
    return "refused" if len(errors) == 1 and str(model_dir) in errors[0] and file in errors[0] else "unnamed"


def run(work: Path | None = None) -> dict:
    """Every tampering × family × manifest (kept, removed) × entry point; the rows and their totals."""
    work = Path(work or DEFAULT_WORK)
    models = trained_models(work)
    other = other_tokenizer(work / "other_tokenizer")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        texts = Path(scratch) / "texts.txt"
        texts.write_text(SENTENCE + "\n", encoding="utf-8")
        for name, tampering in TAMPERINGS.items():
            for family, source in models.items():
                for with_manifest in (True, False):
                    for entry, call in entry_points(Path(scratch) / "model", texts).items():
                        model_dir = Path(scratch) / "model"
                        shutil.rmtree(model_dir, ignore_errors=True)
                        shutil.copytree(source, model_dir, ignore=shutil.ignore_patterns(checkpoint.TRAIN_STATE))
                        if not with_manifest:
                            (model_dir / manifest.MANIFEST_FILE).unlink()
                        tampering.apply(model_dir, other)
                        kind, code, stderr = call()
                        rows.append({"tampering": name, "family": family, "manifest": with_manifest,
                                     "entry_point": entry, "outcome": outcome(code, stderr, model_dir, tampering.file),
                                     "message": stderr.strip().splitlines()[-1] if stderr.strip() else "",
                                     "exit_status": code if kind == "cli" else None})
    totals = {kind: sum(row["outcome"] == kind for row in rows)
              for kind in ("refused", "unnamed", "warned", "silent", "internal_error", "traceback")}
    return {"machine": machine(), "command": "python benchmarks/reliability/tamper.py", "rows": rows,
            "totals": totals, "passed": totals["traceback"] == totals["internal_error"] == totals["silent"]
            == totals["unnamed"] == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the tiny models are trained or reused")
    args = parser.parse_args()
    results = run(args.work)
    results["command"] = shlex.join(["python", "benchmarks/reliability/tamper.py", *sys.argv[1:]])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(results["totals"]), "passed" if results["passed"] else "FAILED", f"→ {RESULTS}")


if __name__ == "__main__":
    main()
