"""The `reward` group: one interface, `score(prompts, completions) -> tensor (B,)`, for every source."""
from __future__ import annotations

from rlhf_exp.config import setting, settings


@settings
class GoldReward:
    """The synthetic world's gold scorer (oracle experiments and evaluation)."""
    component: str = setting(choices=("overall", "helpfulness", "honesty", "harmlessness", "toxicity"))

    def score(self, prompts: list[str], completions: list[str]):
        import torch

        from rlhf_exp.feedback.gold import GoldScorer
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        scores = GoldScorer().score_batch(prompts, completions)
        return torch.tensor([getattr(s, self.component) for s in scores], dtype=torch.float32)  # (B,)
