"""`data=hf`: local Hugging Face datasets, read through `datasets` (json/jsonl, parquet or csv files,
a directory of them, or a directory written by `save_to_disk`), with a column mapping in config.

What `data.feedback` holds (`data.format`):
- `preference`: {prompt, chosen, rejected}, each a string or, conversational, a list of messages (the
  prompt's ending with a user turn; chosen's and rejected's one assistant turn) -> pairwise feedback;
  `margin`, `agreement` and `set_id` columns are kept (so `prepare`'s pairs.parquet reads back).
- `hh_rlhf`: {chosen, rejected}, two whole dialogues that share everything up to their last assistant
  turn ("\\n\\nHuman: ... \\n\\nAssistant: ..." text, or message lists) -> pairwise feedback: the shared
  part is the prompt, the two last assistant turns the completions.
- `ratings`: {prompt, completions}, several completions per prompt, each rated on several aspects or
  by several raters (UltraFeedback) -> ranked feedback, each aspect or rater a labeler: higher rating,
  better rank, equal ratings tied; an aspect that did not rate every completion of a set ranks none.
`data.prompts` holds prompts (collect, PPO, GRPO) and `data.demonstrations` {prompt, completion} or a
`messages` conversation ending with the assistant's turn (SFT).

Every bad row is named with its index, its column and what was expected, all at once, before anything
is written (`FileError`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Literal

from rlhf_exp.config import ConfigError, schema
from rlhf_exp.feedback.formats import Feedback, Pair, RankedSet, parse_pairwise
from rlhf_exp.feedback.prompts import Conversation, Prompt, check_prompt
from rlhf_exp.feedback.sources import LoadedFeedback
from rlhf_exp.files import FileError

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}  # file -> datasets builder
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")  # the turn markers of Anthropic's HH-RLHF text
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@schema
class Columns:
    """Our name -> the dataset's column (or, for the keys inside a rated completion, its key)."""
    prompt: str
    chosen: str
    rejected: str
    completion: str
    messages: str
    completions: str
    response: str   # ratings: in a completion object, the key of its text
    ratings: str    # ratings: in a completion object, the key of its {aspect or rater: rating}
    rating: str     # ratings: in a per-aspect object ({"Rating": "4", "Rationale": ...}), the key of the score


