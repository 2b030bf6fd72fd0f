"""SimPO (Meng et al., 2024), `algorithm=simpo`: preference pairs without a reference model. The
implicit reward of a completion is β times its mean token log-prob under the policy (length-
normalised, so a longer answer is not favoured), and the chosen must beat the rejected by a margin γ.
DPO's loop (a train and a val step, AdamW with warm-up), with SimPO's step."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.core.dpo import simpo_loss
from rlhf_exp.distributed import global_mean_loss
from rlhf_exp.modules.algorithms import Algorithm, register
from rlhf_exp.modules.dpo import DPOModule, completion_logps
from rlhf_exp.modules.heldout import InLoopEvalSettings
from rlhf_exp.modules.metrics import to_floats


@schema
class SimPOSettings(InLoopEvalSettings):
    """SimPO's hyperparameters, `algorithm=simpo` (conf/algorithm/simpo.yaml gives each its default and meaning)."""
    policy: str | None
    pairs: str | None
    beta: Annotated[float, Field(gt=0)]
    gamma: Annotated[float, Field(ge=0)]
    epochs: Annotated[int, Field(ge=1)]
    checkpoint_every: Annotated[int, Field(ge=1)] | None
    ckpt_path: str | None
    batch_size: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    max_len: Annotated[int, Field(ge=8)]
    val_fraction: Annotated[float, Field(ge=0, lt=1)]


# no reference: β (the reward's scale) labels its frontier points
register(Algorithm(name="simpo", settings=SimPOSettings, stage="rlhf_exp.stages.simpo.run", on_policy=False,
                   shardable=False, resumes_by="epochs", curve="simpo/rewards/margin", kl_knob="algorithm.beta"))


class SimPOModule(DPOModule):
    """DPOModule with SimPO's step: mean log-probs of each completion, no reference log-probs."""

    def _step(self, batch, stage: str):
        tokens = (batch["labels"][:, 1:] != -100).sum(1).clamp(min=1)   # completion tokens of each row (2P,)
        avg = completion_logps(self.policy, batch) / tokens              # chosen rows, then rejected rows: (2P,)
        n = avg.shape[0] // 2
        losses, chosen, rejected = simpo_loss(avg[:n], avg[n:], self.s.beta, self.s.gamma)
        loss, shown = global_mean_loss(losses.mean(), n)                 # under DDP: the mean over every rank's pairs
        prefix, rewards = ("simpo/train", "simpo/rewards") if stage == "train" else ("simpo/val", "simpo/val/rewards")
        self.log_dict(to_floats({f"{prefix}/loss": shown, f"{rewards}/chosen": chosen.mean(),
                                 f"{rewards}/rejected": rejected.mean(),
                                 f"{rewards}/accuracy": (chosen > rejected).float().mean(),
                                 f"{rewards}/margin": (chosen - rejected).mean()}), prog_bar=stage == "train", batch_size=n)
        return loss
