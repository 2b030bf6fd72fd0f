"""What on-policy rollouts sample with (`algorithm.rollout` of PPO, GRPO and RLOO).

- `policy`: the policy itself, through `generate`. A LoRA policy computes x·W + s·(x·A)·B in every
  adapted layer at every decoding step: two more small matmuls per layer and token.
- `merged`: a plain copy of a LoRA policy whose weights are W + s·B·A, refreshed from the policy
  before each rollout (one pass over the adapted layers, no new model), so decoding runs the base
  layers alone. The same network up to float rounding (greedy decoding gives the same tokens); the
  log-probs PPO trains with are still computed by the policy itself, so the invariant (ratio 1, KL 0
  on the first minibatch) holds exactly. Costs a second copy of the weights. For a policy without
  adapters there is nothing to merge: it samples itself.

SmolLM2-135M with LoRA r 16, 8 prompts × 24 tokens on 2 CPU threads: `python -m rlhf_exp.tools.bench
rollout --model smollm2 --lora-r 16` (docs/guides/benchmarks.md)."""
from __future__ import annotations

import copy

import torch

from rlhf_exp.models.sharding import is_sharded
from rlhf_exp.models.training import is_adapted


class MergedSampler:
    """A plain copy of a LoRA policy with its adapters merged in, kept in step with the policy by
    `refresh()`. Not an nn.Module attribute of the LightningModule, so it is in no checkpoint, no
    optimizer and no state dict."""

    def __init__(self, lm):
        import peft
        self.lm = lm
        self.model = copy.deepcopy(lm).merge_and_unload().eval().requires_grad_(False)
        base = lm.get_base_model()
        self.layers = [(self.model.get_submodule(name), layer) for name, layer in base.named_modules()
                       if isinstance(layer, peft.tuners.lora.LoraLayer)]
        others = [n for n, p in lm.named_parameters() if p.requires_grad and "lora_" not in n]
        if others:
            raise ValueError(f"algorithm.rollout = 'merged': the policy trains parameters outside its LoRA "
                             f"adapters ({', '.join(others[:3])}…), which the merged copy would not follow; "
                             f"use algorithm.rollout=policy")

    @torch.no_grad()
    def refresh(self):
        """The merged copy's weights ← the policy's W + Σ s·B·A over its active adapters; returns the copy."""
        device = next(self.lm.parameters()).device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        for target, layer in self.layers:
            merged = target.weight.copy_(layer.get_base_layer().weight)
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    merged.add_(layer.get_delta_weight(adapter))
        return self.model


def rollout_model(lm, rollout: str):
    """A callable returning the model to sample the next rollout with: the policy itself, or its
    merged copy refreshed (`rollout` = 'merged' with a LoRA policy). A sharded policy (trainer=fsdp2)
    samples itself: a merged copy would hold the whole model on each device."""
    if rollout == "merged" and is_adapted(lm) and not is_sharded(lm):
        return MergedSampler(lm).refresh
    if rollout not in ("policy", "merged"):
        raise ValueError(f"algorithm.rollout = {rollout!r}: expected 'policy' or 'merged'")
    return lambda: lm