def load_rows(path: str, split: str, cache_dir: str | None) -> list[dict]:
    """Every row of a local dataset: a file by its extension, a `save_to_disk` directory, or a
    directory of data files (its `split`)."""
    import datasets
    datasets.disable_progress_bars()
    p = Path(path)
    if not p.exists():
        raise FileError(path, [f"no such file or directory (resolved to {p.resolve()})"], "input")
    if p.is_file() and p.suffix not in BUILDERS:
        raise FileError(path, [f"unknown file type {p.suffix!r}: expected {', '.join(BUILDERS)} or a dataset "
                               "directory"], "input")
    try:
        if p.is_dir() and any((p / f).is_file() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise FileError(path, [f"no split {split!r} (data.split); it has {', '.join(ds)}"], "input")
                ds = ds[split]
        elif p.is_file():  # one file is one split
            ds = datasets.load_dataset(BUILDERS[p.suffix], data_files=str(p), split="train", cache_dir=cache_dir)
        else:
            ds = datasets.load_dataset(str(p), split=split, cache_dir=cache_dir)
    except FileError:
        raise
    except Exception as err:  # the library's own reasons (bad JSON, mixed types in a column, ...), with the file
        raise FileError(path, [f"not readable as a dataset: {type(err).__name__}: {err}"[:500]], "input") from err
    return ds.to_list()


def _show(value) -> str:
    return repr(value)[:120]


def _assistant_text(value, column: str, problems: list[str]) -> str | None:
    """A completion: a string, or a list of one assistant message (the conversational form)."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    problems.append(f"column '{column}': expected a string or a list of one assistant message, got {_show(value)}")
    return None


def _prompt_of(turns: list[tuple[str, str]]) -> Prompt:
    """The turns before a reply: one user turn is a plain prompt, more are a conversation."""
    return turns[0][1] if len(turns) == 1 and turns[0][0] == "user" else Conversation(tuple(turns))


def _turns(value, column: str, problems: list[str]) -> list[tuple[str, str]] | None:
    """A whole dialogue as (role, content) turns: HH-RLHF text, or a list of messages."""
    if isinstance(value, str):
        parts = HH_TURN.split(value)
        if parts[0].strip() or len(parts) < 3:
            problems.append(f"column '{column}': expected a dialogue of \"\\n\\nHuman: ...\" and "
                            f"\"\\n\\nAssistant: ...\" turns, got {_show(value)}")
            return None
        return [(HH_ROLES[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str) for m in value):
        return [(m["role"], m["content"]) for m in value]
    problems.append(f"column '{column}': expected a dialogue (HH-RLHF text or a list of role/content "
                    f"messages), got {_show(value)}")
    return None


def split_dialogues(chosen, rejected, c: Columns, problems: list[str]) -> tuple[Prompt, str, str] | None:
    """Two whole dialogues sharing everything up to their last assistant turn -> (the shared turns as
    the prompt, the chosen and the rejected final assistant turn)."""
    a, b = _turns(chosen, c.chosen, problems), _turns(rejected, c.rejected, problems)
    if a is None or b is None:
        return None
    for turns, col in ((a, c.chosen), (b, c.rejected)):
        if turns[-1][0] != "assistant" or len(turns) < 2 or turns[-2][0] != "user":
            problems.append(f"column '{col}': expected a dialogue ending with a user turn and then the assistant's "
                            f"reply, got turns {[r for r, _ in turns]}")
            return None
    if a[:-1] != b[:-1]:
        problems.append(f"columns '{c.chosen}' and '{c.rejected}': expected the same dialogue up to the last "
                        "assistant turn (they differ before it)")
        return None
    return _prompt_of(a[:-1]), a[-1][1], b[-1][1]


def _score(value, c: Columns) -> float | None:
    """A rating as a number: a number, a numeric string, or an object holding one under `c.rating`;
    None when it was not given ("N/A", null). Raises ValueError for anything else."""
    if isinstance(value, dict):
        value = value.get(c.rating)
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "NA", "")):
        return None
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def competition_ranks(scores: list[float]) -> list[int]:
    """Ranks from ratings, higher rating better: 1 + the number of completions rated higher (equal
    ratings share a rank: 5, 3, 5, 1 -> 1, 3, 1, 4)."""
    return [1 + sum(other > s for other in scores) for s in scores]


def _rated(row: dict, c: Columns, problems: list[str]) -> RankedSet | None:
    prompt = check_prompt(row, problems, c.prompt)
    comps = row.get(c.completions)
    if not (isinstance(comps, list) and len(comps) >= 2 and all(isinstance(x, dict) for x in comps)):
        problems.append(f"column '{c.completions}': expected a list of at least 2 objects "
                        f"{{'{c.response}': text, '{c.ratings}': {{aspect or rater: rating}}}}, got {_show(comps)}")
        return None
    texts, by_aspect = [], {}
    for i, comp in enumerate(comps):
        where = f"column '{c.completions}[{i}]"
        text, ratings = comp.get(c.response), comp.get(c.ratings)
        if not isinstance(text, str):
            problems.append(f"{where}.{c.response}': expected the completion's text, got {_show(text)}")
        if not isinstance(ratings, dict):
            problems.append(f"{where}.{c.ratings}': expected {{aspect or rater: rating}}, got {_show(ratings)}")
            continue
        texts.append(text)
        for aspect, value in ratings.items():
            try:
                by_aspect.setdefault(aspect, [None] * len(comps))[i] = _score(value, c)
            except (TypeError, ValueError):
                problems.append(f"{where}.{c.ratings}.{aspect}': expected a number, a numeric string, \"N/A\" or "
                                f"{{'{c.rating}': number}}, got {_show(value)}")
    if problems:
        return None
    rankings = {a: competition_ranks(s) for a, s in sorted(by_aspect.items()) if None not in s}
    return RankedSet(prompt, texts, rankings)


def _preference(row: dict, c: Columns, problems: list[str]) -> Pair | None:
    prompt = check_prompt(row, problems, c.prompt)
    chosen = _assistant_text(row.get(c.chosen), c.chosen, problems)
    rejected = _assistant_text(row.get(c.rejected), c.rejected, problems)
    return _pair(row, prompt, chosen, rejected, problems)


def _hh(row: dict, c: Columns, problems: list[str]) -> Pair | None:
    split = split_dialogues(row.get(c.chosen), row.get(c.rejected), c, problems)
    return _pair(row, *split, problems) if split else None


def _pair(row: dict, prompt, chosen, rejected, problems: list[str]) -> Pair | None:
    """A pair, with the optional margin, agreement and set_id columns checked as in a pairs file."""
    if problems:
        return None
    optional = {k: row[k] for k in ("margin", "agreement", "set_id") if row.get(k) is not None}
    obj = {"prompt": prompt.to_json() if isinstance(prompt, Conversation) else prompt,
           "chosen": chosen, "rejected": rejected, **optional}
    return parse_pairwise(obj, problems)


def _prompt_row(row: dict, c: Columns, problems: list[str]) -> Prompt | None:
    return check_prompt(row, problems, c.prompt)


def _demonstration(row: dict, c: Columns, problems: list[str]) -> dict | None:
    if c.completion not in row and c.messages in row:  # a whole conversation: the last turn is the answer
        turns = _turns(row[c.messages], c.messages, problems)
        if turns is None:
            return None
        if len(turns) < 2 or turns[-1][0] != "assistant" or turns[-2][0] != "user":
            problems.append(f"column '{c.messages}': expected a conversation ending with a user turn and the "
                            f"assistant's answer, got turns {[r for r, _ in turns]}")
            return None
        return {"prompt": _prompt_of(turns[:-1]), "completion": turns[-1][1]}
    prompt = check_prompt(row, problems, c.prompt)
    completion = _assistant_text(row.get(c.completion), c.completion, problems)
    return None if problems else {"prompt": prompt, "completion": completion}


FEEDBACK_PARSERS = {"preference": ("pairwise", _preference), "hh_rlhf": ("pairwise", _hh),
                    "ratings": ("ranked", _rated)}


def parse_rows(rows: list[dict], parse: Callable[[dict, Columns, list[str]], object], c: Columns,
               source: str) -> list:
    """Every row through `parse`; one FileError naming every bad row (index, column, expectation)."""
    records, problems = [], []
    for i, row in enumerate(rows):
        row_problems: list[str] = []
        record = parse(row, c, row_problems)
        problems += [f"row {i}: {p.replace('field ', 'column ', 1)}" for p in row_problems]
        if not row_problems:
            records.append(record)
    if problems:
        raise FileError(source, problems, "row")
    if not records:
        raise FileError(source, ["no rows: the dataset is empty"], "row")
    return records


@schema
class HFData:
    """Local Hugging Face datasets: feedback (preference, HH-RLHF or ratings), prompts, held-out prompts
    and demonstrations, each read through `datasets` with the column mapping `columns`."""
    feedback: str | None
    format: Literal["preference", "hh_rlhf", "ratings"]
    prompts: str | None
    heldout: str | None
    demonstrations: str | None
    split: str
    columns: Columns
    cache_dir: str | None
    n_completions: int   # K: completions per prompt that collect writes

    simulated = False

    def _read(self, path: str, parse) -> list:
        return parse_rows(load_rows(path, self.split, self.cache_dir), parse, self.columns, path)

    def _need(self, key: str, stage: str) -> str:
        if not (value := getattr(self, key)):
            raise ConfigError(f"data.{key}: no dataset given; {stage} needs it with data=hf (data.{key}=PATH)")
        return value

    def load(self) -> LoadedFeedback:
        path = self._need("feedback", "stage=prepare")
        kind, parse = FEEDBACK_PARSERS[self.format]
        records = self._read(path, parse)
        for i, r in enumerate(records):  # a row is a comparison set: its pairs keep its index (listwise losses)
            r.set_id = i if r.set_id is None else r.set_id
        return LoadedFeedback(Feedback(kind, records), f"{path} ({self.format})")

    def train_prompts(self) -> list[Prompt]:
        """The prompts dataset's; without one, each distinct prompt of the feedback, in order."""
        if self.prompts:
            return self._read(self.prompts, _prompt_row)
        if not self.feedback:
            self._need("prompts", "this stage")
        return list(dict.fromkeys(r.prompt for r in self.load().feedback.records))

    def heldout_prompts(self) -> list[Prompt]:
        return self._read(self.heldout, _prompt_row) if self.heldout else []

    def sft_rows(self, styles: str, per_prompt: int) -> list[dict]:
        return self._read(self._need("demonstrations", "stage=sft"), _demonstration)

    def labeler_kinds(self) -> None:
        return None
