"""`stage=align`: fine-tune the policy with the algorithm the `algorithm` group built (PPO, DPO,
KTO, online DPO, GRPO or RLOO settings); either way the aligned policy is saved with save_pretrained to policy/, which
`eval` reads."""
from __future__ import annotations

from rlhf_exp.modules.dpo import DPOSettings
from rlhf_exp.modules.grpo import GRPOSettings, RLOOSettings
from rlhf_exp.modules.kto import KTOSettings
from rlhf_exp.modules.online_dpo import OnlineDPOSettings
from rlhf_exp.modules.ppo import PPOSettings
from rlhf_exp.stages import dpo, grpo, kto, online_dpo, ppo
from rlhf_exp.stages.context import StageContext

# the settings' type says which algorithm runs
ALGORITHMS = {PPOSettings: ppo.run, DPOSettings: dpo.run, GRPOSettings: grpo.run, RLOOSettings: grpo.run,
              KTOSettings: kto.run, OnlineDPOSettings: online_dpo.run}


def run(ctx: StageContext) -> None:
    s = ctx.built["algorithm"]
    ALGORITHMS[type(s)](ctx, s)
