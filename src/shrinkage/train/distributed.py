"""Training in several processes (``torchrun``): the process group, which rank does what, sharding.

Under ``torchrun --nproc-per-node N -m shrinkage train ...`` every process runs the same
command; torchrun tells each one its place through ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``. This module is the only place that reads them and talks to
``torch.distributed``; with no process group every helper is a no-op, so the training
loop has one code path.

* **Batches.** ``data.batch_size`` is the *global* batch: every rank draws the same
  seeded permutation, cuts the same global batch and keeps its slice (:func:`shard`), so
  a config trains the same model on 1 or N processes (up to float rounding).
* **Replicas.** Every rank starts from rank 0's weights (DDP broadcasts them), DDP
  averages the gradients, and the optimizer step, the proximal step and a budget
  controller are deterministic functions of the weights and the step count: the replicas
  stay identical without further communication. :func:`sync_replicas` checks that once
  per epoch (a digest per tensor) and, should a kernel ever differ between ranks, puts
  rank 0's copy back everywhere.
* **Files.** Rank 0 writes checkpoints, metrics and everything after training; the others
  wait at a barrier (:func:`barrier`), and every rank resumes from the same checkpoint.

The backend follows the device: NCCL for CUDA, gloo otherwise (one GPU per process,
``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from shrinkage.errors import ConfigError, TrainingError
from shrinkage.io.tree import encode

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the variables torchrun sets for every process it starts
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: process-group backend per device type; any other device uses gloo
_BACKENDS = {"cuda": "nccl"}


@dataclass(frozen=True)
class World:
    """This process's place among the training processes.

    ``distributed`` is true when a process group is up (then collectives run, even with
    ``size == 1``); a plain ``python -m shrinkage`` is ``World()``: rank 0 of 1, alone.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0


def launched() -> World:
    """The world torchrun described in the environment (``World()`` when not started by it).

    Nothing is initialized here: :func:`process_group` does that.
    """
    if "WORLD_SIZE" not in os.environ:
        return World()
    values = {}
    for name in ENVIRONMENT:
        text = os.environ.get(name) or ("0" if name == "LOCAL_RANK" else "")
        try:
            values[name] = int(text)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer set by torchrun, got {text!r}") from None
    size, rank = values["WORLD_SIZE"], values["RANK"]
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank}, WORLD_SIZE={size}: the rank must be in [0, WORLD_SIZE)")
    return World(rank, size, values["LOCAL_RANK"])


def current() -> World:
    """The world of the process group this process belongs to (``World()`` without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank = dist.get_rank()
    local = int(os.environ.get("LOCAL_RANK", rank))
    return World(rank, dist.get_world_size(), local, True)


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return current().rank


def world_size() -> int:
    """How many processes train together (1 without a process group)."""
    return current().size


def is_main() -> bool:
    """Whether this process is rank 0 (always, without a process group)."""
    return current().is_main


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA, gloo for everything else."""
    return _BACKENDS.get(device.type, "gloo")


