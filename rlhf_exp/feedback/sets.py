"""Pairs back into the comparison sets they came from (rank -> pairs, `consensus.py`, run backwards): the
groups a reward model or listwise DPO batches by, and a set's ranking from its pairs."""
from __future__ import annotations

from rlhf_exp.feedback.formats import Pair


def comparison_groups(pairs: list[Pair]) -> list[dict]:
    """Pairs grouped by the comparison set they came from (`set_id`, else the prompt):
    {"prompt", "pairs"}. One group is one batch element, so each completion is scored once per
    step and a set's N-choose-2 pairs do not become N-choose-2 separate, correlated updates."""
    groups: dict[tuple, dict] = {}
    for p in pairs:
        groups.setdefault((p.prompt, p.set_id), {"prompt": p.prompt, "pairs": []})["pairs"].append(p)
    return list(groups.values())


def set_ranks(pairs: list[Pair]) -> tuple[list[str], list[int]]:
    """A comparison set back from its pairs: its distinct completions (in order of appearance) and each
    one's rank, 1 + the number of its set's completions preferred to it. Pairs made from one ranking
    give that ranking back, ties included (tied completions form no pair, so neither counts)."""
    completions: list[str] = []
    beaten: dict[str, int] = {}
    for p in pairs:
        for c in (p.chosen, p.rejected):
            if c not in beaten:
                completions.append(c)
                beaten[c] = 0
        beaten[p.rejected] += 1
    return completions, [1 + beaten[c] for c in completions]
