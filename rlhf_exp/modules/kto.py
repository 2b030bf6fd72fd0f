"""KTO (Ethayarajh et al., 2024), `algorithm=kto`: the policy learns from thumbs up and down as they
are, no pairs and no reward model, against the frozen starting policy. Each row is one completion
with its thumb; beside it the batch carries the same completion under another prompt (the next row's:
the mismatched pair whose log-ratio estimates KTO's reference point z₀). The reference log-probs of
both are cached once, before training, as DPO caches its own."""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.modules.algorithms import Algorithm, register
from rlhf_exp.core.kto import kto_loss, kto_reference_point
from rlhf_exp.distributed import global_mean, global_mean_loss
from rlhf_exp.modules.data import encode_completion, right_padded
from rlhf_exp.modules.dpo import DPOModule, completion_logps
from rlhf_exp.modules.heldout import InLoopEvalSettings
from rlhf_exp.modules.metrics import to_floats


@schema
class KTOSettings(InLoopEvalSettings):
    """KTO's hyperparameters, `algorithm=kto` (conf/algorithm/kto.yaml gives each its default and meaning)."""
    policy: str | None           # policy to align; null = this pipeline's sft/, else the model group
    thumbs: str | None           # thumbs.jsonl; null = this pipeline's collect output
    beta: Annotated[float, Field(gt=0)]
    desirable_weight: Annotated[float, Field(gt=0)]
    undesirable_weight: Annotated[float, Field(gt=0)]
    epochs: Annotated[int, Field(ge=1)]
    checkpoint_every: Annotated[int, Field(ge=1)] | None
    ckpt_path: str | None
    batch_size: Annotated[int, Field(ge=2)]      # thumbs per step (the mismatched pairs need two)
    lr: Annotated[float, Field(gt=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    max_len: Annotated[int, Field(ge=8)]
    val_fraction: Annotated[float, Field(ge=0, lt=1)]


register(Algorithm(name="kto", settings=KTOSettings, stage="rlhf_exp.stages.kto.run", on_policy=False, shardable=False,
                   resumes_by="epochs", curve="kto/train/loss", kl_knob="algorithm.beta"))


def encode_thumbs(tokenizer, thumbs, max_len: int) -> list[dict]:
    """Thumbs tokenized once: {"prompt", "label", "matched": (ids, labels) of the completion under its
    prompt, "mismatched": the next row's completion under this prompt} (the last row takes the first's)."""
    rows = []
    for i, b in enumerate(thumbs):
        other = thumbs[(i + 1) % len(thumbs)].completion
        rows.append({"prompt": b.prompt, "label": int(b.label),
                     "matched": encode_completion(tokenizer, b.prompt, b.completion, max_len),
                     "mismatched": encode_completion(tokenizer, b.prompt, other, max_len)})
    return rows


def thumbs_rows_collate(pad_id: int):
    """Encoded thumbs -> one right-padded batch, every matched row then every mismatched row (one
    forward pass for both), `desirable` (N,), and `ref_logps` (2N,) once they are known."""
    def collate(rows):
        batch = right_padded([r["matched"] for r in rows] + [r["mismatched"] for r in rows], pad_id)
        batch["desirable"] = torch.tensor([r["label"] == 1 for r in rows])
        if "ref" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref"][0] for r in rows] + [r["ref"][1] for r in rows])
        return batch
    return collate


class KTOModule(DPOModule):
    """DPO's loop (the policy in eval mode each batch, a train and a val step, AdamW with warm-up)
    with KTO's step: one row per thumb, and its mismatched row for the reference point."""

    def _step(self, batch, stage: str):
        logps = completion_logps(self.policy, batch)              # matched rows, then mismatched: (2N,)
        n, ref = logps.shape[0] // 2, batch["ref_logps"]
        z0 = kto_reference_point(logps[n:], ref[n:])
        z0 = global_mean({"z0": z0})["z0"]                        # under DDP: the ranks' estimates averaged
        loss, stats = kto_loss(logps[:n], ref[:n], batch["desirable"], z0, self.s.beta,
                               self.s.desirable_weight, self.s.undesirable_weight)
        loss, shown = global_mean_loss(loss, n)
        prefix = "kto/train" if stage == "train" else "kto/val"
        rewards = "kto/rewards" if stage == "train" else "kto/val/rewards"
        logged = {f"{prefix}/loss": shown, f"{prefix}/kl": stats["kl"]}
        logged.update({f"{rewards}/{k}": stats[f"rewards/{k}"] for k in ("desirable", "undesirable")
                       if not torch.isnan(stats[f"rewards/{k}"])})
        self.log_dict(to_floats(logged), prog_bar=stage == "train", batch_size=n)
        return loss
