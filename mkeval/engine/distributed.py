"""Data-parallel training of one cell: ``torchrun --nproc-per-node K -m mkeval run ...``.

Every rank builds the same plan and walks the same jobs. A training cell runs on all ranks
with ``DistributedDataParallel`` (gloo on a CPU, NCCL on CUDA): each step's global batch
(``batch_size`` windows, the same ones in the same order as one process) is cut into K equal
row blocks, one per rank, and each rank's loss is its share of the global batch's summed loss
over the global batch's scored-token count, times K, so DDP's gradient average is exactly the
one-process gradient. Validation and test windows are split across ranks and their loss sums
reduced. The recorded protocol (global batch) is the same for every K; only floating-point
reduction order differs. Rank 0 alone writes results, checkpoints and training states;
other jobs (post-training precisions, downstream tasks) run on rank 0 alone.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from ..errors import CellFailed, UsageError

# how long a rank waits in a collective for the others (rank 0 may be running a downstream task meanwhile)
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` data-parallel processes (size 1: no torchrun)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def rows(self, n: int) -> slice:
        """This rank's contiguous block of ``n`` rows (``n`` divisible by ``size``)."""
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def shard(self, n: int) -> torch.Tensor:
        """This rank's evaluation windows of ``n``: every ``size``-th from ``rank``."""
        return torch.arange(self.rank, n, self.size)

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums over ranks, in float64."""
        if not self.parallel:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device if self.backend == "nccl" else "cpu")
        dist.all_reduce(tensor)
        return tensor.tolist()

    def agree(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's ``flag``, on every rank."""
        if not self.parallel:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=device if self.backend == "nccl" else "cpu")
        dist.broadcast(tensor, 0)
        return bool(tensor.item())

    def on_main(self, work: Callable[[], Any], device: torch.device, what: str) -> None:
        """``work()`` on rank 0 alone (a file write), then every rank learns whether it succeeded: a
        failure fails the cell on every rank, so no rank goes on into collectives the others left."""
        error: Exception | None = None
        if self.main:
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - reported on every rank below
                error = exc
        if not self.agree(error is None, device):
            if error is not None:
                raise error
            raise CellFailed(f"{what} failed on rank 0 (its traceback file has the error)")

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers, copied into every rank's ``module``."""
        if self.parallel:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


SINGLE = World()


def launched() -> bool:
    """This process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA, each process uses GPU LOCAL_RANK."""
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def join(device: torch.device) -> World:
    """This process's World: joins the process group torchrun describes (once); SINGLE otherwise."""
    if not launched():
        return SINGLE
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise UsageError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} says this is one of several processes, but "
                             f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; start the run "
                             "with torchrun (docs/distributed.md), or unset WORLD_SIZE for one process")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), dist.get_backend())
