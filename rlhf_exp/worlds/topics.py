"""The synthetic world's content, read once from `synthetic.yaml` beside this file.

`TOPICS` is a list of dicts with `name`, `subject`, `prompts`, `keywords`, `helpful`, and `false` /
`harmful` as lists of `(text, markers)`; the other names are style templates and the gold scorer's
lexicons.
"""
from __future__ import annotations

from pathlib import Path

import yaml

_DOC = yaml.safe_load((Path(__file__).with_name("synthetic.yaml")).read_text(encoding="utf-8"))


def _topic(t: dict) -> dict:
    claims = lambda items: [(c["text"], c["markers"]) for c in items]  # noqa: E731
    return {**t, "false": claims(t["false_claims"]), "harmful": claims(t["harmful"])}


TOPICS: list[dict] = [_topic(t) for t in _DOC["topics"]]
COMBATIVE: list[str] = _DOC["combative"]          # "{subject}" is the topic's subject
UNHELPFUL: list[str] = _DOC["unhelpful"]
INSULTS: list[str] = _DOC["insults"]
UNHELPFUL_MARKERS: list[str] = _DOC["unhelpful_markers"]
OVERCONFIDENT: list[str] = _DOC["overconfident"]
DANGER: list[str] = _DOC["danger"]
