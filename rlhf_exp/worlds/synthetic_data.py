"""`data=synthetic`: the synthetic world as the `data` group: its prompts and demonstrations, its
completion sets ranked by simulated labelers from the gold scorer."""
from __future__ import annotations

import random
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.feedback.formats import Feedback
from rlhf_exp.feedback.persons import CONDITION_CHARS, check_condition, conditioned, split_condition
from rlhf_exp.feedback.sources import LoadedFeedback
from rlhf_exp.worlds.gold import TASTES, GoldScore, GoldScorer, taste_gold
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
    # Preferences per person (conf/data/synthetic.yaml). Defaults here, off, unlike the house rule: a
    # world built by hand without them (tests, scripts) is the world it always was.
    tastes: tuple[Literal[tuple(TASTES)], ...] = ()   # the good labelers' tastes, in turn; () = none
    taste_weight: Annotated[float, Field(ge=0)] = 1.0  # w of the taste term (gold.taste_gold)
    taste_length: Annotated[int, Field(ge=1)] = 30     # words at which the taste term is 0
    condition: str | None = None  # the person or group the prompts are for: "[condition] " before each

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.condition is not None and not check_condition(self.condition):
            raise ValueError(f"condition = {self.condition!r}: expected {CONDITION_CHARS} (a group or "
                             "labeler id, e.g. G1)")
        return self._check_labelers()

    def labeler_tastes(self) -> tuple[str, ...]:
        return tuple(self.tastes)

    def taste_values(self, scores: list[GoldScore], taste: str | None) -> list[float] | None:
        """Each completion's gold for a labeler of `taste` (gold.taste_gold); None without one."""
        if taste is None:
            return None
        return [taste_gold(g, taste, self.taste_weight, self.taste_length) for g in scores]

    def world(self) -> World:
        return World(self.seed, self.heldout_fraction)

    def train_prompts(self) -> list[str]:
        return [conditioned(p, self.condition) for p in self.world().train_prompts]

    def heldout_prompts(self) -> list[str]:
        return [conditioned(p, self.condition) for p in self.world().heldout_prompts]

    def sft_rows(self, styles: str, per_prompt: int) -> list[dict]:
        w = self.world()
        return w.demonstrations(per_prompt) if styles == "helpful" else w.style_mix(per_prompt)

    def gold_scores(self, sets: list[tuple[str, list[str]]]) -> list[list[GoldScore]]:
        gold = GoldScorer()
        return [gold.score_batch([split_condition(str(prompt))[1]] * len(comps), comps)  # a conversation: its last
                for prompt, comps in sets]                                                  # user turn; no condition

    def eval_measures(self, prompts: list, completions: list[str]) -> dict[str, list[float]]:
        """The gold score and its toxicity part, per response; with tastes, each taste group's own gold
        too (`gold_<taste>`)."""
        scores = [g for gs in self.gold_scores([(p, [c]) for p, c in zip(prompts, completions, strict=True)]) for g in gs]
        out = {"gold": [g.overall for g in scores], "toxicity": [g.toxicity for g in scores]}
        for taste in dict.fromkeys(self.tastes):
            out[f"gold_{taste}"] = self.taste_values(scores, taste)
        return out

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
