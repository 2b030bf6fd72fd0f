"""`stage=align` with `algorithm=ppo`: fine-tune the policy against the reward with PPO; the
aligned policy is saved to policy/ with save_pretrained."""
from __future__ import annotations

from rlhf_exp.config import ConfigError
from rlhf_exp.files import write_jsonl
from rlhf_exp.models.value import ActorCritic
from rlhf_exp.modules.data import PromptDataModule
from rlhf_exp.modules.ppo import PPOModule, PPOSettings
from rlhf_exp.stages.context import StageContext


def critic_for(s: PPOSettings, lm, tokenizer, reward):
    """None for a value head on the policy; else a separate critic (from the policy or the reward model)."""
    from rlhf_exp.models.reward import LearnedReward
    from rlhf_exp.models.value import Critic
    if s.value_model == "shared":
        return None
    if s.value_init == "zero":
        return Critic.from_policy(lm)
    if not isinstance(reward, LearnedReward):
        raise ConfigError("algorithm.value_init = 'reward': expected reward=learned (the critic starts "
                          "as a copy of the reward model)")
    rm, rm_tokenizer = reward.loaded
    if rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"algorithm.value_init = 'reward': the reward model at {reward.path} has another "
                          "tokenizer than the policy; expected the same vocabulary (or value_init=zero)")
    return Critic.from_reward_model(rm)


def run(ctx: StageContext, s: PPOSettings) -> None:
    lm, tokenizer = ctx.policy_to_align(s)  # checked, seeded, loaded (LoRA adapters when model.lora_r > 0)
    reward, gold_callbacks = ctx.rollout_reward("ppo")  # in a simulated world, the gold of each iteration's rollouts too
    ref = ctx.reference(lm)                             # with LoRA: the same network, adapters off (rounds: maybe SFT)
    critic = critic_for(s, lm, tokenizer, getattr(reward, "reward", reward))
    module = PPOModule(ActorCritic(lm, critic), ref, tokenizer, reward, s, seed=ctx.cfg.seed)
    dm = PromptDataModule(ctx.align_prompts(s)[0], tokenizer, s.batch_size, ctx.cfg.seed)  # shared by ranks
    # manual optimisation clips its own gradients (algorithm.max_grad_norm); log every iteration
    heldout = ctx.heldout_eval("ppo", s, lm, ref, tokenizer, getattr(reward, "reward", reward))  # eval_every
    trainer = ctx.trainer("align", checkpoint_every=s.checkpoint_every, callbacks=(*gold_callbacks, *heldout), max_epochs=-1,
                          gradient_clip_val=None, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)  # no code runs on load

    ctx.save_pretrained("aligned_policy", "policy", lm, tokenizer)
    if module.samples:
        ctx.save("ppo_samples", write_jsonl(ctx.run_dir / "ppo_samples.jsonl", module.samples))
        ctx.run.log_table(module.samples, "ppo_samples_table.json")
    print(f"align (ppo): {module.iteration} iterations, stopped: {module.stop_reason or 'end of fit'}; "
          f"last score {module.score_means[-1] if module.score_means else float('nan'):.3f}")
