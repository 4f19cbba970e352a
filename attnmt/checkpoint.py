"""Model directories and training state on disk: safetensors for tensors, YAML/JSON for the rest, never pickles.

    MODEL_DIR/
      config.yaml            the validated config
      examples.txt           a few dev-set source sentences, for the page (`attnmt serve`) to offer
      model.safetensors      the best parameters (by dev BLEU)
      spm.model | src.model + tgt.model
      train_state/           the last step, for `attnmt train --resume`
        model.safetensors  optimizer.safetensors  rng.safetensors  state.json

Every file is written atomically (temporary file, fsync, rename); `train_state/` is written as a new folder and
swapped in, so a crash at any moment leaves either the old state or the new one, never half of each.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from attnmt.errors import CheckpointError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
EXAMPLES_FILE = "examples.txt"  # a few dev-set source sentences, one per line: what the page offers to try
EXAMPLE_COUNT = 8
EXAMPLE_WORDS = (3, 12)  # an example has this many words, at least and at most
TRAIN_STATE = "train_state"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Call `write(temporary_path)`, fsync the file, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temporary))
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_examples(model_dir: Path, sources: list[str]) -> None:
    """examples.txt: the first EXAMPLE_COUNT distinct sources of EXAMPLE_WORDS words, one per line."""
    low, high = EXAMPLE_WORDS
    chosen = list(dict.fromkeys(s.strip() for s in sources if low <= len(s.split()) <= high))[:EXAMPLE_COUNT]
    write_text(Path(model_dir) / EXAMPLES_FILE, "".join(line + "\n" for line in chosen))


def read_examples(model_dir: Path) -> list[str]:
    """The example sentences of a model directory; none if it has no examples.txt (or it cannot be read)."""
    try:
        text = (Path(model_dir) / EXAMPLES_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.strip() for line in text.splitlines() if line.strip()][:EXAMPLE_COUNT]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    contiguous = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied parameters stored once (safetensors refuses shared storage)."""
    tensors, seen = {}, {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen and tensor.shape == seen[key].shape:
            continue
        seen[key] = tensor
        tensors[name] = tensor
    return tensors


def save_model(path: Path, model: torch.nn.Module) -> None:
    save_tensors(path, model_tensors(model))


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    if not Path(path).is_file():
        raise CheckpointError(f"{path} is missing: this folder holds no trained model (train one with `attnmt train`)")
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    tied = {name for name in missing if name.endswith("output.weight")}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path} does not fit the model in its config.yaml: missing {sorted(set(missing) - tied)}, "
                              f"unexpected {sorted(unexpected)}")


# --- optimizer state ---------------------------------------------------------------------------------------------

def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (per parameter) and JSON (hyper-parameters, scalars)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value
            else:
                scalars[f"{param_id}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(info["scalars"].items()):
        param_id, name = key.split(".", 1)
        per_param.setdefault(int(param_id), {})[name] = value
    return {"state": per_param, "param_groups": info["param_groups"]}


# --- training state ----------------------------------------------------------------------------------------------

def save_train_state(model_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     progress: dict[str, Any]) -> None:
    """Write `train_state/` as a new folder, then swap it in."""
    final = Path(model_dir) / TRAIN_STATE
    new = final.with_name(TRAIN_STATE + ".new")
    old = final.with_name(TRAIN_STATE + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    optimizer_tensors, optimizer_info = optimizer_to_tensors(optimizer)
    save_model(new / MODEL_FILE, model)
    save_tensors(new / "optimizer.safetensors", optimizer_tensors)
    save_tensors(new / "rng.safetensors", {"torch": torch.get_rng_state()})
    write_text(new / "state.json", json.dumps({"optimizer": optimizer_info, **progress}, indent=1))
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    _fsync_directory(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def has_train_state(model_dir: Path) -> bool:
    """Whether the folder holds a run to resume (`.old`: a crash came between the two renames of a save)."""
    return any((Path(model_dir) / name).is_dir() for name in (TRAIN_STATE, TRAIN_STATE + ".old"))


def load_train_state(model_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore parameters, optimizer and RNG; return the progress dict saved with them."""
    folder = Path(model_dir) / TRAIN_STATE
    if not folder.is_dir() and folder.with_name(TRAIN_STATE + ".old").is_dir():
        folder = folder.with_name(TRAIN_STATE + ".old")  # a crash between the two renames
    if not (folder / "state.json").is_file():
        raise CheckpointError(f"cannot resume: {folder} has no saved training state; start without --resume")
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    load_model_weights(folder / MODEL_FILE, model)
    optimizer.load_state_dict(optimizer_from_tensors(load_file(str(folder / "optimizer.safetensors")),
                                                     state.pop("optimizer")))
    torch.set_rng_state(load_file(str(folder / "rng.safetensors"))["torch"])
    return state
