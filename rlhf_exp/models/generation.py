"""How text is shown to the models (a prompt to the policy; a prompt and completion to the reward
model), and the one sampler every stage uses: batched `generate` with the KV cache and a generation
config of its own."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from rlhf_exp.core.ppo import response_mask
from rlhf_exp.feedback.prompts import Conversation, Prompt, messages

PROMPT_TEMPLATE = "{prompt}\n"  # without a chat template: the prompt, a newline, then the answer


def format_prompt(tokenizer, prompt: Prompt) -> str:
    """The one place a prompt becomes text: through the tokenizer's chat template, with the
    assistant's turn opened (`add_generation_prompt`), when the tokenizer has one; else the plain
    `PROMPT_TEMPLATE` (a conversation as its turns, one per line). SFT, collect, the reward model,
    rollouts, DPO, eval and the labeling export all read prompts through here."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages(prompt), tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, Conversation) and len(prompt.turns) > 1:
        return "".join(f"{role}: {content}\n" for role, content in prompt.turns) + "assistant: "
    return PROMPT_TEMPLATE.format(prompt=str(prompt))


def reward_text(tokenizer, prompt: Prompt, completion: str) -> str:
    """What the reward model reads: the prompt as the policy saw it, the completion, then EOS
    (for tokenizers that have one and do not add it; with a chat template, the end of the
    assistant's turn), so a decoder's score sits on EOS."""
    text = format_prompt(tokenizer, prompt) + completion
    eos = tokenizer.eos_token
    return text + eos if eos and eos != tokenizer.sep_token else text


def encode_prompts(tokenizer, prompts: list[Prompt]) -> list[dict]:
    """Each prompt as the policy reads it, tokenized once: {"prompt", "ids"}."""
    return [{"prompt": p, "ids": tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]}
            for p in prompts]


def left_pad_collate(pad_id: int):
    """Encoded prompts -> {"prompts", "input_ids", "attention_mask"}, padded on the left
    (generation appends to the right end of every row)."""
    def collate(rows):
        width = max(len(r["ids"]) for r in rows)
        ids = torch.tensor([[pad_id] * (width - len(r["ids"])) + r["ids"] for r in rows])
        mask = torch.tensor([[0] * (width - len(r["ids"])) + [1] * len(r["ids"]) for r in rows])
        return {"prompts": [r["prompt"] for r in rows], "input_ids": ids, "attention_mask": mask}
    return collate


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
def generate(lm, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, max_new_tokens: int,
             temperature: float, top_p: float = 1.0, n: int = 1) -> Rollout:
    """`n` responses to each left-padded prompt (rows i·n … i·n + n − 1 answer prompt i), sampled
    with the KV cache: plain temperature sampling, no top-k, top-p 1 unless asked; greedy when the
    temperature is 0. The generation config is its own, so nothing a checkpoint's
    generation_config.json sets (a repetition penalty, min-p, …) changes the sampler behind the
    back of the log-probs that PPO computes with logits / temperature. A sharded model (trainer=fsdp2)
    generates with `synced_gpus`: every rank steps until every rank is done (models/sharding.py)."""
    from rlhf_exp.distributed import initialized
    from rlhf_exp.models.sharding import is_sharded
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p) if temperature > 0 \
        else dict(do_sample=False)
    config = GenerationConfig(**sampling, max_new_tokens=max_new_tokens, use_cache=True,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if n > 1:  # as num_return_sequences does, so greedy decoding may repeat a prompt too
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
    out = lm.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                      synced_gpus=is_sharded(lm) and initialized())
    response = out[:, prompt_ids.shape[1]:]                                # (B·n, T)
    mask, has_eos = response_mask(response, tokenizer.eos_token_id)
    kept = torch.where(mask.bool(), response, tokenizer.pad_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(kept, skip_special_tokens=True)]
    return Rollout(out, torch.cat([prompt_mask, mask], dim=1), response, mask, has_eos, texts)


@dataclass
class Samples:
    texts: list[list[str]]    # per prompt, its n completions (stopped at EOS, special tokens removed)
    has_eos: list[list[bool]]  # whether each completion ended with EOS within max_new_tokens
    lengths: list[list[int]]   # tokens generated for each completion, EOS included


def sample(lm, tokenizer, prompts: list[str], n: int, *, temperature: float, top_p: float,
           max_new_tokens: int, batch_size: int) -> Samples:
    """`n` completions of each prompt as text, `batch_size` prompts (× n sequences) per `generate`
    call, dropout off."""
    was_training = lm.training
    lm.eval()
    rows, collate = encode_prompts(tokenizer, prompts), left_pad_collate(tokenizer.pad_token_id)
    texts, eos, lengths = [], [], []
    for start in range(0, len(rows), batch_size):
        b = collate(rows[start:start + batch_size])
        r = generate(lm, tokenizer, b["input_ids"].to(lm.device), b["attention_mask"].to(lm.device),
                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n)
        ended, n_tokens = r.has_eos.tolist(), r.mask.sum(1).tolist()
        for i in range(0, len(r.texts), n):
            texts.append(r.texts[i:i + n])
            eos.append(ended[i:i + n])
            lengths.append(n_tokens[i:i + n])
    lm.train(was_training)
    return Samples(texts, eos, lengths)
