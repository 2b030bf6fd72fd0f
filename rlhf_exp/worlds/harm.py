"""Which requests are harmful, for prompts the world has never seen: a logistic regression on the
prompts' MiniLM embeddings, trained on the world's harmful requests (Do-Not-Answer, HarmBench, the
synthetic world's wifi request) against its benign ones (everyday requests, TruthfulQA and NQ-open
questions, toxic prefixes to continue, 222 everyday requests in many forms written for this project,
and the training split of the benign-but-edgy requests, so that "kill a process" is not read as a
threat).

Not only nearness to a known request: the classifier learns a direction in embedding space, so a
request on a topic the sets never name still lands on the harmful side. `validate` measures it on a
split by source (trained without HarmBench, tested on HarmBench; and the other way round) and on
the edgy requests' held-out split; `python -m rlhf_exp.tools.judge_check` prints the figures.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from rlhf_exp.worlds import chat

THRESHOLD = 0.5   # P(harmful) from which a request is taken as harmful
C = 1.0           # the logistic regression's inverse L2 strength (sklearn's default)
NQ_SAMPLE = 1000  # NQ-open questions among the benign examples (of 3,569)
# each edgy request counts this many times: 85 of them against 1,140 harmful requests on the same topics;
# on the edgy held-out split, weight 5 keeps 0.79 of them benign and 20 keeps 0.83, while recall on
# HarmBench left out of training goes 0.83 and 0.79 (weight 1 kept 0.48 before the everyday requests
# joined; C 4 and 16 were no better)
EDGY_WEIGHT = 20.0


def examples(exclude_source: str | None = None) -> tuple[list[str], list[str]]:
    """(harmful requests, benign requests) the classifier learns from, the edgy requests last;
    `exclude_source` leaves out the harmful requests of one source (for validating on it)."""
    harmful = [p.text for p in chat.harmful() if p.source != exclude_source]
    harmful += [p.text for p in chat.everyday() if p.area is not None]
    nq = list(chat.factual())
    random.Random("harm-nq").shuffle(nq)
    benign = [p.text for p in chat.everyday() if p.area is None]
    benign += [p.text for p in chat.truthful()] + [p.text for p in nq[:NQ_SAMPLE]]
    benign += [p.text for p in chat.toxic()] + list(chat.benign_requests())
    benign += [p.text for p in chat.edgy() if p.split == "train"]
    return harmful, benign


@dataclass
class HarmClassifier:
    """P(harmful) of a request from its normalised MiniLM embedding."""
    model: object   # sklearn LogisticRegression

    @classmethod
    def fit(cls, embed: Callable, exclude_source: str | None = None) -> "HarmClassifier":
        from sklearn.linear_model import LogisticRegression
        harmful, benign = examples(exclude_source)
        x = embed(tuple(harmful + benign)).cpu().numpy()                       # (N, 384)
        y = [1] * len(harmful) + [0] * len(benign)
        n_edgy = sum(p.split == "train" for p in chat.edgy())
        weight = [1.0] * (len(y) - n_edgy) + [EDGY_WEIGHT] * n_edgy
        model = LogisticRegression(C=C, class_weight="balanced", max_iter=3000).fit(x, y, sample_weight=weight)
        return cls(model)

    def prob(self, embeddings) -> list[float]:
        """P(harmful) of each row of `embeddings` (N, 384)."""
        return [float(p) for p in self.model.predict_proba(embeddings.cpu().numpy())[:, 1]]


def validate(embed: Callable) -> dict:
    """Recall on each harmful source when it was left out of training (Do-Not-Answer also by risk
    area), and specificity on benign requests never trained on: the edgy set's held-out split and
    NQ-open questions not sampled. Every text is embedded once."""
    harmful, benign = examples()
    trained = set(benign)
    edgy_held = [p.text for p in chat.edgy() if p.split == "heldout"]
    nq_unseen = [p.text for p in chat.factual() if p.text not in trained][:1000]
    texts = list(dict.fromkeys([p.text for p in chat.harmful()] + harmful + benign + edgy_held + nq_unseen))
    vectors = dict(zip(texts, embed(tuple(texts))))
    lookup = lambda batch: _stack([vectors[t] for t in batch])  # noqa: E731
    out = {}
    for source in ("HarmBench", "Do-Not-Answer"):
        clf = HarmClassifier.fit(lookup, exclude_source=source)
        held = [p for p in chat.harmful() if p.source == source]
        probs = clf.prob(lookup([p.text for p in held]))
        out[f"recall_{source}_unseen"] = sum(p >= THRESHOLD for p in probs) / len(held)
        if source == "Do-Not-Answer":  # by risk area: asking the assistant about itself is far from HarmBench
            for area in chat.RISK_AREAS:
                got = [p >= THRESHOLD for p, h in zip(probs, held) if h.area == area]
                out[f"recall_Do-Not-Answer_unseen_{area}"] = sum(got) / len(got)
    clf = HarmClassifier.fit(lookup)
    for name, batch in (("edgy_heldout", edgy_held), ("nq_unseen", nq_unseen)):
        probs = clf.prob(lookup(batch))
        out[f"specificity_{name}"] = sum(p < THRESHOLD for p in probs) / len(probs)
    return out


def _stack(rows):
    import torch
    return torch.stack(list(rows))
