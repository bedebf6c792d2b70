"""Data-parallel training on torch.distributed: ``torchrun --nproc-per-node N -m mnistlab train MODEL`` or
``mnistlab train MODEL --nproc N`` (the same launch through torch's elastic launcher).

Semantics (what :mod:`mnistlab.training` does with the helpers here):

- Every rank builds the same model from the seed and the same shuffled order from the same generator, so the
  one seeded permutation of each epoch is known everywhere without communication.
- A *global* batch is the configured ``batch_size``. Each rank takes its contiguous share of it
  (shares differ by at most one sample when ``batch_size`` is not divisible by the world
  size, and the last, short batch is split the same way). Each rank scales its mean loss by
  ``n_rank * world / n_global``; DDP then averages the gradients over the ranks, which gives exactly the
  single-process mean gradient of the global batch (the weighted mean of the per-rank means). A rank whose
  share of a short last batch is empty runs one sample with weight 0, so DDP's collectives still match.
  ``batch_size`` must be at least the world size.
- Augmentation draws from one generator that is identical on every rank: each rank augments the whole global
  batch and keeps its share, so the augmented images are those of a single-process run (and the generator's
  state, the same everywhere, is what the checkpoint stores).
- Rank 0 alone claims and writes the run directory, the checkpoints, metrics and the registry row, runs the
  callbacks and scores the validation and test splits (with the one scoring path of :mod:`mnistlab.inference`,
  so the figures are those of a single process; the other ranks wait, which costs little: scoring is a forward
  pass over fewer images than an epoch trains on). Its decision to stop after an epoch is broadcast.
- BatchNorm keeps per-rank statistics (torch's default under DDP; rank 0's running estimates are broadcast with
  the buffers each step, and saved). SyncBatchNorm would reproduce single-process batch statistics but costs two
  collectives per BatchNorm layer per step, which is where CPU data parallelism is already latency-bound, and
  torch does not run it on the CPU at all. Without selective backprop, a rank of a batch-256 run normalises over
  >= 32 images.
- Selective backprop (``backprop_fraction`` < 1): the ranks gather their shares' top probabilities and all pick
  the global batch's least certain rows (:func:`least_certain_share`), each training its own chosen rows. For
  networks without BatchNorm that is exactly one process's choice and gradient. With BatchNorm each rank probes
  with its own running statistics and normalises over its own chosen rows, so the choice and the batch
  statistics can differ slightly from one process's; a rank left with none of the chosen rows trains one row
  with weight 0 and its BatchNorm momentum set to 0, so that row moves neither the weights nor the statistics.
- gloo on the CPU, NCCL on CUDA (rank ``LOCAL_RANK`` takes GPU ``LOCAL_RANK``).

Nothing here imports torch at module level: the API asks :func:`is_replica` before torch is loaded.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mnistlab.errors import MnistlabError

if TYPE_CHECKING:
    import torch
    from torch import nn

Backend = Literal["gloo", "nccl"]

# What torchrun (and the elastic launcher behind --nproc) sets in every rank's environment.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# A peer that stops answering (killed, hung) fails the collectives after this long instead of hanging forever.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def launched() -> bool:
    """Whether this process is one rank of a torchrun launch (its rendezvous variables are set)."""
    return all(name in os.environ for name in _LAUNCH_VARS)


def is_replica() -> bool:
    """A rank other than 0 of a launch: it trains but writes nothing, records nothing and prints nothing."""
    return launched() and os.environ.get("RANK", "0") != "0"


@dataclass(frozen=True)
class Context:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: Backend
    device: str          # the rank's device: collectives' tensors live there (NCCL needs CUDA tensors)
    nnodes: int

    @property
    def primary(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """What the run's files record about the launch."""
        return {"world_size": self.world_size, "backend": self.backend, "nnodes": self.nnodes}


_ACTIVE: Context | None = None


def current() -> Context | None:
    """The process group this process trains in, once :func:`setup` joined it; None in a single process."""
    return _ACTIVE


