"""Preferences per person: groups of labelers found from their labels, and the condition a reward model
or a policy is given (whose preferences to follow).

**Groups** (`prepare.find_groups`): labelers are clustered by their pairwise agreement (the mean
Kendall tau-b of two labelers over the sets both ranked, `consensus.pairwise_agreement`), average
linkage: the two clusters whose mean agreement (over every pair of their labelers who shared a set,
weighted by the number of sets) is highest are merged, while it is at least `group_agreement` and
no more than `group_gap` below the agreement within either cluster (two clusters that agree with
each other clearly less than each agrees within itself have different tastes).
A labeler in a cluster of two or more is *consistent with a group* (a taste of its own, shared with
others) and is kept; a labeler alone is judged as before (set aside when its agreement with the
others' consensus is below `min_agreement`: *consistent with nobody*). Groups are named G1, G2, … in
the order of their first labeler's id; a kept labeler alone is a group of one.

**Conditions**: a prompt for a person or group `c` is `"[c] " + prompt` (for a conversation, its last
user turn is prefixed), the same text for the reward model (`reward_model.condition_on`) and for the
policy (`data.condition`); `split_condition` takes the prefix off again (the gold scorer reads the
prompt without it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from rlhf_exp.feedback.prompts import Conversation, Prompt
from rlhf_exp.feedback.sets import comparison_groups
from rlhf_exp.files import FileError, shown

_CONDITION = re.compile(r"^\[([A-Za-z0-9_.-]+)\] ")
CONDITION_CHARS = "letters, digits, '_', '.' or '-'"
ID_LENGTH = 100  # the longest labeler or group id a reward model keys by (MLflow's metric names take 250 characters)


def check_condition(condition: str) -> bool:
    """Whether `condition` can be a prompt's prefix (and be read back from it)."""
    return bool(_CONDITION.match(f"[{condition}] "))


def conditioned(prompt: Prompt, condition: str | None) -> Prompt:
    """The prompt for the person or group `condition`: "[condition] " before its text (a conversation's
    last user turn); the prompt itself for None."""
    if condition is None:
        return prompt
    if not check_condition(condition):
        raise ValueError(f"condition {condition!r}: expected {CONDITION_CHARS}")
    if isinstance(prompt, Conversation):
        *head, (role, content) = prompt.turns
        return Conversation((*head, (role, f"[{condition}] {content}")))
    return f"[{condition}] {prompt}"


def split_condition(prompt: str) -> tuple[str | None, str]:
    """(the condition, the prompt without it) of a prompt's text; (None, prompt) when it has none."""
    m = _CONDITION.match(prompt)
    return (m.group(1), prompt[m.end():]) if m else (None, prompt)


@dataclass
class Groups:
    """The groups found among the labelers, with their agreement within and between."""
    members: dict[str, list[str]]                  # group name -> labeler ids (groups of two or more)
    of: dict[str, str] = field(default_factory=dict)  # labeler id -> group name (labelers in groups)
    within: dict[str, float | None] = field(default_factory=dict)   # group -> mean tau of its pairs
    between: dict[str, dict[str, float | None]] = field(default_factory=dict)  # group -> group -> mean tau
    threshold: float = 0.0
    gap: float = 0.0

    def to_json(self) -> dict:
        r = lambda v: None if v is None else round(v, 4)  # noqa: E731
        return {"group_agreement": self.threshold, "group_gap": self.gap,
                "groups": {g: {"members": m, "within": r(self.within[g])} for g, m in self.members.items()},
                "between": {g: {h: r(v) for h, v in row.items()} for g, row in self.between.items()}}


def _link(a: list[int], b: list[int], tau, count) -> float | None:
    """Mean tau over every (labeler of a, labeler of b) pair's shared sets; None when they shared none."""
    total = n = 0
    for i in a:
        for j in b:
            if tau[i][j] is not None and count[i][j]:
                total += tau[i][j] * count[i][j]
                n += count[i][j]
    return total / n if n else None


