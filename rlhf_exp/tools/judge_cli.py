"""`rlhf-exp-judge`: the judge of real text on your own outputs.

    rlhf-exp-judge IN.jsonl [OUT.jsonl] [--cache-dir DIR] [--batch-size N]

IN.jsonl holds either `{"prompt", "completion"}` rows (each completion is scored) or
`{"prompt", "chosen", "rejected"}` rows (both are scored and the judge says which it prefers); a
prompt is a string or a list of role/content turns. A row may carry a `reference`, a correct answer
(a string), as reference-based judges take: the judge then says whether the answer is truthful;
without one, on a prompt its world does not know, it abstains on truth (`"truth": "abstained: no
reference"` in the row's parts, `truthful` null). Every row comes back with a `judge` field (the
score and its parts), written to OUT.jsonl (atomically) or, without it, to standard output; a summary
goes to standard error. A bad file (every bad line named: a row of the other kind, or of both), an
output path whose directory does not exist, or a --batch-size below 1 is refused before any model
loads (exit 2), nothing written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

from rlhf_exp.config import user_cache_dir
from rlhf_exp.errors import UserError
from rlhf_exp.feedback.prompts import check_prompt
from rlhf_exp.files import check_str, read_jsonl, write_jsonl


def _kind(obj: dict) -> str:
    return "pair" if "chosen" in obj or "rejected" in obj else "completion"


def _row(obj: dict, problems: list[str]) -> dict:
    check_prompt(obj, problems)
    keys = ("chosen", "rejected") if _kind(obj) == "pair" else ("completion",)
    if "completion" in obj and _kind(obj) == "pair":
        problems.append("fields 'completion' and 'chosen'/'rejected' in one row: expected a completion row "
                        "{prompt, completion} or a pair row {prompt, chosen, rejected}")
    for key in keys:
        check_str(obj, key, problems)
    if obj.get("reference") is not None:
        check_str(obj, "reference", problems)
        if isinstance(obj["reference"], str) and not obj["reference"].strip():
            problems.append("field 'reference': empty (expected a correct answer, or no field)")
    return obj


def read_rows(path: str) -> tuple[list[dict], str]:
    """The rows of IN.jsonl and their kind ("completion" or "pair"); every bad line named, and a file
    that mixes both kinds refused."""
    kinds: list[str] = []  # the kind of the first good row: the file's

    def row(obj: dict, problems: list[str]) -> dict:
        _row(obj, problems)
        if not problems and kinds and _kind(obj) != kinds[0]:
            problems.append(f"a {_kind(obj)} row in a file of {kinds[0]} rows (the kind of its first good row; "
                            "expected every row to have 'completion', or every row 'chosen' and 'rejected')")
        elif not problems and not kinds:
            kinds.append(_kind(obj))
        return obj
    rows = read_jsonl(path, row)
    return rows, kinds[0]


def check_output(path: str | None) -> None:
    """Where the judged rows go, checked before any model loads: not a directory, in one that exists."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise UserError(f"{path}: the output is a directory (expected the path of a JSONL file to write); "
                        "nothing was judged")
    if not out.parent.is_dir():
        raise UserError(f"{path}: the output's directory {out.parent} does not exist (resolved to "
                        f"{out.parent.resolve()}; expected an existing one); nothing was judged")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def _scores(score) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4) if isinstance(v, float) else v)
            for k, v in asdict(score).items()}


def judge_rows(judge, rows: list[dict], kind: str) -> tuple[list[dict], str]:
    """Each row with its `judge` field, and a one-line summary."""
    prompts = [str(check_prompt(r, [])) for r in rows]
    refs = [r.get("reference") for r in rows]
    if kind == "completion":
        scores = judge.score_batch(prompts, [r["completion"] for r in rows], refs)
        out = [{**r, "judge": _scores(s)} for r, s in zip(rows, scores)]
        mean = sum(s.overall for s in scores) / len(scores)
        return out, f"{len(rows)} completions judged: mean score {mean:+.3f}"
    chosen = judge.score_batch(prompts, [r["chosen"] for r in rows], refs)
    rejected = judge.score_batch(prompts, [r["rejected"] for r in rows], refs)
    out = []
    for r, c, j in zip(rows, chosen, rejected):
        prefers = "chosen" if c.overall > j.overall else "rejected" if j.overall > c.overall else "tie"
        out.append({**r, "judge": {"prefers": prefers, "chosen": _scores(c), "rejected": _scores(j)}})
    agree = sum(o["judge"]["prefers"] == "chosen" for o in out) / len(out)
    return out, f"{len(rows)} pairs judged: the judge prefers the chosen completion in {agree:.1%}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="rlhf-exp-judge", description=__doc__.split("\n")[0])
    ap.add_argument("input", help="a JSONL file of {prompt, completion} or {prompt, chosen, rejected} rows")
    ap.add_argument("output", nargs="?", help="where to write the judged rows (default: standard output)")
    ap.add_argument("--cache-dir", default=os.path.join(user_cache_dir(), "models"),
                    help="where gemma-3-270m is converted once (default: $RLHF_EXP_CACHE/models, else ~/.cache/rlhf-exp/models)")
    ap.add_argument("--batch-size", type=_positive, default=16, help="answers per forward pass of the fluency LM")
    a = ap.parse_args(argv)
    try:
        rows, kind = read_rows(a.input)
        check_output(a.output)
        from rlhf_exp.worlds.judge import judge
        judged, summary = judge_rows(judge(a.cache_dir, a.batch_size), rows, kind)
    except UserError as e:
        print(f"rlhf-exp-judge: {e}", file=sys.stderr)
        return 2
    if a.output:
        write_jsonl(a.output, judged)
    else:
        for row in judged:
            print(json.dumps(row, ensure_ascii=False))
    print(summary + (f"; written to {a.output}" if a.output else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
