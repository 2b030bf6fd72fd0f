"""`stage=prepare`: feedback -> trusted labelers -> consensus rankings -> preference pairs."""
from __future__ import annotations

from typing import Annotated, Literal

import pydantic
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.feedback.consensus import DROP_REASONS, Prepared, prepare_pairs
from rlhf_exp.feedback.formats import Pair, load_feedback, ranked_to_json
from rlhf_exp.feedback.prompts import messages
from rlhf_exp.feedback.report import plot_matrix, plot_over_time
from rlhf_exp.feedback.sources import LoadedFeedback
from rlhf_exp.files import FileError, write_json, write_jsonl, write_parquet
from rlhf_exp.stages.context import StageContext


@schema
class PrepareSettings:
    """`stage=prepare` (conf/prepare/default.yaml gives each its default and meaning)."""
    min_agreement: Annotated[float, Field(ge=-1, le=1)]
    flag_quorum: Annotated[float, Field(ge=0, le=1)]
    pairs_from: Literal["consensus", "labeler", "group"]
    feedback: str | None  # ranked/pairwise/binary file; null = this pipeline's collect output, else `data`
    find_groups: bool     # cluster labelers by agreement (feedback/persons.py): a labeler in a group is kept
    group_agreement: Annotated[float, Field(ge=-1, le=1)]  # mean tau at which two clusters join
    group_gap: Annotated[float, Field(ge=0, le=2)]  # ... unless it is this much below the agreement inside either

    @pydantic.model_validator(mode="after")
    def _groups(self):
        if self.pairs_from == "group" and not self.find_groups:
            raise ValueError("pairs_from = 'group' makes one consensus per group of labelers: expected "
                             "prepare.find_groups=true")
        return self


def pairs_dataset_rows(pairs: list[Pair]) -> list[dict]:
    """Pairs as dataset rows (`data=hf` reads them back): a column holds one type, so when any prompt
    is a conversation every prompt is written as messages (a string prompt as one user turn)."""
    rows = [p.to_json() for p in pairs]
    if not all(isinstance(p.prompt, str) for p in pairs):
        for row, p in zip(rows, pairs):
            row["prompt"] = messages(p.prompt)
    return rows


def labelers_report(p: Prepared, kinds: dict[str, str] | None, min_agreement: float,
                    tastes: dict[str, str] | None = None) -> dict:
    """Per labeler: sets, agreement, set aside and why (and its group, with `find_groups`; its kind and
    taste in a simulated world); Kendall's W; with groups, the agreement within and between them."""
    rows = {}
    for lab in sorted(p.labelers):
        st = p.labelers[lab]
        rows[lab] = {"sets_ranked": st.sets_ranked, "sets_compared": st.sets_compared,
                     "agreement": None if st.agreement is None else round(st.agreement, 4),
                     "set_aside": st.set_aside, "reason": st.reason}
        if kinds and lab in kinds:
            rows[lab]["simulated_kind"] = kinds.get(lab)
        if p.group_of is not None:
            rows[lab]["group"] = p.group_of.get(lab)
        if tastes:
            rows[lab]["simulated_taste"] = tastes.get(lab)
    out = {"min_agreement": min_agreement, "agreement_measure": "mean Kendall tau-b vs leave-one-out consensus",
           "kendall_w_all": p.agreement_all, "kendall_w_kept": p.agreement_kept, "labelers": rows}
    if p.groups is not None:
        out.update(p.groups.to_json())
        if tastes:  # the world's true groups, for checking those found from the labels
            out["groups_match_world"] = groups_match(p.groups.members, tastes)
            for g, m in out["groups"].items():
                m["simulated_tastes"] = sorted({str(tastes.get(lab)) for lab in m["members"]})
    return out


def groups_match(found: dict[str, list[str]], tastes: dict[str, str]) -> bool:
    """Whether the groups found are exactly the world's taste groups."""
    true = {}
    for lab, t in tastes.items():
        true.setdefault(t, set()).add(lab)
    return sorted(map(sorted, found.values())) == sorted(map(sorted, true.values()))


