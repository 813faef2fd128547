"""
Where a `vpr-train` process stands under torchrun, and the two collectives training needs.

World size 1 is the same code path without a process group.
"""
import dataclasses
import datetime
import os

import torch


@dataclasses.dataclass
class Dist:
    """Where this process stands: rank, world size, its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = 'auto') -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    cuda = device.startswith('cuda') or (device == 'auto' and torch.cuda.is_available())
    if cuda:
        index = local if world > 1 else (torch.device(device).index or 0
                                         if device.startswith('cuda') else 0)
        dev = torch.device('cuda', index)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device('cpu')
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local_world, 1)))
    if world > 1:
        torch.distributed.init_process_group('nccl' if cuda else 'gloo',
                                             timeout=datetime.timedelta(minutes=30))
    return Dist(rank, local, world, dev)


def barrier(dist: Dist) -> None:
    if dist.ddp:
        torch.distributed.barrier()


def all_sum(dist: Dist, *values: float) -> list[float]:
    if not dist.ddp:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


