"""Feedback files: JSONL, one object per line; a file's kind is detected from its fields.

- ranked:   {"prompt", "completions": [str, ...], "rankings": {labeler: [rank | "F", ...]}}
- pairwise: {"prompt", "chosen", "rejected"} with an optional numeric "margin"
- binary:   {"prompt", "completion", "label": 0 | 1}

`load_feedback` checks every line and raises one `FeedbackError` naming every bad line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from rlhf_exp.errors import UserError

FLAG = "F"  # a labeler's mark for a nonsensical, confusing or irrelevant completion

KIND_FIELDS = {  # kind -> the fields that identify it
    "ranked": ("prompt", "completions", "rankings"),
    "pairwise": ("prompt", "chosen", "rejected"),
    "binary": ("prompt", "completion", "label"),
}


class FeedbackError(UserError):
    """Bad feedback input; `problems` holds one line per bad record."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        shown = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} bad line(s); nothing was written\n{shown}")


@dataclass
class RankedSet:
    prompt: str
    completions: list[str]
    rankings: dict[str, list]  # labeler id -> rank of each completion (int >= 1) or FLAG
    extra: dict = field(default_factory=dict)


@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    extra: dict = field(default_factory=dict)  # margin, agreement, source, ...

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.extra}


@dataclass
class Binary:
    prompt: str
    completion: str
    label: int


@dataclass
class Feedback:
    kind: str
    records: list  # RankedSet | Pair | Binary, all of `kind`


def detect_kind(obj: dict) -> str | None:
    """The kind whose identifying fields overlap the object's most (None when none do)."""
    scores = {kind: sum(f in obj for f in fields if f != "prompt") for kind, fields in KIND_FIELDS.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] else None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_str(obj, key, problems):
    if key not in obj:
        problems.append(f"field '{key}': missing (expected a string)")
    elif not isinstance(obj[key], str):
        problems.append(f"field '{key}': expected a string, got {type(obj[key]).__name__}")


def _parse_ranked(obj: dict, problems: list[str]) -> RankedSet | None:
    _check_str(obj, "prompt", problems)
    if "completions" not in obj or "rankings" not in obj:
        missing = [k for k in ("completions", "rankings") if k not in obj]
        problems += [f"field '{k}': missing" for k in missing]
        return None
    comps = obj.get("completions")
    if not isinstance(comps, list) or len(comps) < 2 or not all(isinstance(c, str) for c in comps):
        problems.append("field 'completions': expected a list of at least 2 strings")
        return None
    n = len(comps)
    rankings = obj.get("rankings")
    if not isinstance(rankings, dict):
        problems.append("field 'rankings': expected an object {labeler id: [rank of each completion]}")
        return None
    for labeler, ranks in rankings.items():
        where = f"field 'rankings.{labeler}"
        if not isinstance(ranks, list):
            problems.append(f"{where}': expected a list of {n} ranks, got {type(ranks).__name__}")
        elif len(ranks) != n:
            problems.append(f"{where}': expected {n} ranks (one per completion), got {len(ranks)}")
        else:
            for i, r in enumerate(ranks):
                if not (r == FLAG or (_is_int(r) and 1 <= r <= n)):
                    problems.append(f"{where}[{i}]': expected an integer rank 1..{n} or \"F\", got {r!r}")
    if problems:
        return None
    extra = {k: v for k, v in obj.items() if k not in KIND_FIELDS["ranked"]}
    return RankedSet(obj["prompt"], list(comps), {str(k): list(v) for k, v in rankings.items()}, extra)


def _parse_pairwise(obj: dict, problems: list[str]) -> Pair | None:
    for key in KIND_FIELDS["pairwise"]:
        _check_str(obj, key, problems)
    margin = obj.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        problems.append(f"field 'margin': expected a number, got {margin!r}")
    if problems:
        return None
    extra = {k: v for k, v in obj.items() if k not in KIND_FIELDS["pairwise"]}
    return Pair(obj["prompt"], obj["chosen"], obj["rejected"], extra)


def _parse_binary(obj: dict, problems: list[str]) -> Binary | None:
    _check_str(obj, "prompt", problems)
    _check_str(obj, "completion", problems)
    label = obj.get("label")
    if "label" not in obj:
        problems.append("field 'label': missing (expected 0 or 1)")
    elif not (_is_int(label) and label in (0, 1)):
        problems.append(f"field 'label': expected 0 (thumbs down) or 1 (thumbs up), got {label!r}")
    if problems:
        return None
    return Binary(obj["prompt"], obj["completion"], label)


PARSERS = {"ranked": _parse_ranked, "pairwise": _parse_pairwise, "binary": _parse_binary}


def json_objects(lines: Iterable[str], problems: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each JSON object line; blank lines skipped, bad ones added to `problems`."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"line {lineno}: bad JSON ({err.msg} at column {err.colno})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        yield lineno, obj


def parse_lines(lines: Iterable[str], source: str = "<feedback>") -> Feedback:
    """Parse JSONL text lines; raise FeedbackError listing every bad line (blank lines are skipped)."""
    problems: list[str] = []
    records: list = []
    file_kind = first_line = None
    for lineno, obj in json_objects(lines, problems):
        kind = detect_kind(obj)
        if kind is None:
            problems.append(
                f"line {lineno}: unknown kind of feedback (fields {sorted(obj)}); expected ranked "
                "{prompt, completions, rankings}, pairwise {prompt, chosen, rejected} or binary "
                "{prompt, completion, label}")
            continue
        if file_kind is None:
            file_kind, first_line = kind, lineno
        elif kind != file_kind:
            problems.append(f"line {lineno}: a {kind} record in a {file_kind} file (kind set by "
                            f"line {first_line}); one kind per file")
            continue
        line_problems: list[str] = []
        record = PARSERS[kind](obj, line_problems)
        problems += [f"line {lineno}: {p}" for p in line_problems]
        if record is not None:
            records.append(record)
    if problems:
        raise FeedbackError(source, problems)
    if file_kind is None:
        raise FeedbackError(source, ["no records: the file is empty"])
    return Feedback(file_kind, records)


def load_feedback(path: str | os.PathLike) -> Feedback:
    path = Path(path)
    if not path.is_file():
        raise FeedbackError(str(path), [f"no such file (resolved to {path.resolve()})"])
    with path.open(encoding="utf-8") as fh:
        return parse_lines(fh, source=str(path))


def ranked_to_json(s: RankedSet) -> dict:
    return {"prompt": s.prompt, "completions": s.completions, "rankings": s.rankings, **s.extra}


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write rows atomically: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_records(path: str | os.PathLike, fields: tuple[str, ...]) -> list[dict]:
    """A JSONL file of objects with string `fields` (prompts, demonstrations); every bad line reported."""
    path = Path(path)
    if not path.is_file():
        raise FeedbackError(str(path), [f"no such file (resolved to {path.resolve()})"])
    rows, problems = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, obj in json_objects(fh, problems):
            line_problems: list[str] = []
            for key in fields:
                _check_str(obj, key, line_problems)
            problems += [f"line {lineno}: {p}" for p in line_problems]
            if not line_problems:
                rows.append(obj)
    if problems:
        raise FeedbackError(str(path), problems)
    if not rows:
        raise FeedbackError(str(path), ["no records: the file is empty"])
    return rows
