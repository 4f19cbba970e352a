"""Where tensors live and in what precision the model computes: the one place that picks a device.

    device            auto (a GPU if torch sees one, else the CPU) | cpu | cuda (the current GPU) | cuda:N
    mixed_precision   none (float32) | bf16 | fp16: the forward pass under torch.autocast; parameters, optimizer
                      state and the loss stay float32. fp16 needs a GPU and a gradient scaler (torch.amp.GradScaler).

Training (`training.device`, `training.mixed_precision`) and translation (`Translator.load(device=...,
mixed_precision=...)`, the CLI's `--device` and `--mixed-precision`) both choose here. Translating under bf16 runs the
matrix products in bfloat16 and every log-probability in float32. In a distributed run, process LOCAL_RANK of a machine with GPUs trains on
cuda:LOCAL_RANK whatever GPU the config names; `device: cpu` keeps every process on the CPU (gloo).
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from typing import ContextManager

import torch

from attnmt.errors import AttnmtError, ConfigError

DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N: a GPU's 0-based index)"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_name(name: object) -> str:
    """`name` if it is one of auto | cpu | cuda | cuda:N, else ValueError listing the choices (for pydantic and
    argparse, which turn it into their own messages)."""
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a device; choose one of {DEVICE_CHOICES}")
    return name


def choose(name: str = "auto", local_rank: int | None = None, option: str = "device") -> torch.device:
    """The torch device that `name` asks for on this machine.

    auto is cuda when torch sees a GPU, else cpu. `local_rank` (a distributed process's LOCAL_RANK) replaces the GPU
    index: auto, cuda and cuda:N all mean cuda:LOCAL_RANK there. A GPU that is not there is an AttnmtError that
    names `option` (what the user set: `training.device`, --device).
    """
    try:
        check_name(name)
    except ValueError as error:
        raise AttnmtError(f"{option}: {error}") from None
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise AttnmtError(f"{option} {name!r}: torch sees no GPU here (torch {torch.__version__}); use cpu or auto")
    count = torch.cuda.device_count()
    if local_rank is not None:
        if local_rank >= count:
            raise AttnmtError(f"LOCAL_RANK {local_rank}, but this machine has {count} GPU(s): start at most {count} "
                              f"processes per machine (torchrun --nproc-per-node {count})")
        return torch.device("cuda", local_rank)
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    if index >= count:
        raise AttnmtError(f"{option} {name!r}: this machine has {count} GPU(s), cuda:0 .. cuda:{count - 1}")
    return torch.device("cuda", index)


def check_mixed_precision(mode: str, device: torch.device, option: str = "`training.mixed_precision`") -> None:
    """ConfigError where a mixed-precision mode cannot run on `device`: fp16 off a GPU, bf16 on a GPU without
    bfloat16 (before Ampere); `option` names what the user set."""
    if mode not in ("none", *AUTOCAST_DTYPES):
        raise ConfigError(f"{option}: {mode!r} is not a mode; choose none, bf16 or fp16")
    if mode == "fp16" and device.type != "cuda":
        raise ConfigError(f"{option}: fp16 needs a GPU (float16 autocast), but the model runs on {device}; use bf16 "
                          f"or none on the CPU")
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{option}: bf16 on {device} ({torch.cuda.get_device_name(device)}) which has no bfloat16; use fp16")


def autocast(mode: str, device: torch.device) -> ContextManager:
    """The context that runs the forward pass in `mode`'s precision on `device`: torch.autocast, or nothing for
    `none`."""
    if mode == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[mode])


def gradient_scaler(mode: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16: a GradScaler (the loss is scaled up before backward so that small float16 gradients do not flush to
    zero; the gradients are unscaled before clipping and steps with inf/NaN gradients are skipped). Other modes: a
    disabled scaler, whose calls pass straight through to backward and the optimizer."""
    return torch.amp.GradScaler(device.type, enabled=mode == "fp16")


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters are (what its inputs must be moved to)."""
    return next(model.parameters()).device