def format_groups(report: dict) -> str:
    """The groups found, their agreement within, and between each two."""
    if "groups" not in report:
        return ""
    f = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    lines = [f"groups (mean Kendall tau at least {report['group_agreement']:g}, and at most "
             f"{report['group_gap']:g} below the agreement within each, to join): "
             f"{len(report['groups'])}" + ("" if report["groups"] else " (no two labelers agree enough)")]
    for g, m in report["groups"].items():
        world = f"  simulated taste: {', '.join(m['simulated_tastes'])}" if "simulated_tastes" in m else ""
        lines.append(f"  {g}: {', '.join(m['members'])}  agreement within {f(m['within'])}{world}")
    for g, row in report["between"].items():
        for h, v in row.items():
            if g < h:
                lines.append(f"  between {g} and {h}: {f(v)}")
    contrary = [g for g, row in report["between"].items() if row and all(v is not None and v < 0 for v in row.values())]
    lines += [f"  warning: {g} agrees negatively with every other group (labelers who misread the "
              "instructions the same way?); it is kept" for g in contrary]
    if "groups_match_world" in report:
        lines.append(f"  the groups found {'are' if report['groups_match_world'] else 'are NOT'} the world's taste groups")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    rows = report["labelers"]
    if not rows:
        return "no labelers (the feedback holds no rankings)"
    sim = any("simulated_kind" in r for r in rows.values())
    grouped = any("group" in r for r in rows.values())
    head = f"{'labeler':<10}{'sets':>6}{'agreement':>11}  {'status':<10}" + (f"  {'group':<6}" if grouped else "") \
        + ("  simulated" if sim else "")
    lines = [head, "-" * len(head)]
    for lab, r in rows.items():
        agr = "n/a" if r["agreement"] is None else f"{r['agreement']:+.3f}"
        status = "SET ASIDE" if r["set_aside"] else "kept"
        taste = f" ({r['simulated_taste']})" if r.get("simulated_taste") else ""
        lines.append(f"{lab:<10}{r['sets_ranked']:>6}{agr:>11}  {status:<10}"
                     + (f"  {r.get('group') or '-':<6}" if grouped else "")
                     + (f"  {r.get('simulated_kind', '')}{taste}" if sim else ""))
    w = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(f"Kendall's W: all labelers {w(report['kendall_w_all'])}, kept {w(report['kendall_w_kept'])}")
    return "\n".join(lines)


def summary_lines(p: Prepared, source: str) -> list[str]:
    aside = [lab for lab, st in p.labelers.items() if st.set_aside]
    lines = [f"source: {source} ({p.kind} feedback, {p.sets} records)",
             f"labelers set aside: {len(aside)} ({', '.join(sorted(aside)) or 'none'})",
             f"pairs written: {len(p.pairs)}"]
    lines += [f"dropped: {n} {DROP_REASONS[k]}" for k, n in sorted(p.dropped.items()) if n]
    return lines


def run(ctx: StageContext) -> None:
    s: PrepareSettings = ctx.built.prepare
    data = ctx.built.data
    path = s.feedback or ctx.outputs.get("feedback")
    loaded = LoadedFeedback(load_feedback(path), str(path)) if path else data.load()
    prepared = prepare_pairs(loaded.feedback, s.min_agreement, s.flag_quorum, s.pairs_from, s.find_groups,
                             s.group_agreement, s.group_gap)
    tastes = data.labeler_groups() if s.find_groups and data.simulated else None
    report = labelers_report(prepared, data.labeler_kinds(), s.min_agreement, tastes)
    print(format_table(report))
    if prepared.groups is not None:
        print(format_groups(report))
    if not prepared.pairs:
        raise FileError(loaded.source, ["no preference pairs could be made; " + "; ".join(
            f"{n} {DROP_REASONS[k]}" for k, n in prepared.dropped.items() if n)])

    out = ctx.run_dir
    out.mkdir(parents=True, exist_ok=True)
    if not path and data.simulated:  # feedback made here by the world: keep it, to re-read as a file
        ctx.save("feedback", write_jsonl(out / "feedback.jsonl", map(ranked_to_json, loaded.feedback.records)))
    ctx.save("labelers", write_json(out / "labelers.json", report))
    if prepared.kind == "ranked" and prepared.labelers:  # the labeler report, as pictures
        aside = {lab for lab, st in prepared.labelers.items() if st.set_aside}
        ctx.save("labelers_over_time", plot_over_time(loaded.feedback.records, out / "labelers_over_time.png", aside))
        ctx.save("labelers_matrix", plot_matrix(loaded.feedback.records, out / "labelers_matrix.png"))
    summary = {"source": loaded.source, "kind": prepared.kind, "records": prepared.sets,
               "pairs": len(prepared.pairs), "dropped": prepared.dropped}
    ctx.save("prepare_summary", write_json(out / "prepare_summary.json", summary))
    ctx.save("pairs", write_jsonl(out / "pairs.jsonl", (p.to_json() for p in prepared.pairs)))
    ctx.save("pairs_dataset", write_parquet(out / "pairs.parquet", pairs_dataset_rows(prepared.pairs)))

    print("\n".join(summary_lines(prepared, loaded.source)))
    aside = sum(st.set_aside for st in prepared.labelers.values())
    metrics = {"prepare/data/records": prepared.sets, "prepare/data/pairs": len(prepared.pairs),
               "prepare/labelers/total": len(prepared.labelers), "prepare/labelers/set_aside": aside,
               "prepare/labelers/kendall_w_all": prepared.agreement_all,
               "prepare/labelers/kendall_w_kept": prepared.agreement_kept}
    metrics.update({f"prepare/dropped/{k}": n for k, n in prepared.dropped.items()})
    if prepared.groups is not None:  # agreement within and between the groups found
        g = prepared.groups
        metrics["prepare/groups/count"] = len(g.members)
        metrics.update({f"prepare/groups/within_{k}": v for k, v in g.within.items() if v is not None})
        metrics.update({f"prepare/groups/between_{k}_{h}": v for k, row in g.between.items()
                        for h, v in row.items() if v is not None and k < h})
        if "groups_match_world" in report:
            metrics["prepare/groups/match_world"] = float(report["groups_match_world"])
    ctx.run.log_metrics(metrics)
