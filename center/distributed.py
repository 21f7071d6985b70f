"""torch.distributed set-up for the center's tensor-parallel group.

One process per rank, launched by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` in the environment). Two process groups:

- the *compute* group (the default group): NCCL on GPUs, gloo on CPU; carries the all-reduces of
  the row-parallel linears inside every forward pass;
- the *control* group: always gloo on the host; carries the one broadcast per step of the plan
  from rank 0 (pickled Python objects never need a trip through GPU memory).

Both have a timeout on every collective, so a rank that dies or hangs brings the group down with
a :class:`TPGroupError` that names the rank and the timeout, rather than a silent hang.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_COLLECTIVE_TIMEOUT_S = 60.0  # seconds: any collective that takes longer fails the group


class TPGroupError(RuntimeError):
    """The tensor-parallel group is broken (a rank died, hung, or could not be reached)."""


@dataclass(slots=True, frozen=True)
class DistEnv:
    """What torchrun tells each worker about its place in the job."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> DistEnv | None:
        """Read torchrun's variables; None when not launched by torchrun (no RANK/WORLD_SIZE)."""
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            rank = int(env["RANK"])
            world_size = int(env["WORLD_SIZE"])
            local_rank = int(env.get("LOCAL_RANK", env["RANK"]))
        except ValueError as exc:
            raise TPGroupError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers: {exc}") from None
        if world_size < 1 or not 0 <= rank < world_size:
            raise TPGroupError(f"bad torchrun environment: RANK={rank} WORLD_SIZE={world_size}")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)


@dataclass(slots=True)
class TPGroup:
    """This rank's view of the tensor-parallel group.

    ``world_size == 1`` is a valid group with no process group at all: every collective is a
    no-op, so the same code runs TP=1 in a single process.
    """

    rank: int
    world_size: int
    device: torch.device
    timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
    compute_group: Any = None  # dist.ProcessGroup; None = default group
    control_group: Any = None  # gloo dist.ProcessGroup for plan broadcasts

    @property
    def is_driver(self) -> bool:
        """Rank 0 schedules, samples and serves; the others only execute plans."""
        return self.rank == 0

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` across ranks in place (row-parallel linears) and return it."""
        if self.world_size == 1:
            return tensor
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.compute_group)
        except Exception as exc:
            raise self._broken("all_reduce", exc) from exc
        return tensor

    def broadcast_object(self, obj: Any = None) -> Any:
        """One broadcast from rank 0 on the control group; every rank returns rank 0's ``obj``."""
        if self.world_size == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        try:
            dist.broadcast_object_list(box, src=0, group=self.control_group)
        except Exception as exc:
            raise self._broken("broadcast", exc) from exc
        return box[0]

    def all_reduce_min_int(self, value: int) -> int:
        """The smallest ``value`` over all ranks (e.g. the KV blocks every rank can hold)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        try:
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control_group)
        except Exception as exc:
            raise self._broken("all_reduce(min)", exc) from exc
        return int(t.item())

    def _broken(self, what: str, exc: Exception) -> TPGroupError:
        return TPGroupError(
            f"tensor-parallel group broken during {what} on rank {self.rank}/{self.world_size} "
            f"(collective timeout {self.timeout_s:g}s; a peer rank died, hung or is unreachable): "
            f"{type(exc).__name__}: {exc}"
        )


def single_process_group(device: str | torch.device = "cpu") -> TPGroup:
    """TP=1 without torch.distributed."""
    return TPGroup(rank=0, world_size=1, device=torch.device(device))


def init_tp_group(
    env: DistEnv, device: str = "cpu", timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
) -> TPGroup:
    """Join the process group torchrun set up; NCCL for ``cuda`` devices, gloo for ``cpu``.

    Rank ``r`` uses ``cuda:<LOCAL_RANK>`` on GPU hosts. Fails with :class:`TPGroupError` when the
    rendezvous does not complete within ``timeout_s``.
    """
    if timeout_s <= 0:
        raise ValueError("collective timeout must be > 0 seconds")
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TPGroupError("device 'cuda' asked for but no CUDA device is visible")
        torch.cuda.set_device(env.local_rank)
        torch_device = torch.device("cuda", env.local_rank)
        backend = "nccl"
        # Surface NCCL errors and timeouts as exceptions / process teardown rather than hangs.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    elif device == "cpu":
        torch_device = torch.device("cpu")
        backend = "gloo"
    else:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend, rank=env.rank, world_size=env.world_size, timeout=timeout
            )
        control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
    except Exception as exc:
        raise TPGroupError(
            f"could not join the tensor-parallel group as rank {env.rank}/{env.world_size} "
            f"within {timeout_s:g}s: {type(exc).__name__}: {exc}"
        ) from exc
    return TPGroup(
        rank=env.rank,
        world_size=env.world_size,
        device=torch_device,
        timeout_s=timeout_s,
        compute_group=None,
        control_group=control,
    )


def destroy_tp_group(group: TPGroup) -> None:
    """Leave the process group (idempotent; never raises on a broken group)."""
    if group.world_size > 1 and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a broken group cannot always be torn down cleanly; we are exiting
            pass
