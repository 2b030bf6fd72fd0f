"""How text is shown to the models (a prompt to the policy; a prompt and completion to the reward
model), and batched sampling with the KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch

PROMPT_TEMPLATE = "{prompt}\n"  # the policy reads the prompt, then a newline, then writes its answer


def format_prompt(prompt: str) -> str:
    return PROMPT_TEMPLATE.format(prompt=prompt)


def reward_text(tokenizer, prompt: str, completion: str) -> str:
    """What the reward model reads: the prompt as the policy saw it, the completion, then EOS
    (for tokenizers that have one and do not add it), so a decoder's score sits on EOS."""
    text = format_prompt(prompt) + completion
    eos = tokenizer.eos_token
    return text + eos if eos and eos != tokenizer.sep_token else text


@dataclass
class Samples:
    texts: list[list[str]]    # per prompt, its n completions (stopped at EOS, special tokens removed)
    has_eos: list[list[bool]]  # whether each completion ended with EOS within max_new_tokens
    lengths: list[list[int]]   # tokens generated for each completion, EOS included


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], n: int, *, temperature: float, top_p: float,
           max_new_tokens: int, batch_size: int) -> Samples:
    """n completions per prompt; `batch_size` prompts (× n sequences) per `generate` call.

    Sampling is plain: temperature, top-p, no top-k; greedy when temperature is 0.
    """
    was_training = model.training
    model.eval()
    texts, eos, lengths = [], [], []
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
        else dict(do_sample=False)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer([format_prompt(p) for p in chunk], return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False).to(model.device)  # as in training
        out = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                             use_cache=True, **sampling)
        response = out[:, enc["input_ids"].shape[1]:]                      # (B·n, T)
        ended = (response == tokenizer.eos_token_id).any(dim=1).tolist()
        n_tokens = (response != tokenizer.pad_token_id).sum(dim=1).tolist()  # PAD fills rows that ended
        decoded = [t.strip() for t in tokenizer.batch_decode(response, skip_special_tokens=True)]
        for i in range(len(chunk)):
            texts.append(decoded[i * n:(i + 1) * n])
            eos.append(ended[i * n:(i + 1) * n])
            lengths.append(n_tokens[i * n:(i + 1) * n])
    model.train(was_training)
    return Samples(texts, eos, lengths)
