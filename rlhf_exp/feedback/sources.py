"""The `data` group's file source: prompts, demonstrations and feedback from files people or tools wrote.
The simulated worlds are in `rlhf_exp/worlds/`, Hugging Face datasets in `feedback/hf.py`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from rlhf_exp.config import ConfigError, schema
from rlhf_exp.feedback.formats import Feedback, load_demonstrations, load_feedback, load_prompts
from rlhf_exp.feedback.prompts import Prompt


@dataclass
class LoadedFeedback:
    feedback: Feedback
    source: str


@schema
class FeedbackFile:
    """Files written by people or another tool: feedback (ranked, pairwise or binary), and the
    prompts and demonstrations that the sft and collect stages need."""
    feedback: str | None
    prompts: str | None
    heldout: str | None
    demonstrations: str | None
    n_completions: Annotated[int, Field(ge=2)]   # K: completions per prompt that collect writes

    simulated = False

    def _need(self, key: str, stage: str) -> str:
        value = getattr(self, key)
        if not value:
            raise ConfigError(f"data.{key}: no file given; {stage} needs it with data=files "
                              f"(data.{key}=PATH)")
        return value

    def train_prompts(self) -> list[Prompt]:
        return load_prompts(self._need("prompts", "this stage"))

    def heldout_prompts(self) -> list[Prompt]:
        return load_prompts(self.heldout) if self.heldout else []

    def sft_rows(self, styles: str, per_prompt: int) -> list[dict]:
        return load_demonstrations(self._need("demonstrations", "stage=sft"))

    def labeler_kinds(self) -> None:
        return None

    def load(self) -> LoadedFeedback:
        path = self._need("feedback", "stage=prepare")
        return LoadedFeedback(load_feedback(path), path)
