"""Model directories and training state on disk: safetensors for tensors, YAML/JSON for the rest, never pickles.

    MODEL_DIR/
      config.yaml            the validated config
      examples.txt           a few dev-set source sentences, for the page (`attnmt serve`) to offer
      model.safetensors      the best parameters (by dev BLEU)
      spm.model | src.model + tgt.model
      manifest.json          SHA-256 and size of each file above (attnmt/manifest.py), written last
      train_state/           the last step, for `attnmt train --resume`
        model.safetensors  optimizer.safetensors  rng.safetensors  state.json
      checkpoints/           with `training.keep_checkpoints: N`: the parameters of the last N validations
        step_<S>.safetensors   (for `attnmt average`)

Every file is written atomically (temporary file, fsync, rename), with the permissions any new file gets (0o666 less
the umask); `train_state/` is written as a new folder and swapped in, so a crash at any moment leaves either the old
state or the new one, never half of each. A write that fails (no space left, no permission) is a `StorageError` naming
the file, and the file as it was is left in place. Weights are read back only if they are a readable safetensors
file, fit the model, and hold finite numbers; anything else is a `CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from attnmt.errors import AttnmtError, CheckpointError, StorageError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
EXAMPLES_FILE = "examples.txt"  # a few dev-set source sentences, one per line: what the page offers to try
EXAMPLE_COUNT = 8
EXAMPLE_WORDS = (3, 12)  # an example has this many words, at least and at most
TRAIN_STATE = "train_state"
NEW_FILE_MODE = 0o666  # what a new file asks for; the kernel takes the umask away (0o022: rw-r--r--)
SHOWN_NAMES = 3  # tensor names an error lists before "and N more"


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path`: a new temporary file beside it (mode NEW_FILE_MODE less the umask, as the kernel creates
    any file; mkstemp's 0o600 would hide the model from its group), fsync, rename over `path`, fsync the folder.
    An OSError on the way (no space left, no permission) is a `StorageError` naming `path`; `path` is left as it was."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE), "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except OSError as error:
        reason = StorageError.from_os_error(error, "write", path)
        raise StorageError(f"{reason} (nothing already written was changed)") from None
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


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
    atomic_write(path, save(contiguous, metadata=metadata))


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


def _looks_like_pickle(head: bytes) -> bool:
    """Whether a file starts as torch.save writes: a zip archive, or a pickle (protocol ≥ 2: 0x80, then the protocol
    number); a safetensors file has its JSON header's '{' at byte 8."""
    pickle_protocols = (b"\x02", b"\x03", b"\x04", b"\x05")
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in pickle_protocols
                                               and head[8:9] != b"{")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, unreadable, truncated or damaged file, or a pickle, is an error
    naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: this folder holds no trained model (train one with "
                              f"`attnmt train`)") from None
    except OSError as error:
        raise StorageError.from_os_error(error, "read", path) from None
    except SafetensorError as error:
        what = ("a pickle (torch.save), which attnmt never loads (unpickling can run any code)"
                if _looks_like_pickle(head) else "truncated or damaged")
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}): it is {what}; restore it from "
                              f"a copy, or retrain the model") from None


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Every floating-point tensor holds finite numbers only; else a `CheckpointError` naming the tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(f"{path}: tensor {name} holds {bad} non-finite value(s) (NaN or infinity): the "
                                      f"file is damaged or its training diverged; restore it from a copy, or retrain "
                                      f"(with a lower learning rate)")


