"""Simulated labelers: rank each completion set from the gold score plus noise.

A good labeler ranks by `overall + N(0, noise)`, ties neighbours with probability `tie_rate` and
flags incoherent completions "F" with probability `flag_rate`. A poor labeler misread the
instructions: `random` ranks at random, `inverted` ranks best as worst; neither flags.

With tastes (`data.tastes`), the good labelers are assigned to them in turn, in id order (the i-th
good labeler gets tastes[i mod len(tastes)]); such a labeler ranks by its taste's gold
(`gold.taste_gold`) instead of `overall`. The poor labelers have no taste.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_exp.feedback.formats import FLAG
from rlhf_exp.worlds.gold import GoldScore

NONSENSE_COHERENCE = 0.5  # below this a completion is nonsense to a careful labeler


@dataclass
class SimulatedLabeler:
    id: str
    kind: str  # good | random | inverted
    noise: float
    tie_rate: float
    flag_rate: float
    taste: str | None = None  # a good labeler's taste (data.tastes); None: ranks by `overall`

    def rank(self, scores: list[GoldScore], rng: random.Random, values: list[float] | None = None) -> list:
        """Ranks of the completions with these gold scores; a good labeler ranks by `values` (its
        taste's gold of each completion) when given, else by `overall`."""
        n = len(scores)
        flagged = set()
        if self.kind == "good":
            base = [s.overall for s in scores] if values is None else values
            utility = [v + rng.gauss(0, self.noise) for v in base]
            flagged = {i for i, s in enumerate(scores)
                       if s.coherence < NONSENSE_COHERENCE and rng.random() < self.flag_rate}
        elif self.kind == "inverted":
            utility = [-s.overall + rng.gauss(0, self.noise) for s in scores]
        elif self.kind == "random":
            utility = [rng.random() for _ in scores]
        else:
            raise ValueError(f"unknown labeler kind {self.kind!r}; expected good, random or inverted")
        order = sorted((i for i in range(n) if i not in flagged), key=lambda i: -utility[i])
        ranks: list = [FLAG] * n
        rank = 0
        for pos, i in enumerate(order):
            tie = pos > 0 and self.kind == "good" and rng.random() < self.tie_rate
            rank = rank if tie else rank + 1
            ranks[i] = rank
        return ranks


def make_labelers(n: int, poor: int, poor_mode: str, noise: float, tie_rate: float,
                  flag_rate: float, rng: random.Random, tastes: tuple[str, ...] = ()) -> list[SimulatedLabeler]:
    """n labelers with ids L01..; `poor` of them, at random positions, misread the instructions; the
    good ones take the `tastes` in turn (none without tastes)."""
    poor_at = set(rng.sample(range(n), poor))
    labelers, k = [], 0
    for i in range(n):
        kind = "good"
        if i in poor_at:
            kind = poor_mode if poor_mode != "mixed" else ("random", "inverted")[k % 2]
            k += 1
        labelers.append(SimulatedLabeler(f"L{i + 1:02d}", kind, noise, tie_rate, flag_rate))
    good = [lab for lab in labelers if lab.kind == "good"]
    for i, lab in enumerate(good if tastes else []):
        lab.taste = tastes[i % len(tastes)]
    return labelers
