"""`stage=align`: fine-tune the policy with the configured algorithm (`algorithm=ppo` or `dpo`);
either way the aligned policy is saved with save_pretrained to policy/, which `eval` reads."""
from __future__ import annotations

import importlib

from rlhf_exp.stages.context import StageContext

ALGORITHMS = {"ppo": "rlhf_exp.stages.ppo", "dpo": "rlhf_exp.stages.dpo"}


def run(ctx: StageContext) -> None:
    importlib.import_module(ALGORITHMS[ctx.built["algorithm"].name]).run(ctx)
