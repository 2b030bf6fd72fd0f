"""The policy with its value function, and the forward pass PPO needs from a causal LM.

Sequences are a left-padded prompt followed by a response (PAD after its EOS); position ids come
from the attention mask, so padding never shifts positions. Only the positions that predict
response tokens go through the LM head (`logits_to_keep`), and the value at a response token is
read from the same position: the state before the token is chosen.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: (B, L) -> (B, L); padding gets 0."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def response_positions(input_ids: torch.Tensor, n_response: int) -> torch.Tensor:
    """The positions whose next-token logits predict the last `n_response` tokens: (T,)."""
    length = input_ids.shape[1]
    return torch.arange(length - n_response - 1, length - 1, device=input_ids.device)


def response_logits(lm, input_ids, attention_mask, n_response: int, temperature: float,
                    hidden: bool = False):
    """Logits (B, T, V) / temperature that predict the last `n_response` tokens of each row, and,
    if `hidden`, the last hidden state (B, T, H) at the same positions (else None). Only those
    positions go through the LM head."""
    keep = response_positions(input_ids, n_response)
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
             logits_to_keep=keep, output_hidden_states=hidden, use_cache=False)
    logits = out.logits.float()                                            # (B, T, V)
    if temperature != 1.0:
        logits = logits / temperature
    return logits, (out.hidden_states[-1][:, keep] if hidden else None)    # (B, T, H)


def zero_head(hidden_size: int) -> nn.Linear:
    """A one-output linear head that starts at 0 (the value of every state is 0 at first)."""
    head = nn.Linear(hidden_size, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def classification_head(model) -> nn.Linear:
    """A sequence classifier's head: its last linear layer with one output per class."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == model.config.num_labels]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no linear head with {model.config.num_labels} outputs")
    return heads[-1]


class Critic(nn.Module):
    """A separate value network: a transformer backbone and a one-output head on every position."""

    def __init__(self, backbone, head: nn.Linear):
        super().__init__()
        self.backbone, self.head = backbone, head

    @classmethod
    def from_policy(cls, lm) -> "Critic":
        """A copy of the policy's backbone with a zero-initialised head."""
        from rlhf_exp.models.training import is_adapted
        backbone = lm.get_base_model().base_model if is_adapted(lm) else lm.base_model  # LoRA: its own adapters
        return cls(copy.deepcopy(backbone), zero_head(lm.config.hidden_size))

    @classmethod
    def from_reward_model(cls, reward_model) -> "Critic":
        """A copy of the reward model (backbone and head): values start as the reward model's scores."""
        return cls(copy.deepcopy(reward_model.base_model), copy.deepcopy(classification_head(reward_model)))

    def forward(self, input_ids, attention_mask, n_response: int) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
        return self.head(h[:, response_positions(input_ids, n_response)]).squeeze(-1).float()  # (B, T)


class ActorCritic(nn.Module):
    """The policy (a causal LM) and its value function V(s_t): by default a zero-initialised head
    on the policy's own last hidden state, so one forward pass gives both; or a separate `Critic`."""

    def __init__(self, lm, critic: Critic | None = None):
        super().__init__()
        self.lm, self.critic = lm, critic
        self.value_head = zero_head(lm.config.hidden_size) if critic is None else None

    def forward(self, input_ids, attention_mask, n_response: int, temperature: float):
        """(logits (B, T, V) / temperature, values (B, T)) at the positions of the response tokens."""
        shared = self.critic is None
        logits, h = response_logits(self.lm, input_ids, attention_mask, n_response, temperature, hidden=shared)
        if shared:
            values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()
        else:
            values = self.critic(input_ids, attention_mask, n_response)
        return logits, values
