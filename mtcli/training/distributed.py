"""Device selection and torch.distributed (DDP) plumbing; a no-op wrapper in one process.

`torchrun --nproc_per_node=N -m mtcli train CONFIG` sets RANK/WORLD_SIZE/LOCAL_RANK; we then
use NCCL on GPUs and gloo on CPUs. Nothing here is specific to one machine.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from mtcli.errors import MtcliError


def pick_device(preference: str, local_rank: int = 0, local_world: int = 1) -> torch.device:
    """cuda when asked for or available (auto), else cpu; one GPU per process on this node."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise MtcliError("train.device: cuda requested but no CUDA device is available")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if local_world > gpus:  # NCCL cannot put two ranks on one GPU
            raise MtcliError(f"train.device: {local_world} processes on this node but {gpus} CUDA device(s); "
                             f"launch with --nproc_per_node={gpus}, or set train.device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class Dist:
    """This process's place in the job: rank, world size and device."""

    rank: int
    world: int
    device: torch.device

    @classmethod
    def setup(cls, device: str = "auto", threads: int | None = None) -> Dist:
        """Initialise the process group when launched by torchrun; set CPU threads."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        dev = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")),
                          int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            torch.distributed.init_process_group(backend)
        return cls(rank, world, dev)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel across ranks, the model itself in one process."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, net: torch.nn.Module, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of an update."""
        if self.world > 1 and not last:
            return net.no_sync()
        return contextlib.nullcontext()

    def sum(self, value: float) -> float:
        """Sum a number over ranks."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t)

    def broadcast_state(self, state: dict) -> dict:
        """Rank 0's copy of a small picklable dict on every rank."""
        if self.world == 1:
            return state
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def cleanup(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
