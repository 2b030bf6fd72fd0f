"""Feedback files: JSONL, one object per line; a file's kind is detected from its fields.

- ranked:   {"prompt", "completions": [str, ...], "rankings": {labeler: [rank | "F", ...]}}
- pairwise: {"prompt", "chosen", "rejected"} with an optional numeric "margin"
- binary:   {"prompt", "completion", "label": 0 | 1}

A prompt is a string or a conversation (a list of {"role", "content"} turns, the last the user's).

`load_feedback` checks every line and raises one `FileError` naming every bad line; `load_pairs`
reads a pairs file (what `prepare` writes, or one made by hand) with the same checks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from rlhf_exp.feedback.prompts import Prompt, check_prompt
from rlhf_exp.files import FileError, check_str, json_objects, open_input, read_jsonl, shown

FLAG = "F"  # a labeler's mark for a nonsensical, confusing or irrelevant completion

KIND_FIELDS = {  # kind -> the fields that identify it
    "ranked": ("prompt", "completions", "rankings"),
    "pairwise": ("prompt", "chosen", "rejected"),
    "binary": ("prompt", "completion", "label"),
}


@dataclass
class RankedSet:
    prompt: Prompt
    completions: list[str]
    rankings: dict[str, list]  # labeler id -> rank of each completion (int >= 1) or FLAG
    set_id: int | None = None  # which comparison set this is (its pairs keep it)
    extra: dict = field(default_factory=dict)  # any other field of the line, kept as it is


@dataclass
class Pair:
    prompt: Prompt
    chosen: str
    rejected: str
    margin: float | None = None     # how much better chosen is; subtracted inside the reward-model loss
    agreement: float | None = None  # share of the trusted labelers who preferred chosen
    set_id: int | None = None       # the comparison set it came from: a set's pairs are one batch element
    extra: dict = field(default_factory=dict)  # any other field of the line (labeler, source, ...)

    def to_json(self) -> dict:
        known = {"margin": self.margin, "agreement": self.agreement, "set_id": self.set_id}
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
                **{k: v for k, v in known.items() if v is not None}, **self.extra}


@dataclass
class Binary:
    prompt: Prompt
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


def is_rank(r, n: int) -> bool:
    """A labeler's mark for one of n completions: an integer rank 1..n, or FLAG."""
    return r == FLAG or (_is_int(r) and 1 <= r <= n)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _optional(obj: dict, key: str, ok, expected: str, problems: list[str]):
    """The value of an optional field, checked: None when absent or null."""
    value = obj.get(key)
    if value is not None and not ok(value):
        problems.append(f"field '{key}': expected {expected}, got {shown(value)}")
    return value


def _parse_ranked(obj: dict, problems: list[str]) -> RankedSet | None:
    prompt = check_prompt(obj, problems)
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
        where = f"field 'rankings.{labeler if len(labeler) <= 60 else labeler[:60] + '...'}"
        if not isinstance(ranks, list):
            problems.append(f"{where}': expected a list of {n} ranks, got {type(ranks).__name__}")
        elif len(ranks) != n:
            problems.append(f"{where}': expected {n} ranks (one per completion), got {len(ranks)}")
        else:
            for i, r in enumerate(ranks):
                if not is_rank(r, n):
                    problems.append(f"{where}[{i}]': expected an integer rank 1..{n} or \"F\", got {shown(r)}")
    set_id = _optional(obj, "set_id", _is_int, "an integer", problems)
    if problems:
        return None
    extra = {k: v for k, v in obj.items() if k not in KIND_FIELDS["ranked"] + ("set_id",)}
    return RankedSet(prompt, list(comps), {str(k): list(v) for k, v in rankings.items()}, set_id, extra)


def parse_pairwise(obj: dict, problems: list[str]) -> Pair | None:
    prompt = check_prompt(obj, problems)
    for key in ("chosen", "rejected"):
        check_str(obj, key, problems)
    margin = _optional(obj, "margin", _is_number, "a number", problems)
    agreement = _optional(obj, "agreement", lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]",
                          problems)
    set_id = _optional(obj, "set_id", _is_int, "an integer", problems)
    if problems:
        return None
    extra = {k: v for k, v in obj.items() if k not in KIND_FIELDS["pairwise"] + ("margin", "agreement", "set_id")}
    return Pair(prompt, obj["chosen"], obj["rejected"], margin, agreement, set_id, extra)


