"""`stage=align` with `algorithm=dpo`: the policy learns from the preference pairs directly (no
reward model, no rollouts); the aligned policy is saved to policy/ with save_pretrained."""
from __future__ import annotations

import pytorch_lightning as pl

from rlhf_exp.config import setting, settings
from rlhf_exp.core.dpo import LOSS_TYPES
from rlhf_exp.stages.context import StageContext


@settings
class DPOSettings:
    """DPO's hyperparameters (conf/algorithm/dpo.yaml documents each)."""
    name: str = setting(choices=("dpo",))
    policy: str | None           # policy to align; null = this pipeline's sft/, else the model group
    pairs: str | None            # pairs.jsonl; null = this pipeline's prepare output
    beta: float = setting(gt=0)
    loss_type: str = setting(choices=LOSS_TYPES)
    label_smoothing: float = setting(ge=0, lt=0.5)
    epochs: int = setting(ge=1)
    batch_size: int = setting(ge=1)
    lr: float = setting(gt=0)
    warmup_steps: int = setting(ge=0)
    max_len: int = setting(ge=8)
    val_fraction: float = setting(ge=0, lt=1)


def run(ctx: StageContext) -> None:
    from rlhf_exp.feedback.formats import read_jsonl
    from rlhf_exp.modules.data import RowsDataModule, encode_pairs, pair_rows_collate
    from rlhf_exp.modules.dpo import DPOModule, cache_reference_logps
    s: DPOSettings = ctx.built["algorithm"]
    pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
    spec = ctx.model_spec(s.policy, "policy")
    tokenizer = spec.tokenizer()
    policy = spec.causal_lm(tokenizer)
    pairs = list(read_jsonl(ctx.input_path(s.pairs, "pairs", "algorithm.pairs")))
    rows = encode_pairs(tokenizer, pairs, s.max_len)
    collate = pair_rows_collate(tokenizer.pad_token_id)
    cache_reference_logps(policy, rows, collate)  # the reference is the starting policy
    dm = RowsDataModule(rows, collate, s.batch_size, s.val_fraction, ctx.cfg.seed)
    trainer = ctx.trainer("align", max_epochs=s.epochs)
    trainer.fit(DPOModule(policy, s), datamodule=dm)

    ctx.save_pretrained("aligned_policy", "policy", policy, tokenizer)
    shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("dpo/val/")}
    print(f"align (dpo, {s.loss_type}, beta {s.beta}): {len(dm.train_rows)} train / {len(dm.val_rows)} val pairs; "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
