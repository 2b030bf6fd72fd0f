"""Simulated labelers: rank each completion set from the gold score plus noise.

A good labeler ranks by `overall + N(0, noise)`, ties neighbours with probability `tie_rate` and
flags incoherent completions "F" with probability `flag_rate`. A poor labeler misread the
instructions: `random` ranks at random, `inverted` ranks best as worst; neither flags.
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

    def rank(self, scores: list[GoldScore], rng: random.Random) -> list:
        n = len(scores)
        flagged = set()
        if self.kind == "good":
            utility = [s.overall + rng.gauss(0, self.noise) for s in scores]
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
                  flag_rate: float, rng: random.Random) -> list[SimulatedLabeler]:
    """n labelers with ids L01..; `poor` of them, at random positions, misread the instructions."""
    poor_at = set(rng.sample(range(n), poor))
    labelers, k = [], 0
    for i in range(n):
        kind = "good"
        if i in poor_at:
            kind = poor_mode if poor_mode != "mixed" else ("random", "inverted")[k % 2]
            k += 1
        labelers.append(SimulatedLabeler(f"L{i + 1:02d}", kind, noise, tie_rate, flag_rate))
    return labelers
