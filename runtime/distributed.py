"""One process or many: device choice, the process group torchrun sets up, DDP wrapping, and the launcher.

`netspec train --nproc-per-node N` re-runs itself through torchrun (`torchrun --standalone
--nproc-per-node N -m netspec.cli train ...`); `torchrun ... -m netspec.cli train ...` (also multi-node,
through torchrun's rendezvous) is the same thing done by hand. Inside, RANK / WORLD_SIZE / LOCAL_RANK
come from the environment; gloo is used on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from netspec.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """Where this process runs: its rank among `world_size` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, writes metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(option: str, local_rank: int = 0, what: str = "train.device") -> torch.device:
    """'auto' → cuda:<local rank> if CUDA is present, else cpu; 'cuda' → cuda:<local rank>; else as given.
    A device this machine does not have is a UserError (`what` names the setting in it)."""
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(f"cuda:{local_rank}" if option == "cuda" else option)
    except (RuntimeError, ValueError):
        raise UserError(f"{what} '{str(option)[:40]}' is not a device", "use cpu, cuda, cuda:N or mps") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{what} is 'mps' but this machine has no usable Apple GPU (MPS)",
                        f"set {what}=cpu (or auto)".replace("--device=", "--device "))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what} is '{option}' but this machine has no usable CUDA device",
                        f"set {what}=cpu (or auto)".replace("--device=", "--device "))
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{what} is '{device}' but this machine has {torch.cuda.device_count()} CUDA device(s)",
                        "use cuda:0 .. cuda:N-1, or cuda (one device per process under torchrun)")
    return device


def setup(device_option: str) -> Context:
    """Join the process group torchrun describes in the environment (if any) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    one_per_rank = device_option if world_size == 1 else device_option.split(":")[0]  # DDP: cuda:<local rank>
    device = pick_device(one_per_rank, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world_size, local_rank, device)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def main_first(ctx: Context, fn: Callable[[], T]) -> T:
    """Run `fn` on each machine's first process (it may download into that machine's cache), then on the others."""
    first = ctx.local_rank == 0
    if first:
        result = fn()
    if ctx.distributed:
        dist.barrier()
    if not first:
        result = fn()
    return result


def all_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather(ctx: Context, obj: T) -> list[T]:
    """One picklable object from every rank, in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast(ctx: Context, obj: T) -> T:
    """Rank 0's picklable object, on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(ctx: Context, model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), so evaluation sees the checkpointed model."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, ctx: Context, sync_bn: bool) -> nn.Module:
    """The model as this process trains it: with SyncBatchNorm (if asked) inside DistributedDataParallel."""
    if not ctx.distributed:
        return model
    if sync_bn:
        if ctx.device.type != "cuda":
            raise UserError("train.sync_bn needs CUDA devices: PyTorch's SyncBatchNorm does not run on CPU",
                            "set train.sync_bn=false for CPU runs")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def launch(nproc: int, netspec_args: list[str]) -> int:
    """Run `netspec <netspec_args>` in `nproc` processes on this machine through torchrun; their exit status.

    torchrun runs in this process so that a failed rank ends with its own message and status, not torchrun's
    traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = ["--standalone", f"--nproc-per-node={nproc}", "-m", "netspec.cli", *netspec_args]
    print("launching: torchrun", " ".join(argv), file=sys.stderr, flush=True)
    try:
        run(parse_args(argv))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 1
    return 0