def _within(c: list[int], tau, count) -> float | None:
    """Mean tau over the pairs of a cluster's labelers (None for one labeler, or no shared sets)."""
    pairs = [(i, j) for i in c for j in c if i < j and tau[i][j] is not None and count[i][j]]
    n = sum(count[i][j] for i, j in pairs)
    return sum(tau[i][j] * count[i][j] for i, j in pairs) / n if n else None


def find_groups(labs: list[str], tau, count, threshold: float, gap: float) -> Groups:
    """Average-linkage clusters of labelers whose mean agreement is at least `threshold` and within
    `gap` of the agreement inside each (module docstring); `labs`, `tau`, `count` as
    `consensus.pairwise_agreement` returns them."""
    clusters = [[i] for i in range(len(labs))]
    while True:
        best = None
        for x in range(len(clusters)):
            for y in range(x + 1, len(clusters)):
                link = _link(clusters[x], clusters[y], tau, count)
                inside = [w for w in (_within(clusters[x], tau, count), _within(clusters[y], tau, count)) if w is not None]
                if link is None or link < threshold or any(link < w - gap for w in inside):
                    continue
                if best is None or link > best[0]:
                    best = (link, x, y)
        if best is None:
            break
        _, x, y = best
        clusters[x] = sorted(clusters[x] + clusters.pop(y))
    found = sorted((c for c in clusters if len(c) > 1), key=lambda c: c[0])
    members = {f"G{k + 1}": [labs[i] for i in c] for k, c in enumerate(found)}
    index = dict(zip(members, found))
    groups = Groups(members, {lab: g for g, m in members.items() for lab in m}, threshold=threshold, gap=gap)
    for g, c in index.items():
        groups.within[g] = _within(c, tau, count)
        groups.between[g] = {h: _link(c, d, tau, count) for h, d in index.items() if h != g}
    return groups


def name_singletons(groups: Groups, kept: set[str]) -> dict[str, str]:
    """Every kept labeler's group: its found group, else a group of one named after the found ones
    (G{n+1}, … in id order)."""
    of = {lab: g for lab, g in groups.of.items() if lab in kept}
    k = len(groups.members)
    for lab in sorted(kept - set(groups.of)):
        k += 1
        of[lab] = f"G{k}"
    return of


def check_person_ids(pairs: list, source) -> None:
    """Every pair's `labeler` and `group`, where it has one, is an id of CONDITION_CHARS, at most
    ID_LENGTH of them: the ids key a reward model's comparison groups, its conditions and its metric
    names per person (`reward/val/accuracy_group_G1`). Raises FileError naming `source` and the pairs
    whose id is not."""
    bad = [(i + 1, f, p.extra[f]) for i, p in enumerate(pairs) for f in ("labeler", "group")
           if f in p.extra and not (isinstance(p.extra[f], str) and check_condition(p.extra[f])
                                    and len(p.extra[f]) <= ID_LENGTH)]
    if bad:
        problems = [f"line {i}: field '{f}': expected a labeler or group id of {CONDITION_CHARS} (at most "
                    f"{ID_LENGTH}), got {shown(v)}" for i, f, v in bad[:10]]
        raise FileError(str(source), problems + ([f"... and {len(bad) - 10} more"] if len(bad) > 10 else []))


def condition_pairs(pairs: list, condition_on: str, source) -> list:
    """Pairs for a reward model conditioned on `condition_on` ("labeler" or "group"): each pair's prompt
    with its `labeler` or `group` before it ("[G1] …"), the unconditioned prompt kept in its extra
    `split_prompt`. Raises FileError naming `source` and the pairs without that field."""
    from dataclasses import replace
    missing = [i + 1 for i, p in enumerate(pairs) if not isinstance(p.extra.get(condition_on), str)
               or not check_condition(p.extra[condition_on])]
    if missing:
        how = "prepare.pairs_from=labeler" if condition_on == "labeler" else "prepare.find_groups=true prepare.pairs_from=group"
        problems = [f"line {i}: field '{condition_on}': missing or not {CONDITION_CHARS} (reward_model.condition_on = "
                    f"{condition_on!r}; expected pairs written with {how})" for i in missing[:10]]
        raise FileError(str(source), problems + ([f"... and {len(missing) - 10} more lines"] if len(missing) > 10 else []))
    return [replace(p, prompt=conditioned(p.prompt, p.extra[condition_on]),
                    extra={**p.extra, "split_prompt": p.prompt}) for p in pairs]


