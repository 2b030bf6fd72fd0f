"""The labeling store behind `stage=label`: a ranked feedback file (collect's feedback.jsonl) that
people rank one set at a time through the labeling page.

Every ranking is written into the file at once: the whole file is re-read, the one labeler's ranking
of the one set is put in, and the file is rewritten through a temporary file renamed over it
(`files.write_jsonl`), so a reader or a crash never sees half a file. The read-modify-write runs
under a lock held by the threads of this process (a `threading.Lock`) and by other processes on the
same file (`fcntl.flock` on a lock file beside it), so rankings posted at the same time, by one
server or by two, all land. Nothing else in a line changes: other labelers' rankings, `set_id` and
any extra field are written back as they were read.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rlhf_exp.errors import UserError
from rlhf_exp.feedback.formats import RankedSet, is_rank, load_ranked, ranked_to_json
from rlhf_exp.feedback.prompts import messages
from rlhf_exp.files import FileError, write_jsonl

# a labeler id becomes a key of `rankings` and a column of prepare's tables: a short name, no spaces
LABELER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
LOCK_SUFFIX = ".lock"  # feedback.jsonl.lock: the file that processes lock (the data file itself is
#                        replaced by every write, so a lock on it would not be seen by the next writer)


class RankingError(UserError):
    """A ranking the store refuses; `problems` holds one sentence per bad field."""
    kind = "invalid ranking"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class UnknownSet(UserError):
    """A set index or set_id that the feedback file does not hold."""
    kind = "no such set"


@dataclass(frozen=True)
class Progress:
    labeler: str
    ranked: int  # sets that hold a ranking by this labeler
    total: int   # sets in the file

    def to_json(self) -> dict:
        return {"labeler": self.labeler, "ranked": self.ranked, "total": self.total}


def rank_problems(ranks: list, n: int) -> list[str]:
    """What is wrong with one labeler's ranks of a set of n completions (the same rules as
    `formats.load_feedback`: one rank per completion, each an integer 1..n or "F"); [] when fine."""
    if not isinstance(ranks, list):
        return [f"ranks: expected a list of {n} ranks (one per completion), got {type(ranks).__name__}"]
    if len(ranks) != n:
        return [f"ranks: expected {n} ranks (one per completion, in the order the file gives them), got {len(ranks)}"]
    return [f"ranks[{i}]: expected an integer rank 1..{n} or \"F\", got {r!r}" for i, r in enumerate(ranks)
            if not is_rank(r, n)]


def set_json(index: int, s: RankedSet, labeler: str | None = None) -> dict:
    """One set as the page shows it: the prompt as turns (a string prompt is one user turn), the
    completions in file order, and this labeler's ranks when they already gave some."""
    return {"index": index, "set_id": s.set_id, "turns": messages(s.prompt), "completions": s.completions,
            "ranks": s.rankings.get(labeler) if labeler else None}


class LabelStore:
    """A ranked feedback file, read fresh for every question (another process may have written it)
    and written once per ranking."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        self._thread_lock = threading.Lock()
        self.sets()  # the file is checked now: a bad file is refused before the page is served
        if not os.access(self.path.parent, os.W_OK):
            raise FileError(str(self.path), [f"cannot write into its directory {self.path.parent.resolve()} "
                                             "(rankings are written beside the file); expected a writable directory"])

    def sets(self) -> list[RankedSet]:
        """Every set of the file, every line checked (a FileError names the bad ones)."""
        return load_ranked(self.path)

    def progress(self, labeler: str, sets: list[RankedSet] | None = None) -> Progress:
        sets = self.sets() if sets is None else sets
        return Progress(labeler, sum(labeler in s.rankings for s in sets), len(sets))

    def next_set(self, labeler: str, sets: list[RankedSet] | None = None) -> tuple[int, RankedSet] | None:
        """The first set (in file order) this labeler has not ranked; None when they ranked them all."""
        sets = self.sets() if sets is None else sets
        return next(((i, s) for i, s in enumerate(sets) if labeler not in s.rankings), None)

    @staticmethod
    def find(sets: list[RankedSet], index: int | None = None, set_id: int | None = None) -> int:
        """The position of a set given by its index (0-based line order), its set_id, or both (then
        they must name the same set: the page's view of the file is still the file's)."""
        if index is None and set_id is None:
            raise UnknownSet("expected a set index or a set_id")
        if index is not None and not 0 <= index < len(sets):
            raise UnknownSet(f"index = {index}: expected 0..{len(sets) - 1} (the file holds {len(sets)} sets)")
        if set_id is None:
            return index
        found = [i for i, s in enumerate(sets) if s.set_id == set_id]
        if index is not None and index not in found:
            raise UnknownSet(f"index = {index} holds set_id {sets[index].set_id}, not {set_id}")
        if not found:
            raise UnknownSet(f"set_id = {set_id}: no set of the file has it")
        if len(found) > 1:
            raise UnknownSet(f"set_id = {set_id}: held by {len(found)} sets (indexes {found}); give the index")
        return found[0]

    def submit(self, labeler: str, ranks: list, index: int | None = None, set_id: int | None = None) -> int:
        """Put `ranks` under rankings[labeler] of one set and rewrite the file atomically; a ranking
        this labeler gave that set before is replaced, nothing else changes. Returns the set's index."""
        if not isinstance(labeler, str) or not re.match(LABELER_PATTERN, labeler):
            raise RankingError([f"labeler = {labeler!r}: expected a name of letters, digits, '_', '.', '@' or "
                                "'-', 1 to 64 characters, starting with a letter or digit"])
        with self._locked():
            sets = self.sets()
            i = self.find(sets, index, set_id)
            problems = rank_problems(ranks, len(sets[i].completions))
            if problems:
                raise RankingError(problems)
            sets[i].rankings[labeler] = list(ranks)
            write_jsonl(self.path, map(ranked_to_json, sets))
        return i

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Held by one thread of one process at a time (the flock is released when the file closes)."""
        with self._thread_lock, open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
