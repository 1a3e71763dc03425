"""Multi-process training through PyTorch's own engine (``torchrun`` + DDP).

``torchrun --nproc_per_node N -m audiocnn train ... --run-dir DIR`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them, picks the backend
(nccl on CUDA, gloo otherwise) and binds each process to its GPU. Everything else asks
:class:`DistInfo` whether it is rank 0 (the only writer) and uses the gather helpers
below so every rank computes the same metrics and takes the same decisions.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op for a single process."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled; fine for per-clip score arrays)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """Round-robin share of ``n`` evaluation items for this rank: no padding, so no clip is
    counted twice when ``n`` is not a multiple of the world size."""
    return list(range(info.rank, n, info.world_size))


def all_reduce_mean_(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Replace ``tensor`` (on this rank's device) in place by its mean over the ranks."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(info.world_size)
    return tensor


def main_first(info: DistInfo, work: Callable[[bool], T]) -> T:
    """``work(True)`` on rank 0 (it may compute and write, e.g. extract a store), the other
    ranks wait for it, then run ``work(False)`` (reading what rank 0 wrote)."""
    result = work(True) if info.is_main else None
    barrier(info)
    return result if info.is_main else work(False)  # type: ignore[return-value]
