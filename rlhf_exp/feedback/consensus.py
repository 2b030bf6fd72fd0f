"""From feedback to training pairs: labeler agreement, consensus rankings, rank -> pairs.

Ranks are "smaller = preferred". A flag "F" counts as rank n + 1 (below every ranked completion)
when a labeler's ranking is compared or averaged; a completion flagged by more than `flag_quorum`
of the trusted labelers of its set is removed before pairs are made.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from statistics import mean
from typing import Iterable

from rlhf_exp.feedback.agreement import kendall_tau_b, kendall_w
from rlhf_exp.feedback.formats import FLAG, Binary, Feedback, Pair, RankedSet


def rank_values(ranks: list, n: int) -> list[float]:
    """A labeler's ranks as numbers; "F" becomes n + 1."""
    return [float(n + 1) if r == FLAG else float(r) for r in ranks]


def _mean_ranks(rankings: Iterable[list], n: int) -> list[float]:
    vals = [rank_values(r, n) for r in rankings]
    return [mean(v[i] for v in vals) for i in range(n)]


@dataclass
class LabelerStats:
    id: str
    sets_ranked: int = 0
    sets_compared: int = 0              # sets where tau against the others was defined
    agreement: float | None = None      # mean Kendall tau-b vs the leave-one-out consensus
    set_aside: bool = False
    reason: str = ""


def agreement_series(sets: list[RankedSet]) -> dict[str, list[tuple[int, float | None]]]:
    """For each labeler, in the order of `sets` (the order they were labeled): (set index, Kendall
    tau-b of their ranking against the mean ranking of the set's other labelers), tau None where it
    is undefined (no other labeler, or either ranking all ties)."""
    series: dict[str, list[tuple[int, float | None]]] = {}
    for i, s in enumerate(sets):
        n = len(s.completions)
        for lab, ranks in s.rankings.items():
            others = [r for o, r in s.rankings.items() if o != lab]
            tau = kendall_tau_b(rank_values(ranks, n), _mean_ranks(others, n)) if others else None
            series.setdefault(lab, []).append((i, tau))
    return series


def labeler_agreement(sets: list[RankedSet]) -> dict[str, LabelerStats]:
    """Each labeler's mean Kendall tau-b against the mean ranking of the others, set by set."""
    stats = {}
    for lab, points in agreement_series(sets).items():
        taus = [t for _, t in points if t is not None]
        stats[lab] = LabelerStats(lab, sets_ranked=len(points), sets_compared=len(taus),
                                  agreement=mean(taus) if taus else None)
    return stats


def pairwise_agreement(sets: list[RankedSet]) -> tuple[list[str], list[list[float | None]], list[list[int]]]:
    """Who agrees with whom: (labelers, tau, count), tau[a][b] the mean Kendall tau-b between labelers
    a and b over the sets both ranked (None where no such set gives a defined tau), count[a][b] how
    many sets that mean is over; tau[a][a] is 1 over every set a ranked."""
    labs = sorted({lab for s in sets for lab in s.rankings})
    index = {lab: i for i, lab in enumerate(labs)}
    taus: dict[tuple[int, int], list[float]] = defaultdict(list)
    for s in sets:
        n = len(s.completions)
        values = {index[lab]: rank_values(r, n) for lab, r in s.rankings.items()}
        for a, b in combinations(sorted(values), 2):
            tau = kendall_tau_b(values[a], values[b])
            if tau is not None:
                taus[a, b].append(tau)
                taus[b, a].append(tau)
        for a in values:
            taus[a, a].append(1.0)
    tau = [[mean(taus[a, b]) if taus[a, b] else None for b in range(len(labs))] for a in range(len(labs))]
    count = [[len(taus[a, b]) for b in range(len(labs))] for a in range(len(labs))]
    return labs, tau, count


def overall_agreement(sets: list[RankedSet], labelers: set[str] | None = None) -> float | None:
    """Kendall's W averaged over the sets ranked by at least two of `labelers` (all when None)."""
    ws = []
    for s in sets:
        rs = [rank_values(r, len(s.completions)) for lab, r in s.rankings.items()
              if labelers is None or lab in labelers]
        w = kendall_w(rs)
        if w is not None:
            ws.append(w)
    return mean(ws) if ws else None


