"""Checkpoint averaging: the parameters of N checkpoints of one model, averaged elementwise.

    θ̄ = (1/N) Σ_i θ_i

summed in float64 and cast back to each tensor's own dtype, so that averaging one checkpoint gives it back bit for
bit. The checkpoints must hold the same tensors (names, shapes, dtypes): the last few checkpoints of one run, or of
runs of one config and tokenizer. Integer and boolean tensors are not averaged: they must be equal in every file.
A checkpoint with a NaN or an infinity is refused, since every average with it would be non-finite too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from attnmt.checkpoint import save_tensors
from attnmt.errors import CheckpointError


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose floating-point values are all finite."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: give the model.safetensors files of trained models") from None
    except SafetensorError as error:
        raise CheckpointError(f"{path} cannot be read as a safetensors checkpoint ({error}): give the "
                              f"model.safetensors files of trained models") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: '{name}' holds NaN or infinite values, so every average with it would "
                                  f"too: leave this checkpoint out")
    return tensors


def check_same_tensors(reference_path: Path, reference: dict[str, torch.Tensor], path: Path,
                       tensors: dict[str, torch.Tensor]) -> None:
    """The same names, and for each the same shape and dtype, as the reference checkpoint; integer and boolean
    tensors also the same values."""
    advice = "average only checkpoints of one model (the same config and tokenizer)"
    missing, extra = sorted(reference.keys() - tensors.keys()), sorted(tensors.keys() - reference.keys())
    if missing or extra:
        key, where = (missing[0], "lacks") if missing else (extra[0], "has")
        other = "has" if missing else "lacks"
        raise CheckpointError(f"{path} {where} '{key}', which {reference_path} {other}: {advice}")
    for name, tensor in tensors.items():
        expected = reference[name]
        if tensor.shape != expected.shape or tensor.dtype != expected.dtype:
            raise CheckpointError(f"{path}: '{name}' is {tensor.dtype} {list(tensor.shape)}, but {expected.dtype} "
                                  f"{list(expected.shape)} in {reference_path}: {advice}")
        if not tensor.is_floating_point() and not torch.equal(tensor, expected):
            raise CheckpointError(f"{path}: '{name}' holds integers that differ from {reference_path}'s, and "
                                  f"integers are not averaged: {advice}")


def average_tensors(paths: Sequence[Path]) -> dict[str, torch.Tensor]:
    """θ̄ = (1/N) Σ_i θ_i over the safetensors files `paths` (in float64, cast back to each tensor's dtype); integer
    and boolean tensors, equal in every file, are kept. A `CheckpointError` names the first file that is missing,
    unreadable, non-finite or unlike the first file, and the tensor."""
    if not paths:
        raise CheckpointError("no checkpoints to average: give one or more model.safetensors files")
    first_path, *rest = [Path(path) for path in paths]
    first = read_checkpoint(first_path)
    sums = {name: tensor.double() for name, tensor in first.items() if tensor.is_floating_point()}  # Σ_i θ_i
    for path in rest:
        tensors = read_checkpoint(path)
        check_same_tensors(first_path, first, path, tensors)
        for name, total in sums.items():
            total += tensors[name].double()
    return {name: (sums[name] / len(paths)).to(tensor.dtype) if name in sums else tensor
            for name, tensor in first.items()}


def write_average(paths: Sequence[Path], out_path: Path) -> None:
    """Write the average of the checkpoints `paths` to `out_path` (atomically: a crash leaves no half file)."""
    save_tensors(out_path, average_tensors(paths))
