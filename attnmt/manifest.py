"""The manifest of a model directory: the SHA-256 and size of each file the model is made of, so that the directory
proves itself before it translates.

    MODEL_DIR/manifest.json   {"format": 1, "files": {"config.yaml": {"sha256": "…", "bytes": 1234}, …}}

It covers the `MODEL_FILES` the directory holds: config.yaml, model.safetensors, the tokenizer model(s) and
examples.txt; not train_state/ (the run's own, for --resume) nor the logs (validations.jsonl, tensorboard/). Listing
the weights and the tokenizer together binds them: a tokenizer copied in from another model of the same vocabulary
size is a mismatch, as are a flipped bit, a truncated file, an edited config, and a model file added or removed.

Training writes it last, atomically, whenever these files change (tokenizer, config.yaml and examples.txt written;
a new best model.safetensors saved). `Translator.load` checks it (`check`) and refuses a mismatch with a
`CheckpointError` naming the file; `attnmt verify DIR` shows the check file by file. A directory written before
manifests existed has none: it loads with a one-line warning, and `attnmt verify --write DIR` writes one for its files
as they are once they load. (A crash in the moment between saving new weights and writing the manifest leaves a
mismatch on model.safetensors: the message says how to accept the files if that is what happened.)
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from attnmt.checkpoint import CONFIG_FILE, EXAMPLES_FILE, MODEL_FILE, write_text
from attnmt.data.tokenizer import TOKENIZER_FILES
from attnmt.errors import CheckpointError, StorageError

MANIFEST_FILE = "manifest.json"
FORMAT = 1
MODEL_FILES = (CONFIG_FILE, MODEL_FILE, *TOKENIZER_FILES, EXAMPLES_FILE)  # what a manifest may list
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FileCheck:
    """One file of a model directory against its manifest: `problem` None when it matches."""

    name: str
    problem: str | None = None


def fingerprint(path: Path) -> dict:
    """{"sha256": hex digest, "bytes": size} of a file."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise StorageError.from_os_error(error, "read", path) from None
    return {"sha256": digest.hexdigest(), "bytes": size}


def write(model_dir: Path) -> None:
    """Write manifest.json for the `MODEL_FILES` the directory holds now (atomically)."""
    model_dir = Path(model_dir)
    files = {name: fingerprint(model_dir / name) for name in MODEL_FILES if (model_dir / name).is_file()}
    write_text(model_dir / MANIFEST_FILE, json.dumps({"format": FORMAT, "files": files}, indent=1) + "\n")


def _accept_hint(model_dir: Path) -> str:
    return f"`attnmt verify --write {model_dir}` writes one for the files as they are, once they load"


def read(model_dir: Path) -> dict[str, dict] | None:
    """The files the manifest lists, by name; None if the directory has no manifest.json."""
    path = Path(model_dir) / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StorageError.from_os_error(error, "read", path) from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{path} is damaged ({error}); restore it, or {_accept_hint(model_dir)}") from None
    files = data.get("files") if isinstance(data, dict) and data.get("format") == FORMAT else None
    if not isinstance(files, dict) or not all(
            name in MODEL_FILES and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int) for name, entry in files.items()):
        raise CheckpointError(f"{path} is not a manifest of format {FORMAT} listing {', '.join(MODEL_FILES)}; "
                              f"restore it, or {_accept_hint(model_dir)}")
    return files


def _problem(path: Path, listed: dict | None) -> str | None:
    """What is wrong with one file against its manifest entry (None: not listed), or None if nothing is."""
    if listed is None:
        return "is not in the manifest (a file added after training?)" if path.is_file() else None
    if not path.is_file():
        return "is missing (the manifest lists it)"
    found = fingerprint(path)
    if found["bytes"] != listed["bytes"]:
        return f"has {found['bytes']} bytes where the manifest says {listed['bytes']} (truncated, or replaced)"
    if found["sha256"] != listed["sha256"]:
        return "does not match its SHA-256 in the manifest (damaged, edited, or another model's file)"
    return None


def verify(model_dir: Path) -> list[FileCheck]:
    """Every file the manifest lists, and every `MODEL_FILES` file the directory holds, against the manifest; a
    directory without manifest.json is a `CheckpointError`."""
    model_dir = Path(model_dir)
    files = read(model_dir)
    if files is None:
        raise CheckpointError(f"{model_dir} has no {MANIFEST_FILE} (a model trained before attnmt wrote them?); "
                              f"{_accept_hint(model_dir)}")
    return _checks(model_dir, files)


def _checks(model_dir: Path, files: dict[str, dict]) -> list[FileCheck]:
    names = [name for name in MODEL_FILES if name in files or (model_dir / name).is_file()]
    return [FileCheck(name, _problem(model_dir / name, files.get(name))) for name in names]


def check(model_dir: Path) -> None:
    """What loading a model directory asks first: a `CheckpointError` naming the first file that does not match the
    manifest; a directory without manifest.json passes with a one-line warning on stderr."""
    model_dir = Path(model_dir)
    files = read(model_dir)
    if files is None:
        print(f"attnmt: warning: {model_dir} has no {MANIFEST_FILE}, so its files are not checked (a model trained "
              f"before attnmt wrote them?); {_accept_hint(model_dir)}", file=sys.stderr)
        return
    failed = [result for result in _checks(model_dir, files) if result.problem]
    if failed:
        first, others = failed[0], [result.name for result in failed[1:]]
        also = f" (and {', '.join(others)} too)" if others else ""
        raise CheckpointError(f"{model_dir / first.name} {first.problem}{also}; restore the model directory from a "
                              f"copy or retrain it (`attnmt verify {model_dir}` checks every file; if you changed the "
                              f"files on purpose, {_accept_hint(model_dir)})")
