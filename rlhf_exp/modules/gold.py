"""Proxy and gold along training: in a simulated world, the rollouts an on-policy algorithm scores
with its reward (the proxy: a reward model) are also scored with the world's gold (the synthetic
world's scorer, the real-text world's judge), and `<prefix>/gold/score_mean` is logged beside
`<prefix>/reward/score_mean` each iteration, so over-optimisation shows as it happens: the proxy
still rising while the gold turns down."""
from __future__ import annotations

from statistics import mean

import pytorch_lightning as pl


class WithGold:
    """A reward source that also keeps the world's mean gold score of what it was last asked to score."""

    def __init__(self, reward, gold_scores):
        self.reward, self.gold_scores, self.last_gold = reward, gold_scores, None

    def score(self, prompts: list, completions: list[str]):
        self.last_gold = mean(g.overall for gs in self.gold_scores([(p, [c]) for p, c in zip(prompts, completions)])
                              for g in gs)
        return self.reward.score(prompts, completions)

    def to(self, device):
        if hasattr(self.reward, "to"):
            self.reward.to(device)
        return self


class LogGold(pl.Callback):
    """Logs the gold score of each iteration's rollouts (`WithGold.last_gold`) as `<prefix>/gold/score_mean`."""

    def __init__(self, reward: WithGold, prefix: str):
        self.reward, self.prefix = reward, prefix

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.reward.last_gold is not None:
            pl_module.log(f"{self.prefix}/gold/score_mean", float(self.reward.last_gold), on_step=True, on_epoch=False)
            self.reward.last_gold = None