def setup(device: torch.device) -> torch.device:
    """Join the process group the torchrun environment describes (once per process) and return the rank's
    device: ``cuda:LOCAL_RANK`` on CUDA, else ``device``. Outside a launch: ``device`` unchanged."""
    global _ACTIVE
    if not launched():
        return device
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend: Backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local >= count:
            raise MnistlabError(f"rank {rank}: LOCAL_RANK {local} but this node has {count} GPU(s); start at most "
                                f"{count} processes per node (`nproc`, torchrun --nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    elif dist.get_backend() != backend:
        raise MnistlabError(f"`device` {device.type}: this process already joined a {dist.get_backend()} group; "
                            "train every run of one launch on the same device")
    _ACTIVE = Context(rank=rank, world_size=world, local_rank=local, backend=backend, device=str(device),
                      nnodes=int(os.environ.get("GROUP_WORLD_SIZE", "1")))
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a launched command)."""
    global _ACTIVE
    if _ACTIVE is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _ACTIVE = None


def check_batch(ctx: Context, batch_size: int) -> None:
    """Every rank needs a share of every full batch."""
    if batch_size < ctx.world_size:
        raise MnistlabError(f"`batch_size` {batch_size} is smaller than the world size {ctx.world_size}: every rank "
                            f"needs a share of each batch; use `batch_size` >= {ctx.world_size} or fewer processes")


def wrap(ctx: Context, model: nn.Module) -> nn.Module:
    """``model`` under DistributedDataParallel: its backward averages the gradients over the ranks into
    ``p.grad``, which the optimizers read. (Parameters and buffers are broadcast from rank 0 here.)"""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    return DistributedDataParallel(model, device_ids=device_ids)  # buffers broadcast from rank 0 each step


def shard(ctx: Context, total: int) -> tuple[int, int, float]:
    """This rank's rows ``[start, stop)`` of a global batch of ``total`` samples, and the factor its mean loss is
    scaled by, so that DDP's average of the per-rank gradients is the global batch's mean gradient.

    Shares are contiguous, in rank order, with sizes that differ by at most one (the first ``total % world``
    ranks take one more). A rank with an empty share (a short last batch with fewer samples than ranks) gets
    the batch's first sample with factor 0: it still joins DDP's gradient all-reduce, and contributes nothing.
    """
    sizes = share_sizes(ctx.world_size, total)
    start = sum(sizes[:ctx.rank])
    stop = start + sizes[ctx.rank]
    if stop == start:
        return 0, 1, 0.0
    return start, stop, (stop - start) * ctx.world_size / total


def share_sizes(world_size: int, total: int) -> list[int]:
    """Every rank's share of a global batch of ``total`` samples, in rank order (:func:`shard`'s split)."""
    base, extra = divmod(total, world_size)
    return [base + (1 if rank < extra else 0) for rank in range(world_size)]


def least_certain_share(ctx: Context, top: torch.Tensor, *, total: int, fraction: float,
                        lowest: Callable[[torch.Tensor, float], torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Selective backprop over a global batch of ``total`` rows: this rank's rows of the global choice, and
    the factor its mean loss is scaled by.

    Each rank passes the top probabilities of its own share (:func:`shard`; empty for an empty share). They are
    gathered in rank order, which is the global batch's order, and every rank applies ``lowest`` to the same
    vector, so all ranks agree on the choice that one process would make from the same probabilities. A rank
    whose share holds ``n`` of the ``N`` chosen rows scales its loss by ``world * n / N``, so DDP's average is
    the mean gradient over the chosen rows; a rank with none trains its first row with factor 0 (it must still
    join the gradient all-reduce).
    """
    import torch
    import torch.distributed as dist

    sizes = share_sizes(ctx.world_size, total)
    padded = torch.full((sizes[0],), math.inf, dtype=torch.float32, device=top.device)  # the largest share
    padded[:int(top.shape[0])] = top
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    chosen = lowest(torch.cat([part[:size] for part, size in zip(gathered, sizes, strict=True)]), fraction)
    start = sum(sizes[:ctx.rank])
    mine = chosen[(chosen >= start) & (chosen < start + sizes[ctx.rank])] - start
    if int(mine.shape[0]) == 0:
        return torch.zeros(1, dtype=torch.long, device=top.device), 0.0
    return mine, ctx.world_size * int(mine.shape[0]) / int(chosen.shape[0])


def reduce_means(ctx: Context, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float]:
    """The epoch's (mean loss, accuracy) over every rank's samples, from each rank's sums."""
    import torch
    import torch.distributed as dist

    totals = torch.stack([loss_sum.detach().double(), correct.double(),
                          torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
    dist.all_reduce(totals)
    loss, hits, count = totals.tolist()
    return loss / max(count, 1.0), hits / max(count, 1.0)


def agree(ctx: Context, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (stop after this epoch?)."""
    import torch
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def share(ctx: Context, obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    import torch.distributed as dist

    box: list[Any] = [obj if ctx.primary else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    """Wait until every rank gets here."""
    import torch.distributed as dist

    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.local_rank])
    else:
        dist.barrier()


# --------------------------------------------------------------------------------------------- launching
def _is_nproc_flag(name: str) -> bool:
    """``--nproc`` or an abbreviation of it that argparse accepts (``--npr``; ``train`` has no other ``--n...``
    flag, so argparse maps every such prefix to ``--nproc``)."""
    return len(name) > 2 and "--nproc".startswith(name)


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` (or an abbreviation argparse took for it, such as
    ``--npr 2``): what each rank runs. A rank that kept it would refuse to start ("already one rank")."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif _is_nproc_flag(arg):
            skip = True
        elif not (arg.startswith("--n") and "=" in arg and _is_nproc_flag(arg.split("=", 1)[0])):
            out.append(arg)
    return out


def launch(*, nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m mnistlab ARGV`` as ``nproc`` ranks on this machine through torch's elastic launcher
    (what ``torchrun --standalone --nproc-per-node N`` does) and return the command's exit code: 0, or the
    first failed rank's (its one-line error is already on stderr). SIGTERM/SIGINT/SIGHUP are passed on to the
    ranks, which leave a consistent run, and then give 128 + the signal."""
    import sys

    if launched():
        raise MnistlabError("`nproc`: this process is already one rank of a torchrun launch; leave out --nproc")
    cores = os.cpu_count() or 1
    if not 1 <= nproc <= cores:
        raise MnistlabError(f"`nproc` {nproc}: use 1..{cores} (this machine's CPU cores; one rank per core or GPU)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # torchrun's own default: one thread per rank unless the user chose otherwise (ranks share the cores).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # The launcher's own log repeats a failed rank's exit as a multi-line report; the rank already said why.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"mnistlab-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-m", "mnistlab", *strip_nproc(argv))
    except ChildFailedError as exc:
        _rank, failure = exc.get_first_failure()
        code = failure.exitcode
        return code if code > 0 else 128 - code  # a rank killed by signal S reports -S
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0