def local_device(device: torch.device, world: World) -> torch.device:
    """The device this rank trains on: one GPU per process (``cuda:LOCAL_RANK``), else ``device``."""
    if world.size == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"device: '{device}' names one GPU, but each of the {world.size} torchrun processes "
                          "uses its own (cuda:LOCAL_RANK); set device: cuda")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(f"device: process with LOCAL_RANK {world.local_rank} has no GPU ({count} visible); "
                          f"start at most {count} processes per node")
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[World]:
    """Join the process group of ``world`` for the duration of the block, then leave it.

    A single process (``world.size == 1``) starts none; a group someone else started (a
    test spawning ranks itself) is used as it is and left up. Yields :func:`current`.
    """
    if world.size == 1 or dist.is_initialized():
        yield current()
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    try:
        dist.init_process_group(backend_for(device), rank=world.rank, world_size=world.size,
                                device_id=device if device.type == "cuda" else None)
    except (RuntimeError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise TrainingError(f"rank {world.rank} of {world.size} cannot join the process group "
                            f"(start it with torchrun): {reason}") from None
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def check_batch_size(batch_size: int, world: World) -> None:
    """``data.batch_size`` is the global batch: every rank must get an equal share of it."""
    if batch_size % world.size:
        raise ConfigError(f"data.batch_size: {batch_size} is the global batch and must divide among the "
                          f"{world.size} processes (use a multiple of {world.size})")


# --- collectives: each is the identity without a process group ----------------------------


def barrier() -> None:
    """Wait until every rank gets here."""
    if current().distributed:
        dist.barrier()


def mean_over_ranks(*values: Tensor) -> list[float]:
    """The mean of each scalar over the ranks (one all-reduce for all of them)."""
    if not current().distributed:
        return [float(v) for v in values]
    stacked = torch.stack([v.detach().reshape(()).float() for v in values])
    dist.all_reduce(stacked)
    return (stacked / dist.get_world_size()).tolist()


def gather_objects(value: T) -> list[T]:
    """``value`` of every rank, in rank order (picklable values only)."""
    world = current()
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank."""
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(work: Callable[[], T]) -> T:
    """``work()`` on rank 0 only; every rank returns its result (the others wait for it)."""
    world = current()
    result = work() if world.is_main else None
    return broadcast_object(result) if world.distributed else result  # type: ignore[return-value]


def same_on_every_rank(value: Any, what: str) -> None:
    """Raise if ranks disagree on ``value`` (e.g. the checkpoint they resume from)."""
    values = gather_objects(value)
    if any(v != values[0] for v in values[1:]):
        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise TrainingError(f"the processes disagree on {what} ({listed}); "
                            "the run directory must be one that every process reads")


# --- data and model ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This rank's part of a global batch.

    ``weight`` scales the rank's mean loss so that DDP's average over ranks of the
    weighted means is the mean over the whole global batch, even when the last global
    batch does not split evenly: ``n_rank * world_size / n_global`` (1 for equal parts).
    """

    images: Tensor
    labels: Tensor
    weight: float


def shard(images: Tensor, labels: Tensor, world: World) -> Shard:
    """Split a global batch into ``world.size`` near-equal contiguous parts; this rank's one.

    A rank left with nothing (a last batch smaller than the world) runs part 0 again with
    weight 0: every rank must take part in each gradient all-reduce.
    """
    if world.size == 1:
        return Shard(images, labels, 1.0)
    total = int(labels.shape[0])
    image_parts, label_parts = images.tensor_split(world.size), labels.tensor_split(world.size)
    mine = int(label_parts[world.rank].shape[0])
    if mine == 0:
        return Shard(image_parts[0], label_parts[0], 0.0)
    return Shard(image_parts[world.rank], label_parts[world.rank], mine * world.size / total)


def wrap(model: nn.Module, world: World) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group is up, else ``model`` itself.

    The wrapper shares the model's parameters (optimizers and the prox act on them as
    before); building it copies rank 0's parameters and buffers to every rank.
    """
    if not world.distributed:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def sync_replicas(model: nn.Module, regularizer: Any | None = None) -> list[str]:
    """Make sure every rank holds rank 0's weights and regularizer state; returns what differed.

    Parameters and the regularizer state (strength scales, budget controller) are compared
    by digest; any that differ anywhere are replaced by rank 0's everywhere (every rank
    gets the same list, so they broadcast the same tensors). Buffers (BatchNorm statistics)
    legitimately differ after the last step of an epoch, each rank having seen its own
    shard; they are always set to rank 0's, which is what DDP does before every forward.
    """
    world = current()
    if not world.distributed:
        return []
    parameters = dict(model.named_parameters())
    digests = {name: _digest({"t": p}) for name, p in parameters.items()}
    if regularizer is not None:
        digests[_REGULARIZER] = _digest(regularizer.state_dict())
    everyone = gather_objects(digests)
    differ = [name for name in digests if any(d[name] != everyone[0][name] for d in everyone[1:])]
    with torch.no_grad():
        for name in differ:
            if name in parameters:
                dist.broadcast(parameters[name].data, src=0)
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    if _REGULARIZER in differ:
        regularizer.load_state_dict(broadcast_object(regularizer.state_dict()))  # type: ignore[union-attr]
    return differ


_REGULARIZER = "regularizer state"


def _digest(tree: Mapping[str, Any]) -> str:
    """SHA-256 of a tree of JSON values and tensors (the bytes of the tensors, not their repr)."""
    tensors: dict[str, Tensor] = {}
    encoded = encode(dict(tree), "t", tensors)
    hasher = hashlib.sha256(json.dumps(encoded, sort_keys=True).encode())
    for key in sorted(tensors):
        tensor = tensors[key]
        hasher.update(f"{key}{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()