def set_aside(stats: dict[str, LabelerStats], min_agreement: float) -> set[str]:
    """Mark labelers below `min_agreement`; return the ids kept. A labeler never compared is kept."""
    kept = set()
    for st in stats.values():
        if st.agreement is None:
            st.reason = "never ranked a set with another labeler; kept"
            kept.add(st.id)
        elif st.agreement < min_agreement:
            st.set_aside = True
            st.reason = f"agreement {st.agreement:.2f} < min_agreement {min_agreement:g}"
        else:
            kept.add(st.id)
    return kept


DROP_REASONS = {  # what `PairsResult.dropped` counts, by key
    "ties": "pairs not made because the completions were tied",
    "flagged": "completions removed: flagged F by most labelers",
    "unlabeled_sets": "sets with no rankings yet",
    "untrusted_sets": "sets ranked only by labelers set aside",
    "one_sided_prompts": "binary prompts without both a thumbs-up and a thumbs-down",
    "identical": "pairs of identical completions",
    "duplicates": "exact duplicate pairs",
}


@dataclass
class PairsResult:
    pairs: list[Pair]
    dropped: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # reason -> count


def _pairs_from_ranks(s: RankedSet, keep: list[int], values: list[float], voters: list[list[float]],
                      extra: dict, out: PairsResult) -> None:
    """N-choose-2 pairs of the kept completions, preferred first; ties yield none."""
    order = sorted(keep, key=lambda i: values[i])
    for a, b in combinations(order, 2):
        if values[a] == values[b]:
            out.dropped["ties"] += 1
            continue
        votes = [1.0 if v[a] < v[b] else 0.5 if v[a] == v[b] else 0.0 for v in voters]
        out.pairs.append(Pair(s.prompt, s.completions[a], s.completions[b], agreement=round(mean(votes), 4),
                              set_id=s.set_id, extra={**s.extra, **extra}))


def ranked_to_pairs(sets: list[RankedSet], trusted: set[str], flag_quorum: float,
                    per_labeler: bool = False, groups: dict[str, str] | None = None) -> PairsResult:
    """Consensus (mean rank of trusted labelers) or per-labeler rankings -> pairs. With `groups`
    (labeler -> group, `prepare.find_groups`): each pair records its labelers' group, and without
    `per_labeler` each group of a set gets its own consensus (mean rank, flags and agreement among
    that group's labelers of the set)."""
    out = PairsResult([])
    for s in sets:
        n = len(s.completions)
        if not s.rankings:
            out.dropped["unlabeled_sets"] += 1
            continue
        ranked = {lab: rank_values(r, n) for lab, r in s.rankings.items() if lab in trusted}
        if not ranked:
            out.dropped["untrusted_sets"] += 1
            continue
        parts: dict = {None: ranked}
        if groups is not None and not per_labeler:  # the set's labelers by group
            parts = {}
            for lab, v in ranked.items():
                parts.setdefault(groups[lab], {})[lab] = v
        for group, part in parts.items():
            flags = [sum(v[i] == n + 1 for v in part.values()) for i in range(n)]
            keep = [i for i in range(n) if flags[i] <= flag_quorum * len(part)]
            out.dropped["flagged"] += n - len(keep)
            voters = list(part.values())
            if per_labeler:
                for lab, v in part.items():
                    extra = {"labeler": lab} if groups is None else {"labeler": lab, "group": groups[lab]}
                    _pairs_from_ranks(s, keep, v, voters, extra, out)
            else:
                _pairs_from_ranks(s, keep, _mean_ranks(part.values(), n), voters,
                                  {} if group is None else {"group": group}, out)
    return out