def _parse_binary(obj: dict, problems: list[str]) -> Binary | None:
    prompt = check_prompt(obj, problems)
    check_str(obj, "completion", problems)
    label = obj.get("label")
    if "label" not in obj:
        problems.append("field 'label': missing (expected 0 or 1)")
    elif not (_is_int(label) and label in (0, 1)):
        problems.append(f"field 'label': expected 0 (thumbs down) or 1 (thumbs up), got {shown(label)}")
    if problems:
        return None
    return Binary(prompt, obj["completion"], label)


PARSERS = {"ranked": _parse_ranked, "pairwise": parse_pairwise, "binary": _parse_binary}


def parse_lines(lines: Iterable[str], source: str = "<feedback>") -> Feedback:
    """Parse JSONL text lines; raise FileError listing every bad line (blank lines are skipped)."""
    problems: list[str] = []
    records: list = []
    file_kind = first_line = None
    for lineno, obj in json_objects(lines, problems):
        kind = detect_kind(obj)
        if kind is None:
            problems.append(
                f"line {lineno}: unknown kind of feedback (fields {shown(sorted(obj))}); expected ranked "
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
        raise FileError(source, problems)
    if file_kind is None:
        raise FileError(source, ["no records: the file is empty"])
    return Feedback(file_kind, records)


def load_feedback(path: str | os.PathLike) -> Feedback:
    """A feedback file of any kind, every line checked."""
    with open_input(path) as fh:
        return parse_lines(fh, source=str(path))


def load_ranked(path: str | os.PathLike) -> list[RankedSet]:
    """A ranked feedback file's sets (what `stage=collect` writes, rankings empty or filled), every line
    checked; another kind of feedback is refused."""
    feedback = load_feedback(path)
    if feedback.kind != "ranked":
        raise FileError(str(path), [f"a {feedback.kind} feedback file: expected ranked sets {{prompt, completions, "
                                    "rankings}} (what stage=collect collect=human writes)"])
    return feedback.records


def load_pairs(path: str | os.PathLike) -> list[Pair]:
    """A pairs file ({"prompt", "chosen", "rejected"} per line, optional margin, agreement, set_id),
    every line checked."""
    return read_jsonl(path, parse_pairwise)


def load_thumbs(path: str | os.PathLike) -> list[Binary]:
    """A binary feedback file ({"prompt", "completion", "label": 0 | 1} per line), every line checked."""
    return read_jsonl(path, _parse_binary)


def _parse_heldout(obj: dict, problems: list[str]) -> tuple[Prompt, list[str]]:
    prompt = check_prompt(obj, problems)
    comps = obj.get("completions")
    if not (isinstance(comps, list) and all(isinstance(c, str) for c in comps)):
        problems.append("field 'completions': expected a list of strings")
    return prompt, comps


def _parse_prompt(obj: dict, problems: list[str]) -> Prompt:
    return check_prompt(obj, problems)


def _parse_demonstration(obj: dict, problems: list[str]) -> dict:
    prompt = check_prompt(obj, problems)
    check_str(obj, "completion", problems)
    return {"prompt": prompt, "completion": obj.get("completion")}


def load_prompts(path: str | os.PathLike) -> list[Prompt]:
    """A prompts file ({"prompt"} per line: a string or a conversation), checked."""
    return read_jsonl(path, _parse_prompt)


def load_demonstrations(path: str | os.PathLike) -> list[dict]:
    """A demonstrations file ({"prompt", "completion"} per line), checked: {"prompt", "completion"} rows."""
    return read_jsonl(path, _parse_demonstration)


def load_heldout(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """Held-out completion sets as collect writes them ({"prompt", "completions"} per line), checked."""
    return read_jsonl(path, _parse_heldout)


def ranked_to_json(s: RankedSet) -> dict:
    row = {"prompt": s.prompt, "completions": s.completions, "rankings": s.rankings}
    return {**row, **({"set_id": s.set_id} if s.set_id is not None else {}), **s.extra}


def binary_to_json(b: Binary) -> dict:
    return {"prompt": b.prompt, "completion": b.completion, "label": b.label}
