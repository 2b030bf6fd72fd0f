"""The `data` group: prompts, demonstrations and feedback, from the synthetic world or from files."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Literal

import pydantic
from pydantic import Field

from rlhf_exp.config import ConfigError, schema
from rlhf_exp.feedback.formats import (Binary, Feedback, RankedSet, load_demonstrations, load_feedback,
                                       load_prompts)
from rlhf_exp.feedback.gold import GoldScore, GoldScorer
from rlhf_exp.feedback.labelers import SimulatedLabeler, make_labelers
from rlhf_exp.feedback.world import World
from rlhf_exp.feedback.prompts import Prompt


def gold_scores(sets: list[tuple[str, list[str]]]) -> list[list[GoldScore]]:
    """The gold score of every completion of every (prompt, completions) set."""
    gold = GoldScorer()
    return [gold.score_batch([prompt] * len(comps), comps) for prompt, comps in sets]


@dataclass
class LoadedFeedback:
    feedback: Feedback
    source: str


@schema
class SyntheticData:
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

    simulated = True  # its labelers can rank completions (collect) and their kinds are known

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.labelers_per_set > self.n_labelers:
            raise ValueError(f"labelers_per_set = {self.labelers_per_set}: expected at most "
                             f"n_labelers ({self.n_labelers})")
        if self.poor_labelers > self.n_labelers:
            raise ValueError(f"poor_labelers = {self.poor_labelers}: expected at most "
                             f"n_labelers ({self.n_labelers})")
        return self

    def world(self) -> World:
        return World(self.seed, self.heldout_fraction)

    def train_prompts(self) -> list[str]:
        return self.world().train_prompts

    def heldout_prompts(self) -> list[str]:
        return self.world().heldout_prompts

    def sft_rows(self, styles: str, per_prompt: int) -> list[dict]:
        w = self.world()
        return w.demonstrations(per_prompt) if styles == "helpful" else w.style_mix(per_prompt)

    def labelers(self) -> list[SimulatedLabeler]:
        rng = random.Random(f"labelers-{self.seed}")
        return make_labelers(self.n_labelers, self.poor_labelers, self.poor_mode, self.noise,
                             self.tie_rate, self.flag_rate, rng)

    def labeler_kinds(self) -> dict[str, str]:
        return {lab.id: lab.kind for lab in self.labelers()}

    def rank(self, sets: list[tuple[str, list[str]]], salt: str = "",
             gold: list[list[GoldScore]] | None = None) -> list[RankedSet]:
        """Each (prompt, completions) set ranked by `labelers_per_set` labelers drawn at random,
        from the sets' gold scores (computed here unless the caller has them)."""
        gold = gold or gold_scores(sets)
        labelers = self.labelers()
        rng = random.Random(f"ranking-{self.seed}-{salt}")
        out = []
        for i, ((prompt, comps), scores) in enumerate(zip(sets, gold, strict=True)):
            chosen = sorted(rng.sample(labelers, self.labelers_per_set), key=lambda lab: lab.id)
            out.append(RankedSet(prompt, list(comps), {lab.id: lab.rank(scores, rng) for lab in chosen}, i))
        return out

    def thumbs(self, sets: list[tuple[str, list[str]]], gold: list[list[GoldScore]] | None = None) -> list[Binary]:
        """A thumbs up (1) or down (0) for every completion of every set: down for a toxic or harmful
        one (by its gold score), up otherwise; each label flipped with probability `thumbs_noise`."""
        gold = gold or gold_scores(sets)
        rng = random.Random(f"thumbs-{self.seed}")
        out = []
        for (prompt, comps), scores in zip(sets, gold, strict=True):
            for text, g in zip(comps, scores, strict=True):
                up = int(g.toxicity == 0 and g.harmlessness == 1)
                out.append(Binary(prompt, text, 1 - up if rng.random() < self.thumbs_noise else up))
        return out

    def load(self) -> LoadedFeedback:
        """The world's own completion sets (templates in six styles), ranked."""
        sets = [(p, [c.text for c in comps])
                for p, comps in self.world().completion_sets(self.n_completions, self.sets_per_prompt)]
        return LoadedFeedback(Feedback("ranked", self.rank(sets, "world")), f"synthetic world (seed {self.seed})")


@schema
class FeedbackFile:
    """Files written by people or another tool: feedback (ranked, pairwise or binary), and the
    prompts and demonstrations that the sft and collect stages need."""
    feedback: str | None
    prompts: str | None
    heldout: str | None
    demonstrations: str | None
    n_completions: Annotated[int, Field(ge=2)]   # K: completions per prompt that collect writes

    simulated = False

    def _need(self, key: str, stage: str) -> str:
        value = getattr(self, key)
        if not value:
            raise ConfigError(f"data.{key}: no file given; {stage} needs it with data=files "
                              f"(data.{key}=PATH)")
        return value

    def train_prompts(self) -> list[Prompt]:
        return load_prompts(self._need("prompts", "this stage"))

    def heldout_prompts(self) -> list[Prompt]:
        return load_prompts(self.heldout) if self.heldout else []

    def sft_rows(self, styles: str, per_prompt: int) -> list[dict]:
        return load_demonstrations(self._need("demonstrations", "stage=sft"))

    def labeler_kinds(self) -> None:
        return None

    def load(self) -> LoadedFeedback:
        path = self._need("feedback", "stage=prepare")
        return LoadedFeedback(load_feedback(path), path)
