"""`stage=align`: fine-tune the policy with the algorithm the `algorithm` group built; its record
(`modules/algorithms.py`, declared beside its settings) names the stage function that runs it. Every
algorithm saves the aligned policy with save_pretrained to policy/, which `eval` reads."""
from __future__ import annotations

from rlhf_exp.modules.algorithms import record_of
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext) -> None:
    s = ctx.built.algorithm
    record_of(s).run()(ctx, s)
