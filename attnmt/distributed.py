"""Several processes training one model: torch.distributed, set up from what torchrun tells each process.

torchrun (`torch.distributed.run`) starts one process per device and describes its place through environment
variables: RANK (0 .. WORLD_SIZE − 1 over all machines), WORLD_SIZE, LOCAL_RANK (its device on this machine), and
MASTER_ADDR / MASTER_PORT (where the processes meet). Without WORLD_SIZE there is one process (`single_process`),
and nothing here touches torch.distributed: every method below is then a no-op that returns its input. Each
process's device comes from attnmt/devices.py: cuda:LOCAL_RANK on a machine with GPUs, unless `training.device: cpu`.

One optimizer step with N processes (see `Trainer.train`):

    batches b_1 .. b_N (consecutive in the epoch's order)   process r trains on b_r       (`shard`)
    loss_r = N · Σ_{t ∈ b_r} CE_t / T                      T = target tokens of b_1 .. b_N
    DDP:  g = (1 / N) Σ_r ∇loss_r = Σ_{t ∈ b_1 .. b_N} ∇CE_t / T     = one process's gradient on all N batches

With `training.batches_per_step` A, a step takes N · A batches, A per process, whose gradients each process adds up
before DDP all-reduces them once: 1 process with A = N trains like N processes with A = 1. Every process knows the
whole batch order, so it counts T itself, without a message.

Only the main process (rank 0) writes files; the others wait for it where they need what it wrote (`barrier`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from attnmt import devices
from attnmt.errors import AttnmtError

Item = TypeVar("Item")
MAIN_RANK = 0
# How long a process waits in a collective for the others: rank 0 validates (beam search over dev) and writes
# checkpoints alone while the others wait, which can take longer than torch's defaults (10 min with NCCL).
COLLECTIVE_TIMEOUT = timedelta(hours=2)


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun started (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def is_main() -> bool:
    """Whether this process is the one that writes files and prints: rank 0, or the only process."""
    return int(os.environ.get("RANK", MAIN_RANK)) == MAIN_RANK


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """The items of process `rank`: every `world_size`-th, starting at position `rank`.

    shard([b0, b1, b2, b3], rank=1, world_size=2) == [b1, b3]: the shards of all ranks are disjoint and together
    hold every item once.
    """
    return list(items[rank::world_size])


def _environment_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None or not value.strip().isdigit():
        raise AttnmtError(f"{name}={value!r}: torchrun sets it to a number for every process it starts; start "
                          f"distributed training with `torchrun ... -m attnmt train CONFIG` or `attnmt train "
                          f"--distributed N CONFIG`")
    return int(value)


@dataclass
class Context:
    """This process's place among the training processes. The default is the single process of a plain run."""

    rank: int = MAIN_RANK
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    enabled: bool = False  # a process group is running (started by torchrun, even with one process)
    owns_group: bool = False  # `init` started the group, so `close` ends it

    @property
    def is_main(self) -> bool:
        return self.rank == MAIN_RANK

    @property
    def backend(self) -> str | None:
        return dist.get_backend() if self.enabled else None

    # --- the model ---------------------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model that training calls: DistributedDataParallel (which all-reduces the gradients in backward), or
        the model itself in a single process. Parameters stay those of `model`, so the optimizer, checkpoints and
        validation keep using `model`."""
        if not self.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    # --- communication: each call is a collective, so every process must make it, in the same order ------------

    def barrier(self) -> None:
        """Wait until every process got here."""
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` (a tensor of the same shape on every process) over all processes."""
        if not self.enabled:
            return value
        total = value.detach().to(self.device, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total.to(value.device)

    def from_main(self, value: Any) -> Any:
        """The main process's `value` (any picklable object), on every process."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=MAIN_RANK, device=self.device)
        return box[0]

    def main_decides(self, flag: bool) -> bool:
        """The main process's `flag` on every process: one decision where clocks differ (time budgets)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(tensor, src=MAIN_RANK)
        return bool(tensor.item())

    def close(self) -> None:
        """End the process group, if `init` started it."""
        if self.enabled and self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.enabled = False


def single_process(device_name: str = "auto") -> Context:
    """The one process of a plain run, on the device `training.device` names (see attnmt/devices.py)."""
    return Context(device=devices.choose(device_name, option="`training.device`"))


def init(device_name: str = "auto") -> Context:
    """Join the processes torchrun started (NCCL on GPUs, gloo on CPUs); without torchrun, `single_process`.
    Under torchrun, process LOCAL_RANK of a machine with GPUs trains on cuda:LOCAL_RANK whatever GPU `device_name`
    names, unless it is cpu. A process group someone else already started is used as it is (and left running by
    `close`)."""
    if not launched_by_torchrun():
        return single_process(device_name)
    rank, world_size = _environment_int("RANK"), _environment_int("WORLD_SIZE")
    local_rank = _environment_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    device = devices.choose(device_name, local_rank, option="`training.device`")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = not dist.is_initialized()
    if owns_group:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise AttnmtError(f"WORLD_SIZE is set, so this is one of several training processes, but "
                              f"{' and '.join(missing)} (where they meet) is not: start them with torchrun "
                              f"(`torchrun ... -m attnmt train CONFIG`, docs/distributed.md), or unset WORLD_SIZE to "
                              f"train in one process")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size,
                                timeout=COLLECTIVE_TIMEOUT, device_id=device if device.type == "cuda" else None)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device, enabled=True,
                   owns_group=owns_group)
