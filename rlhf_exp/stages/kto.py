"""`stage=align` with `algorithm=kto`: the policy learns from the thumbs up and down that collect
wrote (no pairs, no reward model in training); the aligned policy is saved to policy/ with
save_pretrained."""
from __future__ import annotations

from rlhf_exp.feedback.formats import load_thumbs
from rlhf_exp.modules.data import RowsDataModule
from rlhf_exp.modules.dpo import cache_reference_logps, pair_refs
from rlhf_exp.modules.kto import KTOModule, KTOSettings, encode_thumbs, thumbs_rows_collate
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext, s: KTOSettings) -> None:
    policy, tokenizer = ctx.policy_to_align(s)  # checked, seeded, loaded (LoRA adapters when model.lora_r > 0)
    thumbs = ctx.align_rows(s, load_thumbs(ctx.input_path(s.thumbs, "thumbs", "algorithm.thumbs")), lambda t: t.prompt)
    rows, collate = encode_thumbs(tokenizer, thumbs, s.max_len), thumbs_rows_collate(tokenizer.pad_token_id)
    cache_reference_logps(ctx.reference(policy, copy=False), rows, collate, refs=pair_refs)  # (matched, mismatched) under the starting policy
    dm = RowsDataModule(rows, collate, s.batch_size, s.val_fraction, ctx.cfg.seed)
    heldout = ctx.heldout_eval("kto", s, policy, ctx.reference(policy), tokenizer) if s.eval_every else ()  # eval_every
    trainer = ctx.trainer("align", checkpoint_every=s.checkpoint_every, callbacks=heldout, max_epochs=s.epochs)
    trainer.fit(KTOModule(policy, s), datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)

    ctx.save_pretrained("aligned_policy", "policy", policy, tokenizer)
    ups = sum(r["label"] for r in rows)
    ctx.run.log_metrics({"kto/data/desirable": ups, "kto/data/undesirable": len(rows) - ups})
    shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("kto/val/")}
    print(f"align (kto, beta {s.beta}, weights {s.desirable_weight}/{s.undesirable_weight}): {ups} up, "
          f"{len(rows) - ups} down; {len(dm.train_rows)} train / {len(dm.val_rows)} val; "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
