"""Data-parallel training over several processes (``torchrun``), one model per process.

``torchrun --nproc_per_node N -m mcel.cli train ...`` starts N copies of the command
with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
`mcel.train.train` sees ``WORLD_SIZE > 1`` and then:

* joins the process group (gloo on CPU, NCCL on CUDA; rank r uses ``cuda:LOCAL_RANK``),
* wraps the model in ``DistributedDataParallel`` (gradients are averaged every step),
* draws the same global permutation on every rank (the generator is seeded from the
  config) and gives rank r its part of each global batch (`shard`), so one epoch sees
  every sample once, over all ranks together, with the global batch size of the config,
* lets only rank 0 write the run folder, and leaves the group at the end.

With one process none of this happens: ``train`` is exactly the single-process loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from mcel.errors import MCELError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (``world == 1``: not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise MCELError(f"environment variable {name}={text!r} is not an integer") from None


def dist_info() -> DistInfo:
    """This process's rank and the world size, from torchrun's environment variables."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise MCELError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return DistInfo(rank, local, world)


def is_main_process() -> bool:
    """True in single-process runs and on rank 0 of a torchrun job."""
    return dist_info().is_main


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process: a distributed CUDA run uses ``cuda:LOCAL_RANK``."""
    if not info.enabled or device.type != "cuda":
        return device
    if info.local_rank >= torch.cuda.device_count():
        raise MCELError(f"LOCAL_RANK {info.local_rank} has no GPU (this node has "
                        f"{torch.cuda.device_count()}); use --nproc_per_node <= GPUs")
    return torch.device("cuda", info.local_rank)


@contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration of the block (no-op for one process).

    A group someone else initialised (a user's own launcher) is used and left alone.
    """
    if not info.enabled:
        yield
        return
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world)
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:
            dist.barrier()  # every rank finished before rank 0's files are final
        dist.destroy_process_group()


def shard(idx: Tensor, info: DistInfo) -> Tensor:
    """Rank r's contiguous part of one global batch of sample indices.

    ``tensor_split`` sizes differ by at most one, so the ranks' losses are reweighted
    by `shard_weight` to make the averaged gradient that of the whole batch.

    >>> shard(torch.arange(10), DistInfo(1, 1, 3)).tolist()
    [4, 5, 6]
    """
    if not info.enabled:
        return idx
    return torch.tensor_split(idx, info.world)[info.rank]


def shard_weight(n_local: int, n_global: int, info: DistInfo) -> float:
    """Factor on a rank's mean loss so that DDP's average over ranks is the global mean:
    sum_r (mean_r * n_r * W / N) / W = sum_r sum_r / N."""
    if not info.enabled:
        return 1.0
    return n_local * info.world / n_global


def all_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum of ``values`` over all ranks (epoch statistics for the log)."""
    if not info.enabled:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


__all__ = ["DistInfo", "all_sum", "dist_info", "is_main_process", "process_group",
           "rank_device", "shard", "shard_weight"]
