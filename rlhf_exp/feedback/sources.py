"""The `data` group: where feedback comes from (the synthetic world, or a file of real labels)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from rlhf_exp.config import setting, settings
from rlhf_exp.feedback.formats import Feedback, RankedSet, load_feedback
from rlhf_exp.feedback.gold import GoldScorer
from rlhf_exp.feedback.labelers import make_labelers
from rlhf_exp.feedback.world import World


@dataclass
class LoadedFeedback:
    feedback: Feedback
    source: str
    labeler_kinds: dict[str, str] | None = None  # the truth, where the labelers are simulated


@settings
class SyntheticData:
    """The built-in world: completion sets ranked by simulated labelers."""
    seed: int = setting(ge=0)
    heldout_fraction: float = setting(ge=0, lt=1)
    sets_per_prompt: int = setting(ge=1)
    n_completions: int = setting(ge=2)
    n_labelers: int = setting(ge=1)
    labelers_per_set: int = setting(ge=1)
    poor_labelers: int = setting(ge=0)
    poor_mode: str = setting(choices=("random", "inverted", "mixed"))
    noise: float = setting(ge=0)
    tie_rate: float = setting(ge=0, le=1)
    flag_rate: float = setting(ge=0, le=1)

    def __post_init__(self):
        if self.labelers_per_set > self.n_labelers:
            raise ValueError(f"labelers_per_set = {self.labelers_per_set}: expected at most "
                             f"n_labelers ({self.n_labelers})")
        if self.poor_labelers > self.n_labelers:
            raise ValueError(f"poor_labelers = {self.poor_labelers}: expected at most "
                             f"n_labelers ({self.n_labelers})")

    def world(self) -> World:
        return World(self.seed, self.heldout_fraction)

    def load(self) -> LoadedFeedback:
        world, gold = self.world(), GoldScorer()
        rng = random.Random(f"labelers-{self.seed}")
        labelers = make_labelers(self.n_labelers, self.poor_labelers, self.poor_mode, self.noise,
                                 self.tie_rate, self.flag_rate, rng)
        sets = []
        for i, (prompt, comps) in enumerate(world.completion_sets(self.n_completions, self.sets_per_prompt)):
            scores = gold.score_batch([prompt] * len(comps), [c.text for c in comps])
            chosen = rng.sample(labelers, self.labelers_per_set)
            rankings = {lab.id: lab.rank(scores, rng) for lab in sorted(chosen, key=lambda l: l.id)}
            sets.append(RankedSet(prompt, [c.text for c in comps], rankings, {"set_id": i}))
        return LoadedFeedback(Feedback("ranked", sets), f"synthetic world (seed {self.seed})",
                              {lab.id: lab.kind for lab in labelers})


@settings
class FeedbackFile:
    """A JSONL feedback file (ranked, pairwise or binary) written by people or another tool."""
    feedback: str

    def load(self) -> LoadedFeedback:
        return LoadedFeedback(load_feedback(Path(self.feedback)), self.feedback)
