"""Experience: what an update reads of a rollout (old log-probs, advantages; for PPO values and
returns), and the log-probs of a rollout under another model (the reference)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlhf_exp.core.ops import logprobs_from_logits
from rlhf_exp.models.generation import Rollout, encode_prompts, generate, left_pad_collate
from rlhf_exp.models.value import response_logits


@dataclass
class Experience:
    """A rollout with everything an update reads; (B, T) unless noted. PPO fills the value fields;
    the critic-free algorithms leave them None (GRPO keeps the reference log-probs for its KL loss)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor                    # log π_old(token), tempered
    advantages: torch.Tensor                  # per token (whitened when configured)
    values: torch.Tensor | None = None        # V_old
    returns: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None  # log π_ref(token), tempered

    def __getitem__(self, rows) -> "Experience":
        """The rows of a minibatch."""
        return Experience(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[rows]
                             for f in fields(self)})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@torch.no_grad()
def rollout_logprobs(lm, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log-probs of the sampled response tokens under `lm` (e.g. the reference policy), with the
    sampling temperature: (B, T)."""
    logits, _ = response_logits(lm, rollout.input_ids, rollout.attention_mask, rollout.n_response, temperature)
    return logprobs_from_logits(logits, rollout.response)


def sample_rollouts(lm, tokenizer, prompts: list, batch_size: int, max_new_tokens: int, temperature: float):
    """Responses to each prompt (one per row), `batch_size` rows per generate call, as Rollouts."""
    rows, collate = encode_prompts(tokenizer, prompts), left_pad_collate(tokenizer.pad_token_id)
    for i in range(0, len(rows), batch_size):
        b = collate(rows[i:i + batch_size])
        yield generate(lm, tokenizer, b["input_ids"].to(lm.device), b["attention_mask"].to(lm.device),
                       max_new_tokens=max_new_tokens, temperature=temperature)


def sequence_kl(policy, ref, rollout: Rollout, temperature: float) -> list[float]:
    """Σ_t log π(y_t) − log π_ref(y_t) over each of the policy's own responses (EOS included)."""
    diff = rollout_logprobs(policy, rollout, temperature) - rollout_logprobs(ref, rollout, temperature)
    return (diff * rollout.mask).sum(1).tolist()
