"""Data-parallel training over torch.distributed: what the ranks exchange, and nothing else.

ZO optimizers need no gradient exchange. Every rank holds the same parameters, draws the same
perturbation seeds (they are a function of the run seed and the step), evaluates its share of
the global batch at the same perturbed point, and the ranks all-reduce one (loss sum, count)
pair per micro-batch and query: 16 bytes, whatever the model size. Every rank then applies the
same update from the same numbers, so the parameters stay identical without ever being sent.
The backprop baselines (fo-*) use torch's DistributedDataParallel, which all-reduces the
gradient of every trainable parameter each step; both are counted in ``Comm.bytes``.

Launch with torchrun (``torchrun --nproc-per-node N -m zoft train ...``): the process group is
set up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), with the
nccl backend on CUDA and gloo on CPU, and a timeout (``ZOFT_DIST_TIMEOUT`` seconds, default
600) so that a rank that dies leaves the others with an error instead of a hang.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600


class PeerFailure(RuntimeError):
    """A collective failed: another rank stopped, crashed or timed out."""


class Comm:
    """One process (world 1): every collective is the identity. Base of :class:`DataParallel`."""

    rank, world, local_rank = 0, 1, 0

    def __init__(self) -> None:
        self.bytes = 0  # payload bytes this rank has passed to collectives

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous share of ``items`` (shares differ in size by at most one)."""
        n = len(items)
        return list(items[self.rank * n // self.world: (self.rank + 1) * n // self.world])

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        return flag

    def wrap_for_backprop(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def close(self) -> None:
        pass


class DataParallel(Comm):
    """A torch.distributed process group (already initialised, or initialised here)."""

    def __init__(self, backend: str | None = None, timeout_s: float | None = None) -> None:
        super().__init__()
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            timeout = timeout_s or float(os.environ.get("ZOFT_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))
        self.backend = dist.get_backend()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        buf = tensor.detach().to(device).clone()
        self.bytes += buf.numel() * buf.element_size()
        try:
            dist.all_reduce(buf, op=ops[op])
        except Exception as err:  # a peer that died or timed out: say which rank saw it
            raise PeerFailure(f"rank {self.rank} of {self.world}: all-reduce failed; another rank "
                              f"has probably stopped (see its log): {err}") from err
        return buf.to(tensor.device)

    def any(self, flag: bool) -> bool:
        return bool(self.all_reduce(torch.tensor([int(flag)]), "max").item())

    def wrap_for_backprop(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around ``model``, its gradient traffic counted in ``bytes``."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.cuda.current_device()] if self.backend == "nccl" else None
        ddp = DistributedDataParallel(model, device_ids=device_ids)

        def counted_allreduce(state, bucket):
            buf = bucket.buffer()
            self.bytes += buf.numel() * buf.element_size()
            return _allreduce_mean(bucket)

        ddp.register_comm_hook(None, counted_allreduce)
        return ddp

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _allreduce_mean(bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    return allreduce_hook(None, bucket)


def from_env() -> Comm:
    """DataParallel when launched by torchrun with more than one process, else one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or dist.is_initialized():
        return DataParallel()
    return Comm()
