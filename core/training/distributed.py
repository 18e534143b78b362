"""Training on several processes with torchrun: torch's DistributedDataParallel (torch only).

`gen train` runs unchanged under torchrun, on one machine or several:

    torchrun --nproc_per_node 2 "$(which gen)" train ...

torchrun starts one process per GPU (or per share of the CPU) and tells each its
place in environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ...).
`Distributed.from_environment()` reads them; without torchrun it describes a single
process, and every method below does nothing, so the training loop reads the same
either way. What a distributed run does differently, in the training loop's terms:

- every process builds the same model and wraps it in DistributedDataParallel, which
  averages the gradients over the processes in the backward pass (gloo on the CPU,
  nccl on CUDA, where each process takes the GPU of its local rank);
- the processes share one batch order: each draws the starts of the whole global
  batch from the same generator and keeps its own rows (gen.core.training.loop.BatchSampler),
  so a run on N processes of batch B draws exactly the rows that one process of
  batch N*B draws, and its losses match that run's;
- dropout differs between processes: process r > 0 reseeds torch's global RNG with
  seed + r (nanoGPT's seed offset); process 0 draws what a single process would;
- with gradient accumulation, the gradients are averaged only on the last micro-step
  (`no_sync` on the others);
- losses are averaged over the processes, so every process logs the same numbers;
- process 0 alone prints, draws the progress bar, runs the plugins' training hooks
  and writes the run directory; a hook's request to stop reaches every process.

A process that dies ends the run: torchrun notices within its monitor interval
(0.1 s), stops the others on its machine (SIGTERM, then SIGKILL after 30 s) and
exits with an error naming the rank. Processes on other machines fail in their next
collective when the connection drops, and at the latest after TIMEOUT_S seconds (GEN_DISTRIBUTED_TIMEOUT).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gen.core.errors import GenError, first_line

# How long a collective, or a process joining the run, waits for a missing process before
# failing: long enough for process 0 to write a checkpoint, or for every process to compile,
# while the others wait. GEN_DISTRIBUTED_TIMEOUT (seconds) sets another.
TIMEOUT_S = 600.0


def _environment_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise GenError(f"the environment variable {name}={value!r} is not a number; launch gen train with torchrun") from None


def _timeout() -> datetime.timedelta:
    value = os.environ.get("GEN_DISTRIBUTED_TIMEOUT", "")
    if not value:
        return datetime.timedelta(seconds=TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e7:
        raise GenError(f"GEN_DISTRIBUTED_TIMEOUT={value!r} is not a number of seconds above 0")
    return datetime.timedelta(seconds=seconds)


def processes(count: int) -> str:
    return f"{count} process{'es' if count != 1 else ''}"


@dataclass
class Distributed:
    """This process's place in a run: rank r of world_size processes (0 of 1 alone)."""

    rank: int = 0
    local_rank: int = 0  # the rank on this machine: which GPU it takes
    world_size: int = 1
    launched: bool = False  # started by torchrun: a process group joins the processes
    started: bool = False

    @classmethod
    def from_environment(cls) -> "Distributed":
        """torchrun's place for this process, or a single process when RANK is not set."""
        if "RANK" not in os.environ:
            return cls()
        distributed = cls(rank=_environment_int("RANK"), local_rank=_environment_int("LOCAL_RANK"),
                          world_size=_environment_int("WORLD_SIZE"), launched=True)
        if not 0 <= distributed.rank < distributed.world_size:
            raise GenError(f"RANK {distributed.rank} is outside WORLD_SIZE {distributed.world_size}; "
                           f"launch gen train with torchrun")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
        if missing:  # torch would raise a ValueError deep in init_process_group
            raise GenError(f"RANK is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
                           f"launch gen train with torchrun, which sets them all (or unset RANK)")
        return distributed

    @property
    def is_main(self) -> bool:
        """Process 0, the one that prints, runs the hooks and writes the run directory."""
        return self.rank == 0

    def describe(self) -> str:
        return processes(self.world_size)

    # --- setting up ---------------------------------------------------------------------

    def device(self, device: torch.device) -> torch.device:
        """The device of this process: on CUDA, the GPU of its local rank."""
        if not self.launched or device.type != "cuda":
            return device
        if device.index is not None and device.index != self.local_rank:
            raise GenError(
                f"--device {device}: under torchrun each process takes the GPU of its local rank "
                f"(this one cuda:{self.local_rank}); give --device cuda or auto"
            )
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise GenError(
                f"process {self.rank} has local rank {self.local_rank} but this machine has {count} GPU(s); "
                f"start at most {count} processes per machine (torchrun --nproc_per_node {count})"
            )
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> None:
        """Join the other processes: nccl between GPUs, gloo on the CPU."""
        if not self.launched or self.started:
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_available() or not dist.is_backend_available(backend):
            raise GenError(f"this torch build has no {backend} backend for torch.distributed; "
                           f"install a torch build with it, or train in one process")
        timeout = _timeout()
        address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        if self.rank != 0:  # it may wait: say for what, rather than hang silently
            print(f"process {self.rank}: waiting up to {timeout.total_seconds():g} s for process 0 at {address}",
                  file=sys.stderr, flush=True)
        try:
            dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as error:  # torch's DistStoreError (a timeout) is a RuntimeError
            raise GenError(f"process {self.rank} could not join the run at {address} within "
                           f"{timeout.total_seconds():g} s ({first_line(error)[:120]}); start every process of the "
                           f"run (torchrun on each machine) and check MASTER_ADDR and MASTER_PORT") from None
        self.started = True

    def offset_seed(self, seed: int) -> None:
        """Give each process its own dropout: process r > 0 reseeds torch with seed + r."""
        if self.rank > 0:
            torch.manual_seed(seed + self.rank)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
        """The model in DistributedDataParallel, or None for a single process.

        DDP broadcasts process 0's weights to the others as it starts, and then keeps
        them equal by averaging the gradients.
        """
        if not self.started:
            return None
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def close(self) -> None:
        if self.started:
            dist.destroy_process_group()
            self.started = False

    # --- during training ----------------------------------------------------------------

    @staticmethod
    def micro_step(ddp: torch.nn.Module | None, synchronise: bool):
        """The context of one micro-step's forward and backward: DDP averages the
        gradients only when `synchronise` (the last micro-step), else no_sync."""
        if ddp is None or synchronise:
            return contextlib.nullcontext()
        return ddp.no_sync()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar tensor over the processes (gloo has no AVG: sum, then divide)."""
        if not self.started:
            return value
        total = value.detach().float().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def decide(self, flag: bool, device: torch.device) -> bool:
        """Process 0's `flag`, on every process (a hook's request to stop training)."""
        if not self.started:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def gather(self, tensor: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """Every process's `tensor` (same shape on each), on the CPU, in rank order."""
        if not self.started:
            return [tensor]
        local = tensor.to(device)
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [part.cpu() for part in parts]


# How gloo words a lost peer: it raises a plain RuntimeError (nccl raises DistError).
LOST_PEER = ("Connection closed by peer", "Connection reset by peer", "gloo/transport")


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` is torch.distributed reporting that another process is gone."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(marker in str(error) for marker in LOST_PEER)
    )
