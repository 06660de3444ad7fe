"""Process groups, model wrapping (DDP, FSDP2 `fully_shard`, compile) and collective helpers.

Launch with `torchrun --nproc_per_node N -m slmkit.cli train ...`: WORLD_SIZE/RANK/LOCAL_RANK come
from the environment; backend nccl on CUDA, gloo on CPU. A single process needs no launcher, and
`train.parallel=fsdp` (or ddp) then runs on a one-process group (used by the benchmark).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from slmkit.device import PARALLEL_MODES, resolve_device
from slmkit.errors import SlmError, check_choice


@dataclass
class DistEnv:
    """Where this process sits: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False  # this module created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init_distributed(device_pref: str, parallel: str) -> DistEnv:
    """Join (or create) the process group for `parallel` and pick this rank's device."""
    check_choice(parallel, PARALLEL_MODES, "recipe key 'train.parallel'")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and parallel == "none":
        raise SlmError(
            f"{world} processes were launched but train.parallel is 'none'; set train.parallel=ddp or fsdp"
        )
    device = resolve_device(device_pref, local_rank)
    env = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)
    if parallel == "none" or dist.is_initialized():
        return env
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world > 1:
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    else:  # one process, no launcher: an in-memory store is enough
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    env.initialized_here = True
    return env


def shutdown(env: DistEnv, clean: bool = True) -> None:
    """Destroy the process group if `init_distributed` created it.

    `clean`: every rank got here normally, so first wait for all of them: a rank that tears down
    its gloo connections while a peer still uses them aborts the peer ("terminate called ...")."""
    if env.initialized_here and dist.is_initialized():
        if clean:
            barrier(env)
        dist.destroy_process_group()
        env.initialized_here = False


def barrier(env: DistEnv) -> None:
    if env.distributed and env.world_size > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over ranks (identity in a single process)."""
    if env.distributed and env.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj, env: DistEnv) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not (env.distributed and env.world_size > 1):
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env: DistEnv):
    """Rank 0's `obj` on every rank."""
    if not (env.distributed and env.world_size > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class LossModule(nn.Module):
    """forward(batch) = loss_fn(model, batch) (the objective's loss), so DDP and torch.compile see the
    whole loss as one call."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def parallelize(model: nn.Module, loss_fn: Callable[[nn.Module, dict], torch.Tensor], parallel: str,
                env: DistEnv, compile: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """Wrap `model` (in place for FSDP) and return the module whose forward(batch) is the loss.

    fsdp: every block of `model.layers`, then the model itself, is `fully_shard`-ed (FSDP2);
    `reshard_after_forward=False` keeps parameters unsharded between forward and backward (ZeRO-2).
    compile: blocks (fsdp) or the whole loss (none/ddp) go through torch.compile.
    """
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            if compile:
                layer.compile()
            fully_shard(layer, reshard_after_forward=reshard_after_forward)
        fully_shard(model, reshard_after_forward=reshard_after_forward)
        return LossModule(model, loss_fn)
    step_module = LossModule(model, loss_fn)
    if compile:
        step_module.compile()
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(step_module, device_ids=ids)
    return step_module


@contextlib.contextmanager
def grad_sync(step_module: nn.Module, model: nn.Module, parallel: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if parallel == "ddp" and not sync:
        with step_module.no_sync():
            yield
        return
    if parallel == "fsdp":
        model.set_requires_gradient_sync(sync)
    yield


def clip_grad_norm(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Total gradient L2 norm over all ranks (DTensor-aware); clips when max_norm > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
    if hasattr(total, "full_tensor"):  # FSDP2: a DTensor partial sum -> the global norm
        total = total.full_tensor()
    if max_norm and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach=True)
    return total


def full_model_state_dict(model: nn.Module, parallel: str) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (FSDP: a collective; only rank 0 receives tensors)."""
    if parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """{"model", "optim"} sharded state dicts for torch.distributed.checkpoint (FSDP)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def local_params(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters (tied ones once)."""
    seen, out = set(), []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out

