"""Stages of the life cycle, one function each, and the order the pipeline runs them in."""
from __future__ import annotations

import importlib

# stage name -> "module:function"; the pipeline runs them in this order.
STAGES = {
    "sft": "rlhf_exp.stages.sft:run",
    "collect": "rlhf_exp.stages.collect:run",
    "prepare": "rlhf_exp.stages.prepare:run",
    "reward": "rlhf_exp.stages.reward:run",
    "align": "rlhf_exp.stages.align:run",
    "eval": "rlhf_exp.stages.eval:run",
}
PIPELINE = tuple(STAGES)


def stage_function(name: str):
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)

# what an earlier pipeline run left that a later one can take as it is (`reuse=DIR`):
# output name -> path in that run's directory, and the stage that writes it
REUSABLE = {"policy": ("sft", "sft"), "feedback": ("feedback.jsonl", "collect"),
            "heldout": ("heldout.jsonl", "collect"), "pairs": ("pairs.jsonl", "prepare"),
            "reward_model": ("reward_model", "reward")}
