"""What every simulated world's data source does with its gold scores: simulated labelers rank
completion sets, thumbs up/down, and the per-response measures `stage=eval` reports.

A world (the synthetic one, `worlds/synthetic_data.py`; the real-text one, `worlds/chat_data.py`)
is a settings schema that mixes this in and supplies `gold_scores(sets)`: one score per completion
with at least `overall` (what good labelers rank by), `coherence` (in [0, 1]; below
`labelers.NONSENSE_COHERENCE` a careful labeler flags it `F`) and `acceptable` (a thumbs up).
"""
from __future__ import annotations

import math
import random

from rlhf_exp.feedback.formats import Binary, RankedSet
from rlhf_exp.worlds.labelers import SimulatedLabeler, make_labelers


class SimulatedWorld:
    """Mixed into a world's settings schema, which declares seed, n_labelers, labelers_per_set,
    poor_labelers, poor_mode, noise, tie_rate, flag_rate and thumbs_noise."""

    simulated = True  # its labelers can rank completions (collect) and their kinds are known

    def _check_labelers(self):
        if self.labelers_per_set > self.n_labelers:
            raise ValueError(f"labelers_per_set = {self.labelers_per_set}: expected at most "
                             f"n_labelers ({self.n_labelers})")
        if self.poor_labelers > self.n_labelers:
            raise ValueError(f"poor_labelers = {self.poor_labelers}: expected at most "
                             f"n_labelers ({self.n_labelers})")
        return self

    def gold_scores(self, sets: list[tuple[str, list[str]]]) -> list[list]:
        """The gold score of every completion of every (prompt, completions) set."""
        raise NotImplementedError

    def eval_measures(self, prompts: list, completions: list[str]) -> dict[str, list[float]]:
        """Per-response measures for `stage=eval` (`eval/<name>/<policy>`); NaN where a measure does
        not apply to a prompt (its mean is over the others)."""
        raise NotImplementedError

    def labelers(self) -> list[SimulatedLabeler]:
        rng = random.Random(f"labelers-{self.seed}")
        return make_labelers(self.n_labelers, self.poor_labelers, self.poor_mode, self.noise,
                             self.tie_rate, self.flag_rate, rng, self.labeler_tastes())

    def labeler_kinds(self) -> dict[str, str]:
        return {lab.id: lab.kind for lab in self.labelers()}

    def labeler_tastes(self) -> tuple[str, ...]:
        """The tastes the good labelers take in turn (labelers.make_labelers); none in a world without."""
        return ()

    def labeler_groups(self) -> dict[str, str]:
        """The world's true taste groups: labeler id -> taste, for the labelers who have one (for
        checking the groups `prepare` finds from the labels)."""
        return {lab.id: lab.taste for lab in self.labelers() if lab.taste}

    def taste_values(self, scores: list, taste: str | None) -> list[float] | None:
        """Each completion's gold for a labeler of `taste` (None: rank by `overall`)."""
        return None

    def rank(self, sets: list[tuple[str, list[str]]], salt: str = "", gold: list[list] | None = None) -> list[RankedSet]:
        """Each (prompt, completions) set ranked by `labelers_per_set` labelers drawn at random,
        from the sets' gold scores (computed here unless the caller has them)."""
        gold = gold or self.gold_scores(sets)
        labelers = self.labelers()
        rng = random.Random(f"ranking-{self.seed}-{salt}")
        out = []
        for i, ((prompt, comps), scores) in enumerate(zip(sets, gold, strict=True)):
            chosen = sorted(rng.sample(labelers, self.labelers_per_set), key=lambda lab: lab.id)
            out.append(RankedSet(prompt, list(comps),
                                 {lab.id: lab.rank(scores, rng, self.taste_values(scores, lab.taste)) for lab in chosen}, i))
        return out

    def thumbs(self, sets: list[tuple[str, list[str]]], gold: list[list] | None = None) -> list[Binary]:
        """A thumbs up (1) or down (0) for every completion of every set: up when its gold score says
        it is acceptable (the world decides: not toxic, not harmful); each label flipped with
        probability `thumbs_noise`."""
        gold = gold or self.gold_scores(sets)
        rng = random.Random(f"thumbs-{self.seed}")
        out = []
        for (prompt, comps), scores in zip(sets, gold, strict=True):
            for text, g in zip(comps, scores, strict=True):
                up = int(g.acceptable)
                out.append(Binary(prompt, text, 1 - up if rng.random() < self.thumbs_noise else up))
        return out


def nanmean(xs) -> float:
    """The mean of the values that are not NaN (NaN when there are none)."""
    kept = [x for x in xs if not math.isnan(x)]
    return sum(kept) / len(kept) if kept else float("nan")
