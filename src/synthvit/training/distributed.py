"""Multi-process training under `torchrun`: NCCL on GPUs, gloo on CPUs, one node or several.

torchrun sets WORLD_SIZE, RANK (global, over all nodes) and LOCAL_RANK (within a node);
without them everything here is a no-op and training runs in one process. The main
process is global rank 0: the only one in the whole job that writes outputs and MLflow
runs (each node has a LOCAL_RANK 0). Every rank holds the dataset and draws the
same shuffled order; each takes its slice of every global batch, so a run on N
processes sees the same batches as one process with the same `batch_size`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def setup(device_type: str) -> None:
    """Join the process group once, when launched by torchrun with more than one process."""
    if world_size() == 1 or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def from_main(make):
    """`make()` computed by the main process and sent to every process (files it reads may
    exist on its node only)."""
    if not dist.is_initialized():
        return make()
    box = [make() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value) -> list:
    """Each process's `value`, in rank order, on every process."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


class Silent:
    """Stands in for an MLflow run on ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return None
