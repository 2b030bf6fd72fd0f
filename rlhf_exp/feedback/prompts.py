"""Prompts: a string, or a conversation (`messages`: a list of role/content turns that ends with the
user's turn). A conversation is hashable (prompts are keys: splits, comparison sets) and is written
back to JSON as the list it was read from. How a prompt becomes text for a model is decided in one
place, `rlhf_exp.models.generation.format_prompt`."""
from __future__ import annotations

import json
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    turns: tuple[tuple[str, str], ...]   # (role, content), the last one the user's

    @classmethod
    def of(cls, messages: list[dict]) -> "Conversation":
        return cls(tuple((m["role"], m["content"]) for m in messages))

    def to_json(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.turns]

    def __str__(self) -> str:
        """The user's last turn: what a person reading samples or a topic scorer looks at."""
        return self.turns[-1][1]


Prompt = str | Conversation


def sort_key(prompt: Prompt) -> str:
    """A total order over prompts of both kinds (a string sorts as itself)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt.to_json())


def messages(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages: a string is one user turn."""
    return prompt.to_json() if isinstance(prompt, Conversation) else [{"role": "user", "content": prompt}]


def check_prompt(obj: dict, problems: list[str], key: str = "prompt") -> Prompt | None:
    """The prompt of a JSON object, a string or a list of {"role", "content"} turns; problems named."""
    value = obj.get(key)
    if isinstance(value, str):
        return value
    expected = (f"field '{key}': expected a string or a list of {{\"role\", \"content\"}} turns "
                f"({', '.join(ROLES)}) ending with a user turn")
    if key not in obj:
        problems.append(f"field '{key}': missing (expected a string or a list of role/content turns)")
    elif not (isinstance(value, list) and value and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ROLES
            and isinstance(m["content"], str) for m in value) and value[-1]["role"] == "user"):
        problems.append(f"{expected}, got {value!r}"[:300])
    else:
        return Conversation.of(value)
    return None
