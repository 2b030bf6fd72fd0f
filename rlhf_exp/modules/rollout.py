"""PPO's experience: sample responses with the KV cache, score them, and compute what the update
needs (old log-probs and values, reference log-probs, shaped rewards, advantages, returns)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import GenerationConfig

from rlhf_exp.core.ops import logprobs_from_logits
from rlhf_exp.core.ppo import response_mask
from rlhf_exp.models.value import response_logits


@dataclass
class Rollout:
    """One batch of sampled responses. Tensors are (B, P + T) for whole sequences and (B, T) for
    the response part; `mask` is 1 on response tokens up to and including the first EOS."""
    input_ids: torch.Tensor        # (B, P + T) left-padded prompt, then the response
    attention_mask: torch.Tensor   # (B, P + T) 1 on prompt and response tokens
    response: torch.Tensor         # (B, T)
    mask: torch.Tensor             # (B, T)
    has_eos: torch.Tensor          # (B,) bool
    texts: list[str]               # the responses as text (up to EOS, special tokens removed)

    @property
    def n_response(self) -> int:
        return self.response.shape[1]


@torch.no_grad()
def sample_responses(lm, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *,
                     max_new_tokens: int, temperature: float) -> Rollout:
    """Batched sampling (KV cache) from left-padded prompts: plain temperature sampling, no top-k,
    no top-p, so the log-probs of the update (logits / temperature) are those of the sampler. A
    generation config of its own, so nothing a checkpoint's generation_config.json sets (a
    repetition penalty, min-p, …) changes the sampler behind the update's back."""
    config = GenerationConfig(do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, use_cache=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    out = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    response = out[:, prompt_ids.shape[1]:]                                # (B, T)
    mask, has_eos = response_mask(response, tokenizer.eos_token_id)
    kept = torch.where(mask.bool(), response, tokenizer.pad_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(kept, skip_special_tokens=True)]
    return Rollout(out, torch.cat([prompt_mask, mask], dim=1), response, mask, has_eos, texts)


@dataclass
class Experience:
    """A rollout with everything the PPO update reads; (B, T) unless noted."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor         # log π_old(token), tempered
    values: torch.Tensor           # V_old
    advantages: torch.Tensor       # whitened (when configured)
    returns: torch.Tensor

    def __getitem__(self, rows) -> "Experience":
        """The rows of a minibatch."""
        return Experience(*(getattr(self, f.name)[rows] for f in fields(self)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@torch.no_grad()
def rollout_logprobs(lm, rollout: Rollout, temperature: float) -> torch.Tensor:
    """log-probs of the sampled response tokens under `lm` (e.g. the reference policy), with the
    sampling temperature: (B, T)."""
    logits, _ = response_logits(lm, rollout.input_ids, rollout.attention_mask, rollout.n_response, temperature)
    return logprobs_from_logits(logits, rollout.response)
