"""The synthetic world: prompts on many topics, completions in six styles, demonstrations.

Everything is a pure function of the seed, so the life cycle can run and be measured offline.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from rlhf_exp.worlds import topics as T

STYLES = ("helpful", "unhelpful", "combative", "harmful", "dishonest", "nonsense")
# How often each style appears in a completion set, as an instruct model before alignment might.
STYLE_WEIGHTS = {"helpful": 0.3, "unhelpful": 0.14, "combative": 0.14, "harmful": 0.14,
                 "dishonest": 0.14, "nonsense": 0.14}


@dataclass(frozen=True)
class Completion:
    text: str
    style: str


class World:
    """Prompts split into train and held-out; completions in styles; demonstrations for SFT."""

    def __init__(self, seed: int = 0, heldout_fraction: float = 0.2):
        self.seed = seed
        self.topics = T.TOPICS
        prompts = [(p, i) for i, t in enumerate(self.topics) for p in t["prompts"]]
        # Held-out prompts are other phrasings of training topics: at most one per topic, and only
        # from topics with another phrasing left in training (generalisation within the world).
        rng = random.Random(f"split-{seed}")
        candidates = [rng.choice(t["prompts"]) for t in self.topics if len(t["prompts"]) > 1]
        rng.shuffle(candidates)
        heldout = set(candidates[:round(len(prompts) * heldout_fraction)])
        self.heldout_prompts = [p for p, _ in prompts if p in heldout]
        self.train_prompts = [p for p, _ in prompts if p not in heldout]
        self._topic = dict(prompts)

    def topic(self, prompt: str) -> dict:
        return self.topics[self._topic[prompt]]

    def completion(self, prompt: str, style: str, rng: random.Random) -> Completion:
        t = self.topic(prompt)
        helpful = t["helpful"]
        if style == "helpful":
            k = rng.randint(min(2, len(helpful)), len(helpful))
            picked = sorted(rng.sample(range(len(helpful)), k))
            text = " ".join(helpful[i] for i in picked)
        elif style == "dishonest":
            text = rng.choice(t["false"])[0]
            if rng.random() < 0.5:
                text = f"{rng.choice(helpful)} {text}"
        elif style == "harmful":
            text = rng.choice(t["harmful"])[0]
            if rng.random() < 0.5:
                text = f"{text} {rng.choice(helpful)}"
        elif style == "combative":
            text = rng.choice(T.COMBATIVE).format(subject=t["subject"])
        elif style == "unhelpful":
            if rng.random() < 0.5:
                text = rng.choice(T.UNHELPFUL)
            else:  # off-topic: a good answer to another question
                other = rng.choice([o for o in self.topics if o is not t])
                text = rng.choice(other["helpful"])
        elif style == "nonsense":
            source = " ".join(rng.choice(o["helpful"]) for o in rng.sample(self.topics, 2))
            ws = source.rstrip(".").split()
            rng.shuffle(ws)
            text = " ".join(ws[: rng.randint(5, len(ws))])
        else:
            raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
        return Completion(text, style)

    def completion_set(self, prompt: str, k: int, rng: random.Random) -> list[Completion]:
        """K completions of styles drawn from STYLE_WEIGHTS, no two identical."""
        out, seen = [], set()
        styles, weights = zip(*STYLE_WEIGHTS.items())
        for _ in range(20 * k):
            if len(out) == k:
                break
            c = self.completion(prompt, rng.choices(styles, weights)[0], rng)
            if c.text not in seen:
                seen.add(c.text)
                out.append(c)
        return out

    def completion_sets(self, k: int, sets_per_prompt: int) -> list[tuple[str, list[Completion]]]:
        rng = random.Random(f"completions-{self.seed}")
        return [(p, self.completion_set(p, k, rng)) for p in self.train_prompts for _ in range(sets_per_prompt)]

    def style_mix(self, per_prompt: int) -> list[dict]:
        """(prompt, completion) rows in the world's styles but nonsense, as an instruct model's
        training data before alignment: mostly good, with unhelpful, combative, harmful and
        dishonest answers mixed in."""
        rng = random.Random(f"mix-{self.seed}")
        styles = [s for s in STYLE_WEIGHTS if s != "nonsense"]
        weights = [STYLE_WEIGHTS[s] for s in styles]
        return [{"prompt": p, "completion": self.completion(p, rng.choices(styles, weights)[0], rng).text}
                for p in self.train_prompts for _ in range(per_prompt)]

    def demonstrations(self, per_prompt: int = 4) -> list[dict]:
        """(prompt, good completion) pairs of the training prompts, for supervised fine-tuning."""
        rng = random.Random(f"demos-{self.seed}")
        return [{"prompt": p, "completion": self.completion(p, "helpful", rng).text}
                for p in self.train_prompts for _ in range(per_prompt)]



def corpus() -> list[str]:
    """All the world's text: the fluency reference of the gold scorer and the tokenizer's corpus."""
    texts = [p for t in T.TOPICS for p in t["prompts"]]
    texts += [s for t in T.TOPICS for s in t["helpful"]]
    texts += [s for t in T.TOPICS for s, _ in t["false"] + t["harmful"]]
    texts += [c.format(subject=t["subject"]) for c in T.COMBATIVE for t in T.TOPICS]
    return texts + T.UNHELPFUL
