"""`stage=sft`: supervised fine-tuning of the policy on demonstrations; saved to sft/."""
from __future__ import annotations

import pytorch_lightning as pl

from rlhf_exp.feedback.prompts import sort_key
from rlhf_exp.modules.checkpoints import check_resume
from rlhf_exp.modules.data import RowsDataModule, sft_collate
from rlhf_exp.modules.sft import SFTModule, SFTSettings
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext) -> None:
    s: SFTSettings = ctx.built.sft
    check_resume(s, "sft.ckpt_path")  # before any model is loaded
    pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
    rows = ctx.built.data.sft_rows(s.styles, s.per_prompt)  # read (and checked) before any model loads
    spec = ctx.built.model
    tokenizer = spec.tokenizer()
    policy = spec.trainable(spec.causal_lm(tokenizer))  # LoRA adapters when model.lora_r > 0
    dm = RowsDataModule(rows, sft_collate(tokenizer, s.max_len), s.batch_size, s.val_fraction, ctx.cfg.seed)
    sample_prompts = sorted({r["prompt"] for r in dm.val_rows or dm.train_rows}, key=sort_key)[: s.n_samples]
    module = SFTModule(policy, tokenizer, s, sample_prompts)
    trainer = ctx.trainer("sft", checkpoint_every=s.checkpoint_every, max_epochs=s.epochs)
    trainer.fit(module, datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)
    print(f"sft: {len(dm.train_rows)} train / {len(dm.val_rows)} val demonstrations, "
          f"val loss {float(trainer.callback_metrics.get('sft/val/loss', float('nan'))):.3f}")

    ctx.save_pretrained("policy", "sft", policy, tokenizer)
    if module.samples:
        ctx.save_text("sft_samples", "sft_samples.txt", "\n\n".join(module.samples) + "\n")
        print(module.samples[-1])