def one_persons_pairs(pairs: list, person: str, source) -> list:
    """The pairs of one person: those whose `labeler` or `group` (from `prepare.pairs_from=labeler|group`)
    is `person`; refused, with the persons the file has, when there are none."""
    mine = [p for p in pairs if person in (p.extra.get("labeler"), p.extra.get("group"))]
    if not mine:
        have = {f: sorted({str(p.extra[f]) for p in pairs if f in p.extra}) for f in ("group", "labeler")}
        more = lambda v: f" and {len(v) - 20} more" if len(v) > 20 else ""  # noqa: E731
        found = "; ".join(f"{f}s {', '.join(x[:40] for x in v[:20])}{more(v)}" for f, v in have.items() if v) or \
            "none: no pair has a 'labeler' or 'group' field (write them with prepare.pairs_from=labeler, or " \
            "prepare.find_groups=true prepare.pairs_from=group)"
        raise FileError(str(source), [f"reward_model.person = {person[:100]!r}: no pair is this person's "
                                      f"(expected a labeler or group of the file: {found})"], unit="field")
    return mine


def person_field(pairs: list, condition_on: str) -> str | None:
    """The field that says whose preference a pair is: the condition's; for an unconditioned reward
    model on pairs of groups (`prepare.find_groups`: every pair has a `group`), the `labeler` when
    every pair has one, else the `group`; otherwise None (pairs as they always were)."""
    if condition_on != "none":
        return condition_on
    if not pairs or not all("group" in p.extra for p in pairs):
        return None
    return "labeler" if all("labeler" in p.extra for p in pairs) else "group"


def person_comparison_groups(pairs: list, person: str | None) -> list[dict]:
    """Comparison groups (sets.comparison_groups) kept apart by person: one per (prompt, set,
    person), so a conditioned and an unconditioned reward model take the same steps over the same
    pairs; each carries `split_prompt`, the prompt without its condition, which the train/val split
    uses (both see the same split)."""
    if person is None:
        return comparison_groups(pairs)
    groups: dict[tuple, dict] = {}
    for p in pairs:
        base = p.extra.get("split_prompt", p.prompt)
        g = groups.setdefault((p.prompt, p.set_id, p.extra.get(person)),
                              {"prompt": p.prompt, "split_prompt": base, "pairs": []})
        g["pairs"].append(p)
    return list(groups.values())


def accuracy_by_person(score, pairs: list) -> dict[str, tuple[float, int]]:
    """Held-out accuracy of a reward model per person: {"group_G1": (share of pairs it orders as the
    person did, pairs), "labeler_L01": …} for each `group` and `labeler` the pairs carry, and
    "contested_group_G1" over G1's pairs that another group of the same set ordered the other way
    (where one taste's reward model cannot be right for both). `score(prompts, completions) -> (B,)`
    reads the pairs' prompts as they are (conditioned or not)."""
    if not pairs:
        return {}
    texts = sorted({(p.prompt, c) for p in pairs for c in (p.chosen, p.rejected)}, key=str)
    index = {t: i for i, t in enumerate(texts)}
    values = score([t[0] for t in texts], [t[1] for t in texts]).tolist()
    where = lambda p: (p.set_id, str(p.extra.get("split_prompt", p.prompt)))  # noqa: E731
    preferred: dict[tuple, set] = {}  # (set, prompt, chosen, rejected) -> the groups that preferred so
    for p in pairs:
        if "group" in p.extra:
            preferred.setdefault((*where(p), p.chosen, p.rejected), set()).add(p.extra["group"])
    hits: dict[str, list[bool]] = {}
    for p in pairs:
        right = values[index[(p.prompt, p.chosen)]] > values[index[(p.prompt, p.rejected)]]
        for name in ("group", "labeler"):
            if name in p.extra:
                hits.setdefault(f"{name}_{p.extra[name]}", []).append(right)
        if preferred.get((*where(p), p.rejected, p.chosen), set()) - {p.extra.get("group")}:
            hits.setdefault(f"contested_group_{p.extra['group']}", []).append(right)
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(hits.items())}
