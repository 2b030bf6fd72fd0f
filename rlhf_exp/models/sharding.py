"""Sharded weights for the on-policy algorithms (`trainer=fsdp2`: Lightning's ModelParallelStrategy,
torch's FSDP2 `fully_shard`). Each on-policy module's `configure_model` calls `shard_models`, which does nothing
under any other strategy, so one process and DDP train exactly as before.

What is sharded over the `data_parallel` mesh: each transformer block of the policy (the classes the
model names in `_no_split_modules`), then the policy as a whole (embeddings, final norm, LM head); the
value head or separate critic; a frozen reference copy (a LoRA policy's reference is the policy
itself, adapters off). Each rank holds 1/world of every weight, gradient and AdamW state; a forward
gathers one block's weights at a time.

Generation on the sharded policy: every rank must run the same number of forwards (each gathers
weights collectively), so `generation.generate` passes `synced_gpus` to Hugging Face's
`generate`, which keeps a rank that reached EOS on every row stepping (without sampling, so its random
stream is untouched) until every rank has. Rollouts sample from the sharded policy itself: a merged
copy (`algorithm.rollout: merged`) would need the whole model on each device, which is what sharding
avoids."""
from __future__ import annotations

import torch
from torch import nn


def is_sharded(model) -> bool:
    """Whether `model` (or a module in it) has been sharded with fully_shard."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, nn.Module) and any(isinstance(m, FSDPModule) for m in model.modules())


def uses_fsdp2(module) -> bool:
    """Whether the LightningModule is being fitted with Lightning's ModelParallelStrategy."""
    from pytorch_lightning.strategies import ModelParallelStrategy
    trainer = getattr(module, "_trainer", None)
    return trainer is not None and isinstance(trainer.strategy, ModelParallelStrategy)


def shard_lm(lm: nn.Module, mesh) -> None:
    """fully_shard each transformer block of a causal LM (a LoRA model's too), then the model itself."""
    from torch.distributed.fsdp import fully_shard
    from rlhf_exp.models.training import is_adapted
    base = lm.get_base_model() if is_adapted(lm) else lm
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no transformer block class (_no_split_modules); "
                         "trainer=fsdp2 cannot shard it block by block")
    for block in blocks:
        fully_shard(block, mesh=mesh)
    # the root resharded after each forward too (torch keeps it gathered by default), so outside a
    # forward every parameter is a DTensor shard (as held-out evaluation's copy of the best weights expects)
    fully_shard(lm, mesh=mesh, reshard_after_forward=True)


@torch.no_grad()
def broadcast_weights(model: nn.Module, device: torch.device) -> None:
    """Every rank's weights and buffers <- rank 0's, as DDP does when it wraps a model: fully_shard
    keeps each rank's own slice, so ranks that made their weights differently (a model initialised
    at random with a seed per rank) would otherwise end up with a mix. One tensor at a time through
    `device` (NCCL broadcasts CUDA tensors only; on CPU no copy is made)."""
    for t in [*model.parameters(), *model.buffers()]:
        on_device = t.data.to(device)
        torch.distributed.broadcast(on_device, src=0)
        if on_device is not t.data:
            t.data.copy_(on_device)


def shard_models(module, lm: nn.Module, others: tuple = ()) -> None:
    """Under trainer=fsdp2, shard the policy `lm` and every nn.Module of `others` (a value head, a
    critic, a frozen reference copy; None and non-modules skipped) over the data-parallel mesh; else
    nothing. Idempotent (Lightning may call configure_model more than once)."""
    if not uses_fsdp2(module) or is_sharded(lm):
        return
    from torch.distributed.fsdp import fully_shard
    mesh = module.device_mesh["data_parallel"]
    for model in (lm, *others):
        if isinstance(model, nn.Module):
            broadcast_weights(model, module.trainer.strategy.root_device)
    shard_lm(lm, mesh)
    for other in others:
        if isinstance(other, nn.Module) and hasattr(other, "config"):  # a causal LM (the reference copy)
            shard_lm(other, mesh)
        elif isinstance(other, nn.Module):
            fully_shard(other, mesh=mesh)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole weights of a sharded model, gathered on CPU (every rank must call this; rank 0 gets
    them, the others an empty dict); None for a model that is not sharded."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
