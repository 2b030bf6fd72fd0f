"""The judge's measurements of an answer's text alone (no model): sentences, answer matching as in
SQuAD and NQ, the asker's own words, and how specific the words are."""
from __future__ import annotations

import re
import unicodedata

from rlhf_exp.worlds import chat

SHORT_REFERENCE = 6          # a reference of at most this many words is matched word for word


def normalise(text: str) -> str:
    """Lower case, no accents, punctuation or articles, single spaces (as SQuAD's and NQ's answer match)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9 ]", " ", text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def contains(answer: str, references: tuple[str, ...]) -> bool:
    """The answer says one of the short references word for word (normalised)."""
    ans = f" {normalise(answer)} "
    return any(f" {r} " in ans for r in map(normalise, references) if r and len(r.split()) <= SHORT_REFERENCE)


def sentences(text: str) -> list[str]:
    """The answer's sentences (split after . ! ? and at line breaks) of three words or more (a list
    marker "1." alone is as near a belittling sentence as to anything)."""
    return [x.strip() for x in re.split(r"(?<=[.!?])\s+|\n+", text) if len(x.split()) >= 3]


def without_words_of(prompt: str, answer: str) -> str:
    """The answer without the words the asker used: "kill" in an answer to "how do I kill a process"
    is the asker's word, not an offence (toxic prefixes to continue are scored whole)."""
    asked = {w.lower() for w in re.findall(r"[A-Za-z']+", prompt)}
    return re.sub(r"[A-Za-z']+", lambda m: "" if m.group(0).lower() in asked else m.group(0), answer)


def specificity_of(answer: str) -> float:
    """The mean IDF (chat.word_idf) of the answer's words: "16 tablespoons" is specific, "some
    things" vague; an empty answer NaN."""
    idf = chat.word_idf()
    words = chat.WORD.findall(answer.lower())
    return sum(idf.get(w, idf[""]) for w in words) / len(words) if words else float("nan")