def binary_to_pairs(records: list[Binary]) -> PairsResult:
    """Every (thumbs-up, thumbs-down) combination of completions of the same prompt."""
    out = PairsResult([])
    by_prompt: dict[str, tuple[list[str], list[str]]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt, ([], []))[0 if r.label == 1 else 1].append(r.completion)
    for prompt, (ups, downs) in by_prompt.items():
        if not ups or not downs:
            out.dropped["one_sided_prompts"] += 1
            continue
        out.pairs += [Pair(prompt, u, d, extra={"source": "binary"}) for u in ups for d in downs]
    return out


def dedupe(result: PairsResult) -> PairsResult:
    """Drop exact duplicates (same prompt, chosen, rejected; and where pairs have a group, the same
    group and labeler: each person keeps their own) and pairs of identical texts."""
    seen, pairs = set(), []
    for p in result.pairs:
        person = (p.extra["group"], p.extra.get("labeler")) if "group" in p.extra else None
        key = (p.prompt, p.chosen, p.rejected, person)
        if p.chosen == p.rejected:
            result.dropped["identical"] += 1
        elif key in seen:
            result.dropped["duplicates"] += 1
        else:
            seen.add(key)
            pairs.append(p)
    result.pairs = pairs
    return result


def set_aside_by_group(stats: dict[str, LabelerStats], groups, min_agreement: float) -> set[str]:
    """With groups found (`persons.find_groups`): a labeler in a group (consistent with others) is kept
    whatever its agreement with everyone's consensus; a labeler alone is kept or set aside as
    `set_aside` does (consistent with nobody). Returns the ids kept."""
    alone = {lab: st for lab, st in stats.items() if lab not in groups.of}
    kept = set_aside(alone, min_agreement)
    for lab, st in alone.items():
        if st.set_aside:
            st.reason += "; in no group: consistent with nobody"
    for lab, g in groups.of.items():
        within = groups.within[g]
        stats[lab].reason = f"in group {g} (agreement within {within:+.2f}): a taste shared with others; kept" \
            if within is not None else f"in group {g}; kept"
        kept.add(lab)
    return kept


@dataclass
class Prepared:
    kind: str
    pairs: list[Pair]
    labelers: dict[str, LabelerStats]
    agreement_all: float | None
    agreement_kept: float | None
    sets: int
    dropped: dict[str, int]
    groups: object = None                 # persons.Groups when prepare.find_groups, else None
    group_of: dict[str, str] | None = None  # kept labeler -> its group (a group of one when alone)


def prepare_pairs(feedback: Feedback, min_agreement: float, flag_quorum: float,
                  pairs_from: str = "consensus", find_groups: bool = False,
                  group_agreement: float = 0.5, group_gap: float = 0.1) -> Prepared:
    """The whole `prepare` transformation of parsed feedback, without any I/O. With `find_groups`,
    labelers are grouped by their pairwise agreement (`persons.find_groups`), a labeler in a group is
    kept (`set_aside_by_group`), pairs record their group, and `pairs_from="group"` makes one
    consensus per group of each set."""
    labelers, w_all, w_kept, groups, group_of = {}, None, None, None, None
    if feedback.kind == "ranked":
        sets = feedback.records
        labelers = labeler_agreement(sets)
        if find_groups:
            from rlhf_exp.feedback.persons import find_groups as cluster, name_singletons
            labs, tau, count = pairwise_agreement(sets)
            groups = cluster(labs, tau, count, group_agreement, group_gap)
            trusted = set_aside_by_group(labelers, groups, min_agreement)
            group_of = name_singletons(groups, trusted)
        else:
            trusted = set_aside(labelers, min_agreement)
        w_all, w_kept = overall_agreement(sets), overall_agreement(sets, trusted)
        result = ranked_to_pairs(sets, trusted, flag_quorum, per_labeler=pairs_from == "labeler",
                                 groups=group_of if pairs_from != "consensus" else None)
    elif feedback.kind == "binary":
        result = binary_to_pairs(feedback.records)
    else:
        result = PairsResult(list(feedback.records))
    result = dedupe(result)
    return Prepared(feedback.kind, result.pairs, labelers, w_all, w_kept, len(feedback.records),
                    dict(result.dropped), groups, group_of)