def check_fit(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The tensors are those `save_model` stores for `model`, in its shapes; else a `CheckpointError` naming the
    tensors that are missing, unexpected or of another shape."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(model_tensors(model)) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    reshaped = [f"{name} {list(tensors[name].shape)} (the model's: {list(expected[name].shape)})"
                for name in tensors if name in expected and tensors[name].shape != expected[name].shape]
    if missing:
        problems.append(f"missing tensors {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_listed(unexpected)}")
    if reshaped:
        problems.append(f"tensors of other shapes {_listed(reshaped)}")
    if problems:
        raise CheckpointError(f"{path} does not fit the model its config.yaml and tokenizer describe ("
                              f"{'; '.join(problems)}): they belong to different models; restore the model "
                              f"directory as training wrote it, or retrain")


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Load a safetensors file into `model` after checking it: readable (`read_tensors`), finite (`check_finite`), the
    tensors of this model (`check_fit`)."""
    tensors = read_tensors(path)
    check_finite(path, tensors)
    check_fit(path, tensors, model)
    model.load_state_dict(tensors, strict=False)  # strict=False: a tied parameter is stored once (`model_tensors`)


# --- kept checkpoints (training.keep_checkpoints) -----------------------------------------------------------------
#
# checkpoints/step_<S>.safetensors: the parameters at the validation of step S, written atomically. After each one
# only the newest `keep` stay. A resumed run first drops those of steps after the state it resumes from (a run killed
# after a validation and before its train_state/ save wrote them): it replays those steps and writes them again, so
# the folder holds what the straight run's holds.

CHECKPOINTS = "checkpoints"
CHECKPOINT_NAME = re.compile(r"step_(\d+)\.safetensors")


def checkpoint_path(model_dir: Path, step: int) -> Path:
    return Path(model_dir) / CHECKPOINTS / f"step_{step}.safetensors"


def kept_checkpoints(model_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in MODEL_DIR/checkpoints/, oldest first."""
    folder = Path(model_dir) / CHECKPOINTS
    found = [(int(match.group(1)), path) for path in folder.glob("step_*.safetensors")
             if (match := CHECKPOINT_NAME.fullmatch(path.name))] if folder.is_dir() else []
    return sorted(found)


def keep_checkpoint(model_dir: Path, step: int, model: torch.nn.Module, keep: int) -> None:
    """Write the parameters of step `step` to checkpoints/step_<step>.safetensors, then delete all but the newest
    `keep` checkpoints."""
    save_model(checkpoint_path(model_dir, step), model)
    for _, path in kept_checkpoints(model_dir)[:-keep]:
        path.unlink(missing_ok=True)


def drop_checkpoints_after(model_dir: Path, step: int) -> None:
    """Delete the checkpoints of steps after `step`, and what writes cut short left there (a resumed run's first
    act: it replays those steps)."""
    for later, path in kept_checkpoints(model_dir):
        if later > step:
            path.unlink(missing_ok=True)
    folder = Path(model_dir) / CHECKPOINTS
    if folder.is_dir():
        for temporary in folder.glob(TEMPORARY_FILES):
            temporary.unlink(missing_ok=True)


def last_checkpoints(model_dir: Path, count: int | None = None) -> list[tuple[int, Path]]:
    """The newest `count` kept checkpoints (None: all), oldest first; a `CheckpointError` saying what to do if there
    are none or fewer."""
    kept = kept_checkpoints(model_dir)
    folder = Path(model_dir) / CHECKPOINTS
    if not kept:
        raise CheckpointError(f"{folder} holds no checkpoints: train with `training.keep_checkpoints: N` (e.g. "
                              f"--set training.keep_checkpoints=5), which keeps the parameters of the last N "
                              f"validations there")
    if count is not None and count < 1:
        raise CheckpointError(f"cannot average {count} checkpoints: give a number of at least 1")
    if count is not None and count > len(kept):
        steps = ", ".join(str(step) for step, _ in kept)
        raise CheckpointError(f"{folder} holds {len(kept)} checkpoint(s) (steps {steps}), not {count}: average "
                              f"fewer (-n {len(kept)}), or keep more (`training.keep_checkpoints`)")
    return kept if count is None else kept[-count:]


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
#
# A save writes train_state.new/ (state.json last), then swaps it in: train_state/ → train_state.old/, train_state.new/
# → train_state/, and removes train_state.old/ (state.json first). So a folder holding every file is a whole state,
# and a crash at any instant leaves one: `recover_train_state` finishes or undoes the save it cut short.

OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
TRAIN_STATE_FILES = (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE)  # the order a save writes them in
TEMPORARY_FILES = ".*.tmp"  # what `atomic_write` leaves behind when a crash comes before its rename
KILL_AT = "ATTNMT_TEST_KILL_AT"  # the test hook of `_kill_point`
KILL_POINTS = ("written", "first_rename", "second_rename", "removing_old")
_kill_passes: dict[str, int] = {}


def _kill_point(point: str) -> None:
    """A test hook: with ATTNMT_TEST_KILL_AT=POINT:COUNT in the environment this process SIGKILLs itself the COUNT-th
    time a save passes POINT (one of KILL_POINTS: the new folder written, the first rename, the second rename, inside
    the removal of train_state.old/), so that benchmarks/reliability/kills.py lands kills in every window of a save."""
    point_wanted, _, count = os.environ.get(KILL_AT, "").partition(":")
    if point_wanted != point:
        return
    _kill_passes[point] = _kill_passes.get(point, 0) + 1
    if _kill_passes[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _train_state_folders(model_dir: Path) -> tuple[Path, Path, Path]:
    """train_state/, and the two folders a save passes through: train_state.new/ and train_state.old/."""
    final = Path(model_dir) / TRAIN_STATE
    return final, final.with_name(TRAIN_STATE + ".new"), final.with_name(TRAIN_STATE + ".old")


def _is_whole(folder: Path) -> bool:
    """Whether `folder` holds every file of a saved state (state.json is written last and removed first)."""
    return all((folder / name).is_file() for name in TRAIN_STATE_FILES)


def _remove_state(folder: Path, kill_point: str | None = None) -> None:
    """Delete a state folder, state.json first: a removal cut short never leaves a folder that looks whole."""
    if not folder.is_dir():
        return
    (folder / STATE_FILE).unlink(missing_ok=True)
    if kill_point:
        _kill_point(kill_point)
    shutil.rmtree(folder)


def _swap_in(model_dir: Path) -> None:
    """Make the whole train_state.new/ the state: train_state/ → train_state.old/, train_state.new/ → train_state/,
    then remove train_state.old/ (and first any train_state.old/ an earlier crash left)."""
    final, new, old = _train_state_folders(model_dir)
    _remove_state(old)
    if final.exists():
        os.replace(final, old)
        _kill_point("first_rename")
    os.replace(new, final)
    _fsync_directory(final.parent)
    _kill_point("second_rename")
    _remove_state(old, kill_point="removing_old")


def save_train_state(model_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     progress: dict[str, Any]) -> None:
    """Write train_state.new/ (state.json last), then swap it in for train_state/."""
    _, new, _ = _train_state_folders(model_dir)
    _remove_state(new)
    new.mkdir(parents=True)
    optimizer_tensors, optimizer_info = optimizer_to_tensors(optimizer)
    save_model(new / MODEL_FILE, model)
    save_tensors(new / OPTIMIZER_FILE, optimizer_tensors)
    save_tensors(new / RNG_FILE, {"torch": torch.get_rng_state()})
    write_text(new / STATE_FILE, json.dumps({"optimizer": optimizer_info, **progress}, indent=1))
    _kill_point("written")
    _swap_in(model_dir)


def has_train_state(model_dir: Path) -> bool:
    """Whether the folder holds a run to resume: train_state/, or what a crash inside a save left of one (a whole
    train_state.new/ before the renames, train_state.old/ between them)."""
    final, new, old = _train_state_folders(model_dir)
    return final.is_dir() or old.is_dir() or _is_whole(new)


def recover_train_state(model_dir: Path) -> None:
    """Finish or undo a save that a crash cut short, and delete the temporary files of cut writes, so that
    train_state/ is the newest whole state: a whole train_state.new/ is swapped in (its save had written everything);
    without train_state/, a whole train_state.old/ goes back; once train_state/ is whole, any other .new/.old is a
    fragment and goes. A train_state/ that is not whole is left as it is, for `load_train_state` to name what it
    lacks."""
    final, new, old = _train_state_folders(model_dir)
    if _is_whole(new):
        _swap_in(model_dir)
    elif not final.exists() and _is_whole(old):
        os.replace(old, final)
        _fsync_directory(final.parent)
    if _is_whole(final):
        _remove_state(new)
        _remove_state(old)
    for folder in (Path(model_dir), final):
        for temporary in folder.glob(TEMPORARY_FILES):
            temporary.unlink(missing_ok=True)


def _resumed_folder(model_dir: Path) -> Path:
    """The folder `recover_train_state` makes train_state/: a whole .new, else train_state/, else .old."""
    final, new, old = _train_state_folders(model_dir)
    return new if _is_whole(new) else final if final.exists() or not old.exists() else old


def _damage_advice(folder: Path) -> str:
    """What to do about a state folder that cannot be resumed: the same advice wherever the damage is found."""
    return (f"restore {folder} from a copy, or delete it and train again without --resume (which starts over from "
            f"scratch)")


def check_train_state(model_dir: Path) -> None:
    """A `CheckpointError` naming the files the state to resume lacks, if it lacks any."""
    folder = _resumed_folder(model_dir)
    missing = [name for name in TRAIN_STATE_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is incomplete ({', '.join(missing)} missing), so the run in {model_dir} "
                              f"cannot be resumed: {_damage_advice(folder)}")


@contextmanager
def reading_train_state(path: Path) -> Iterator[None]:
    """Whatever goes wrong inside (a missing key, a value of the wrong kind, a tensor that does not fit) while reading
    `path`, a file of train_state/, becomes one `CheckpointError` naming it and what to do."""
    try:
        yield
    except StorageError:
        raise  # the disk, not the state: its own message says what to do
    except (AttnmtError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError,
            SafetensorError) as error:
        reason = f"no {error} in it" if isinstance(error, KeyError) else str(error)
        folder = Path(path).parent
        raise CheckpointError(f"{path} is damaged ({reason}), so the run in {folder.parent} cannot be resumed: "
                              f"{_damage_advice(folder)}") from None


def _check_optimizer_fits(optimizer: torch.optim.Optimizer) -> None:
    """Every per-parameter tensor of the optimizer state (Adam's moments) has its parameter's shape."""
    for parameter, values in optimizer.state.items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != parameter.shape:
                raise ValueError(f"its {name} has the shape {list(value.shape)} for a parameter of the shape "
                                 f"{list(parameter.shape)}")


def load_train_state(model_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore parameters, optimizer and RNG from train_state/ (`recover_train_state` first); return the rest of
    state.json. A file missing or damaged is a `CheckpointError` naming it and what to do."""
    check_train_state(model_dir)
    folder = Path(model_dir) / TRAIN_STATE
    with reading_train_state(folder / STATE_FILE):
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        optimizer_info = state.pop("optimizer")
        if not (isinstance(optimizer_info["param_groups"], list) and isinstance(optimizer_info["scalars"], dict)):
            raise ValueError("its optimizer part is not the one a save writes")
    with reading_train_state(folder / MODEL_FILE):
        load_model_weights(folder / MODEL_FILE, model)
    with reading_train_state(folder / OPTIMIZER_FILE):
        optimizer.load_state_dict(optimizer_from_tensors(read_tensors(folder / OPTIMIZER_FILE), optimizer_info))
        _check_optimizer_fits(optimizer)
    with reading_train_state(folder / RNG_FILE):
        torch.set_rng_state(read_tensors(folder / RNG_FILE)["torch"])
    return state
