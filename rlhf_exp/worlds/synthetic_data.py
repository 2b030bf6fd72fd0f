"""`data=synthetic`: the synthetic world as the `data` group: its prompts and demonstrations, its
completion sets ranked by simulated labelers from the gold scorer."""
from __future__ import annotations

import random
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.feedback.formats import Feedback
from rlhf_exp.feedback.sources import LoadedFeedback
from rlhf_exp.worlds.gold import GoldScore, GoldScorer
from rlhf_exp.worlds.simulated import SimulatedWorld
from rlhf_exp.worlds.synthetic import World


@schema
class SyntheticData(SimulatedWorld):
    """The built-in world: its prompts and demonstrations, ranked by simulated labelers."""
    seed: Annotated[int, Field(ge=0)]
    heldout_fraction: Annotated[float, Field(ge=0, lt=1)]
    n_completions: Annotated[int, Field(ge=2)]   # K: completions per set (the world's sets and collect's)
    sets_per_prompt: Annotated[int, Field(ge=1)]
    n_labelers: Annotated[int, Field(ge=1)]
    labelers_per_set: Annotated[int, Field(ge=1)]
    poor_labelers: Annotated[int, Field(ge=0)]
    poor_mode: Literal["random", "inverted", "mixed"]
    noise: Annotated[float, Field(ge=0)]
    tie_rate: Annotated[float, Field(ge=0, le=1)]
    flag_rate: Annotated[float, Field(ge=0, le=1)]
    thumbs_noise: Annotated[float, Field(ge=0, le=1)]

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        return self._check_labelers()

    def world(self) -> World:
        return World(self.seed, self.heldout_fraction)

    def train_prompts(self) -> list[str]:
        return self.world().train_prompts

    def heldout_prompts(self) -> list[str]:
        return self.world().heldout_prompts

    def sft_rows(self, styles: str, per_prompt: int) -> list[dict]:
        w = self.world()
        return w.demonstrations(per_prompt) if styles == "helpful" else w.style_mix(per_prompt)

    def gold_scores(self, sets: list[tuple[str, list[str]]]) -> list[list[GoldScore]]:
        gold = GoldScorer()
        return [gold.score_batch([str(prompt)] * len(comps), comps) for prompt, comps in sets]  # a conversation: its last user turn

    def eval_measures(self, prompts: list, completions: list[str]) -> dict[str, list[float]]:
        """The gold score and its toxicity part, per response."""
        scores = [g for gs in self.gold_scores([(p, [c]) for p, c in zip(prompts, completions, strict=True)]) for g in gs]
        return {"gold": [g.overall for g in scores], "toxicity": [g.toxicity for g in scores]}

    def heldout_sets(self, seed: int) -> list[tuple[str, list[str]]]:
        """Completion sets of the world's own styles for the held-out prompts (a reward model's gold
        accuracy when no policy has written any)."""
        world, rng = self.world(), random.Random(f"heldout-{seed}")
        return [(p, [c.text for c in world.completion_set(p, 4, rng)]) for p in world.heldout_prompts for _ in range(4)]

    def load(self) -> LoadedFeedback:
        """The world's own completion sets (templates in six styles), ranked."""
        sets = [(p, [c.text for c in comps])
                for p, comps in self.world().completion_sets(self.n_completions, self.sets_per_prompt)]
        return LoadedFeedback(Feedback("ranked", self.rank(sets, "world")), f"synthetic world (seed {self.seed})")
