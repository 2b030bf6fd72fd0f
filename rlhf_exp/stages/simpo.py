"""`stage=align` with `algorithm=simpo`: the policy learns from the preference pairs with no reference
model and no rollouts; the aligned policy is saved to policy/ with save_pretrained."""
from __future__ import annotations

from rlhf_exp.feedback.formats import load_pairs
from rlhf_exp.modules.data import RowsDataModule, encode_pairs, pair_rows_collate
from rlhf_exp.modules.simpo import SimPOModule, SimPOSettings
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext, s: SimPOSettings) -> None:
    policy, tokenizer = ctx.policy_to_align(s)  # checked, seeded, loaded (LoRA adapters when model.lora_r > 0)
    pairs = ctx.align_rows(s, load_pairs(ctx.input_path(s.pairs, "pairs", "algorithm.pairs")), lambda p: p.prompt)
    dm = RowsDataModule(encode_pairs(tokenizer, pairs, s.max_len), pair_rows_collate(tokenizer.pad_token_id),
                        s.batch_size, s.val_fraction, ctx.cfg.seed)
    heldout = ctx.heldout_eval("simpo", s, policy, ctx.reference(policy), tokenizer) if s.eval_every else ()
    trainer = ctx.trainer("align", checkpoint_every=s.checkpoint_every, callbacks=heldout, max_epochs=s.epochs)
    trainer.fit(SimPOModule(policy, s), datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)

    ctx.save_pretrained("aligned_policy", "policy", policy, tokenizer)
    shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("simpo/val/")}
    print(f"align (simpo, beta {s.beta}, gamma {s.gamma}): {len(dm.train_rows)} train / {len(dm.val_rows)} val pairs; "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
