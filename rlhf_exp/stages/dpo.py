"""`stage=align` with `algorithm=dpo`: the policy learns from the preference pairs directly (no
reward model, no rollouts); the aligned policy is saved to policy/ with save_pretrained."""
from __future__ import annotations

from rlhf_exp.feedback.formats import load_pairs
from rlhf_exp.modules.data import RowsDataModule, encode_pairs, encode_sets, pair_rows_collate, set_rows_collate
from rlhf_exp.modules.dpo import DPOModule, DPOSettings, cache_reference_logps, pair_refs, set_refs
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext, s: DPOSettings) -> None:
    policy, tokenizer = ctx.policy_to_align(s)  # checked, seeded, loaded (LoRA adapters when model.lora_r > 0)
    pairs = ctx.align_rows(s, load_pairs(ctx.input_path(s.pairs, "pairs", "algorithm.pairs")), lambda p: p.prompt)
    if s.loss_type == "plackett_luce":  # one row per comparison set, its ranking rebuilt from its pairs
        rows, collate, refs = encode_sets(tokenizer, pairs, s.max_len), set_rows_collate(tokenizer.pad_token_id), set_refs
    else:
        rows, collate, refs = encode_pairs(tokenizer, pairs, s.max_len), pair_rows_collate(tokenizer.pad_token_id), pair_refs
    cache_reference_logps(ctx.reference(policy, copy=False), rows, collate, refs=refs)  # the reference: the starting policy (LoRA: adapters off)
    dm = RowsDataModule(rows, collate, s.batch_size, s.val_fraction, ctx.cfg.seed)
    heldout = ctx.heldout_eval("dpo", s, policy, ctx.reference(policy), tokenizer) if s.eval_every else ()  # eval_every
    trainer = ctx.trainer("align", checkpoint_every=s.checkpoint_every, callbacks=heldout, max_epochs=s.epochs)
    trainer.fit(DPOModule(policy, s), datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)

    ctx.save_pretrained("aligned_policy", "policy", policy, tokenizer)
    shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("dpo/val/")}
    unit = "sets" if s.loss_type == "plackett_luce" else "pairs"
    print(f"align (dpo, {s.loss_type}, beta {s.beta}): {len(dm.train_rows)} train / {len(dm.val_rows)} val {unit}; "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
