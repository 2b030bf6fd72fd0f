"""`stage=align` with `algorithm=online_dpo`: the policy answers each prompt twice, the reward ranks
the two, DPO trains on the pair (on-policy preferences); the aligned policy is saved to policy/."""
from __future__ import annotations

from rlhf_exp.files import write_jsonl
from rlhf_exp.modules.data import PromptDataModule
from rlhf_exp.modules.online_dpo import OnlineDPOModule, OnlineDPOSettings
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext, s: OnlineDPOSettings) -> None:
    lm, tokenizer = ctx.policy_to_align(s)  # checked, seeded, loaded (LoRA adapters when model.lora_r > 0)
    reward, gold_callbacks = ctx.rollout_reward("online_dpo")  # in a simulated world, the gold of each step's answers too
    ref = ctx.reference(lm)
    module = OnlineDPOModule(lm, ref, tokenizer, reward, s)
    heldout = ctx.heldout_eval("online_dpo", s, lm, ref, tokenizer, getattr(reward, "reward", reward))  # eval_every
    dm = PromptDataModule(ctx.align_prompts(s)[0], tokenizer, s.batch_size, ctx.cfg.seed)
    trainer = ctx.trainer("align", checkpoint_every=s.checkpoint_every, callbacks=(*gold_callbacks, *heldout),
                          max_epochs=-1, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)

    ctx.save_pretrained("aligned_policy", "policy", lm, tokenizer)
    if module.samples:
        ctx.save("online_dpo_samples", write_jsonl(ctx.run_dir / "online_dpo_samples.jsonl", module.samples))
    print(f"align (online_dpo, beta {s.beta}): {module.iteration} steps, stopped: {module.stop_reason or 'end of fit'}; "
          f"last score {module.score_means[-1] if module.score_means else float('nan'):.3f}")
