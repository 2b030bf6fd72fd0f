"""The `reward` group: one interface, `score(prompts, completions) -> tensor (B,)`, for every source.

- `LearnedReward`: a reward model trained by `stage=reward_model` (a one-output sequence classifier),
  optionally normalised with the mean and std of its scores on reference completions;
- `ClassifierReward`: any sequence classifier; the reward is the logit (or probability) of one class;
- `GoldReward`: the synthetic world's gold scorer;
- `JudgeReward`: the real-text world's judge.
"""
from __future__ import annotations

from functools import cached_property
from typing import Annotated, Literal

from pydantic import Field

from rlhf_exp.config import ConfigError, schema


def batched_logits(model, tokenizer, texts: list[str], batch_size: int, max_len: int):
    import torch
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True,
                            padding_side="right",  # positions from 0 at the first real token
                            truncation=True, max_length=max_len).to(model.device)
            out.append(model(**enc).logits.float())  # (b, num_labels)
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


class _Loads:
    """A reward source that loads a classifier directory with the `model` group's settings (dtype,
    trust_remote_code); the stage that uses it sets `models` (ctx.reward_source())."""
    models = None  # the `model` group's spec; None: a plain float32 load

    def _load(self, path: str):
        from rlhf_exp.models.factory import HFModel
        spec = self.models.from_dir(path) if self.models is not None else HFModel.plain(path)
        tokenizer = spec.tokenizer()
        return spec.classifier(tokenizer), tokenizer

    def to(self, device):
        """Move the classifier to the policy's device."""
        self.loaded[0].to(device)
        return self


@schema
class LearnedReward(_Loads):
    """A reward model directory (`reward.path`) written by `stage=reward_model`."""
    path: str | None
    normalize: bool            # (r − mean) / std with the stats saved on reference completions
    batch_size: Annotated[int, Field(ge=1)]
    max_len: Annotated[int, Field(ge=8)]

    @cached_property
    def loaded(self):
        """(model, tokenizer), loaded on first use."""
        if not self.path:
            raise ConfigError("reward.path: no reward model given; pass reward.path=DIR "
                              "(a stage=reward_model output)")
        return self._load(self.path)

    def score(self, prompts: list[str], completions: list[str]):
        model, tok = self.loaded
        r = reward_scores(model, tok, prompts, completions, self.batch_size, self.max_len)  # (B,)
        if self.normalize:
            mean, std = getattr(model.config, "reward_mean", None), getattr(model.config, "reward_std", None)
            if mean is None or std is None:
                raise ConfigError(f"reward.normalize: {self.path} has no saved reward_mean/reward_std; "
                                  "set reward.normalize=false")
            r = (r - mean) / max(std, 1e-8)
        return r


def reward_scores(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int,
                  max_len: int):
    """A one-output reward model's scores of (prompt, completion) pairs, as it was trained: (B,)."""
    from rlhf_exp.models.generation import reward_text
    texts = [reward_text(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    return batched_logits(model, tokenizer, texts, batch_size, max_len)[:, 0]


@schema
class ClassifierReward(_Loads):
    """Any Hugging Face sequence classifier: the reward is one class's logit or probability,
    e.g. the "not hate" class of a hate-speech classifier."""
    name_or_path: str | None    # null: this pipeline's reward_model/ (trained with objective=classifier)
    positive_label: str         # the class whose logit is the reward (a key of config.label2id)
    output: Literal["logit", "prob"]
    input: Literal["completion", "prompt_completion"]
    batch_size: Annotated[int, Field(ge=1)]
    max_len: Annotated[int, Field(ge=8)]

    @cached_property
    def loaded(self):
        """(model, tokenizer, index of the positive class), loaded on first use."""
        if not self.name_or_path:
            raise ConfigError("reward.name_or_path: no classifier given; pass reward.name_or_path=DIR, or run "
                              "the pipeline with reward_model.objective=classifier")
        model, tok = self._load(self.name_or_path)
        labels = {str(k): v for k, v in model.config.label2id.items()}
        if self.positive_label not in labels:
            raise ConfigError(f"reward.positive_label = {self.positive_label!r}: expected one of "
                              f"{sorted(labels)} (the classes of {self.name_or_path})")
        return model, tok, labels[self.positive_label]

    def score(self, prompts: list[str], completions: list[str]):
        model, tok, index = self.loaded
        logits = batched_logits(model, tok, classifier_texts(tok, prompts, completions, self.input),
                                 self.batch_size, self.max_len)
        return logits[:, index] if self.output == "logit" else logits.softmax(-1)[:, index]


def classifier_texts(tokenizer, prompts: list, completions: list[str], read: str) -> list[str]:
    """What a classifier reads: each completion alone, or the prompt as the policy saw it, the
    completion and EOS (as the reward model reads it), as `read` says."""
    from rlhf_exp.models.generation import reward_text
    if read == "completion":
        return list(completions)
    return [reward_text(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]


@schema
class GoldReward:
    """The synthetic world's gold scorer (oracle experiments and evaluation)."""
    component: Literal["overall", "helpfulness", "honesty", "harmlessness", "toxicity"]

    def score(self, prompts: list[str], completions: list[str]):
        import torch

        from rlhf_exp.worlds.gold import GoldScorer
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores = GoldScorer().score_batch([str(p) for p in prompts], completions)  # a conversation: its last user turn
        return torch.tensor([getattr(s, self.component) for s in scores], dtype=torch.float32)  # (B,)


@schema
class JudgeReward:
    """The judge of real text (`rlhf_exp/worlds/judge.py`): its overall score is the reward."""
    cache_dir: str
    batch_size: Annotated[int, Field(ge=1)]
    max_answer_tokens: Annotated[int, Field(ge=1)]

    def score(self, prompts: list, completions: list[str]):
        import torch

        from rlhf_exp.worlds.judge import judge
        scores = judge(self.cache_dir, self.batch_size, self.max_answer_tokens).score_batch(list(prompts), completions)
        return torch.tensor([s.overall for s in scores], dtype=torch.float32)  # (B,)
