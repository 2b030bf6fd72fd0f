"""`stage=align` with `algorithm=grpo` or `algorithm=rloo`: fine-tune the policy against the reward
with a group baseline and no critic; the aligned policy is saved to policy/ with save_pretrained."""
from __future__ import annotations

from rlhf_exp.files import write_jsonl
from rlhf_exp.modules.data import PromptDataModule
from rlhf_exp.modules.algorithms import record_of
from rlhf_exp.modules.grpo import GroupModule, GRPOSettings, RLOOSettings
from rlhf_exp.stages.context import StageContext


def run(ctx: StageContext, s: GRPOSettings | RLOOSettings) -> None:
    lm, tokenizer = ctx.policy_to_align(s)  # checked, seeded, loaded (LoRA adapters when model.lora_r > 0)
    prefix = record_of(s).name
    reward, gold_callbacks = ctx.rollout_reward(prefix)  # in a simulated world, the gold of each iteration's rollouts too
    ref = ctx.reference(lm)                              # with LoRA: the same network, adapters off (rounds: maybe SFT)
    module = GroupModule(lm, ref, tokenizer, reward, s, seed=ctx.cfg.seed)
    heldout = ctx.heldout_eval(prefix, s, lm, ref, tokenizer, getattr(reward, "reward", reward))  # eval_every
    # each batch: batch_size / group_size prompts (shared by the ranks), each answered group_size times
    dm = PromptDataModule(ctx.align_prompts(s)[0], tokenizer, s.batch_size // s.group_size, ctx.cfg.seed)
    # manual optimisation clips its own gradients (algorithm.max_grad_norm); log every iteration
    trainer = ctx.trainer("align", checkpoint_every=s.checkpoint_every, callbacks=(*gold_callbacks, *heldout), max_epochs=-1,
                          gradient_clip_val=None, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)  # no code runs on load

    ctx.save_pretrained("aligned_policy", "policy", lm, tokenizer)
    if module.samples:
        ctx.save(f"{module.prefix}_samples", write_jsonl(ctx.run_dir / f"{module.prefix}_samples.jsonl", module.samples))
        ctx.run.log_table(module.samples, f"{module.prefix}_samples_table.json")
    print(f"align ({module.prefix}): {module.iteration} iterations, stopped: {module.stop_reason or 'end of fit'}; "
          f"last score {module.score_means[-1] if module.score_means else float('nan'):.3f}")
