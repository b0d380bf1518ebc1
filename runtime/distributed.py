"""One process or many: device choice, the process group torchrun sets up, DDP wrapping, and the launcher.

`netspec train --nproc-per-node N` re-runs itself through torchrun (`torchrun --standalone
--nproc-per-node N -m netspec.cli train ...`); `torchrun ... -m netspec.cli train ...` (also multi-node,
through torchrun's rendezvous) is the same thing done by hand. Inside, RANK / WORLD_SIZE / LOCAL_RANK
come from the environment; gloo is used on CPU, nccl on CUDA.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
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


def set_threads(setting: int | str) -> int:
    """train.threads for this process (torch.set_num_threads); `auto`: OMP_NUM_THREADS when it is set (the
    launcher sets it for each rank), else the cores no other process is keeping busy now. Returns the count."""
    if setting == "auto":
        env = os.environ.get("OMP_NUM_THREADS", "")
        setting = int(env) if env.isdigit() and int(env) > 0 else idle_cores()
    torch.set_num_threads(setting)
    return setting


def idle_cores(window: float = 0.25) -> int:
    """The cores of this process's CPU set that other processes leave idle, measured over `window` seconds from
    /proc/stat (at least 1; all of them where /proc/stat cannot be read). Our choice: with more threads than idle
    cores, every parallel region of a step waits for a thread the kernel has not scheduled."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values[:8]), values[3] + values[4]  # total (without guest time), idle + iowait

    try:
        (total0, idle0), _ = sample(), time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return cores
    busy = (1 - (idle1 - idle0) / max(total1 - total0, 1)) * (os.cpu_count() or cores)
    return max(1, min(cores, round((os.cpu_count() or cores) - busy)))


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


@contextlib.contextmanager
def _handlers(handler):
    """SIGINT/SIGTERM go to `handler` while the block runs (torchrun installs its own only if none is set)."""
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that prints."""
    return os.environ.get("RANK", "0") == "0"


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def launch(nproc: int, netspec_args: list[str], say: Callable[[str], None]) -> int:
    """Run `netspec <netspec_args>` in `nproc` processes on this machine through torchrun; their exit status.

    torchrun runs in this process so that a failed rank ends with its own message and status, not torchrun's
    traceback. Each rank gets OMP_NUM_THREADS (unless set: the idle cores shared out), which also keeps
    torchrun from warning about it. SIGTERM/SIGINT to this process reach every rank (torchrun forwards them):
    each rank stops at the same step, rank 0 saves and says so; this process then exits 128 + the first signal's
    number, a second signal keeping the first one's status."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, idle_cores() // nproc))
    argv = ["--standalone", f"--nproc-per-node={nproc}", "--signals-to-handle=SIGHUP,SIGQUIT",  # TERM/INT: `stop`
            "-m", "netspec.cli", *netspec_args]
    shown = " ".join(a for a in argv if not a.startswith("--signals"))
    say(f"launching: torchrun {shown} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} per process)")
    for name in list(logging.root.manager.loggerDict):  # torchrun's own warnings: the ranks say what happened
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    first = []

    def stop(signum, frame):
        """As torchrun's handler (its agent then sends the signal to every rank and waits for them), once: a second
        signal while the ranks save is ignored, so the status stays the first one's."""
        if not first:
            first.append(signum)
            raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))

    try:
        parser = get_args_parser()
        parser.allow_abbrev = False  # netspec's own options (--run) are no abbreviations of torchrun's (--run-path)
        with _handlers(stop):
            run(parser.parse_args(argv))
    except SignalException as e:
        return 128 + (first[0] if first else int(e.sigval))
    except ChildFailedError as e:
        code = e.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code if code < 0 else 1
    return 0