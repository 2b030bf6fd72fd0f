"""Run by tests/test_distributed.py as `python tests/ddp_check.py ALGORITHM TOKENIZER_DIR OUT.json
[save=CKPT | resume=CKPT]`: PPO, GRPO or RLOO on two CPU processes with Lightning DDP (this script
runs once per rank). After every iteration each rank's weights, raw scores and KL coefficient are
gathered; rank 0 writes what it saw to OUT.json. `save=CKPT` stops after 2 iterations and writes a
checkpoint (rank 0); `resume=CKPT` resumes from it and runs to iteration 4."""
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhf_exp.config import option  # noqa: E402
from rlhf_exp.distributed import rank  # noqa: E402
from rlhf_exp.worlds.synthetic import World  # noqa: E402
from rlhf_exp.models.training import reference  # noqa: E402
from rlhf_exp.models.value import ActorCritic  # noqa: E402
from rlhf_exp.modules.data import PromptDataModule  # noqa: E402
from rlhf_exp.modules.grpo import GroupModule  # noqa: E402
from rlhf_exp.modules.ppo import PPOModule  # noqa: E402


class LengthReward:
    """Longer responses score higher; remembers this rank's last scores."""
    last = None

    def score(self, prompts, completions):
        self.last = torch.tensor([len(c) / 10.0 for c in completions])
        return self.last


class Gather(pl.Callback):
    def __init__(self, reward, prefix):
        self.reward, self.prefix, self.rows, self.start = reward, prefix, [], None

    def on_train_start(self, trainer, module):  # after a checkpoint, if any, was loaded
        weights = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
        every = module.all_gather(weights)
        self.start = {"iteration": module.iteration, "same_weights": bool(torch.equal(every[0], every[1])),
                      "weights_sum": float(weights.double().sum())}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        weights = torch.cat([p.detach().flatten() for p in module.policy.parameters()])
        every = module.all_gather(weights)                                   # (2, N)
        scores = module.all_gather(self.reward.last)                         # (2, B / 2)
        coef = module.all_gather(torch.tensor(float(module.kl_ctl.value if module.kl_ctl else 0.0)))
        self.rows.append({"same_weights": bool(torch.equal(every[0], every[1])),
                          "union_score_mean": float(scores.float().mean()),
                          "logged_score_mean": outputs[f"{self.prefix}/reward/score_mean"],
                          "kl_coefs": coef.tolist(), "epochs": outputs[f"{self.prefix}/update/epochs"],
                          "ranks_scores_differ": not torch.equal(scores[0], scores[1])})


def main(algorithm: str, tokenizer_dir: str, out: str, checkpoint: str = "") -> None:
    action, _, ckpt = checkpoint.partition("=")
    pl.seed_everything(rank(), verbose=False)  # as the stage does: each rank samples its own
    spec = option("model", "tiny", n_layer=1, n_head=2, n_embd=32, n_positions=128, vocab_size=512, dropout=0.0,
                  tokenizer_dir=tokenizer_dir)
    tok = spec.tokenizer()
    lm = spec.causal_lm(tok)
    steps = {"": 3, "save": 2, "resume": 4}[action]
    common = dict(batch_size=8, minibatches=2, ppo_epochs=3, max_new_tokens=8, max_steps=steps, sample_every=0,
                  missing_eos_penalty=None, target_kl=0.02)
    if algorithm != "grpo":  # a KL controller that moves: its value must stay the same on every rank
        common.update(kl_controller="adaptive", kl_target=0.01, kl_horizon=10)
    reward = LengthReward()
    if algorithm == "ppo":
        s = option("algorithm", "ppo", **common)
        module, prompts = PPOModule(ActorCritic(lm), reference(lm), tok, reward, s), s.batch_size
    else:
        s = option("algorithm", algorithm, group_size=2, **common)
        module, prompts = GroupModule(lm, reference(lm), tok, reward, s), s.batch_size // s.group_size
    gather = Gather(reward, algorithm)
    trainer = pl.Trainer(strategy="ddp", devices=2, accelerator="cpu", max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[gather], use_distributed_sampler=False)  # the data module shards
    trainer.fit(module, datamodule=PromptDataModule(World(0, 0.2).train_prompts, tok, prompts, seed=0),  # shared
                ckpt_path=ckpt if action == "resume" else None, weights_only=True)
    if action == "save":
        trainer.save_checkpoint(ckpt)  # every rank calls it; rank 0 writes
    end = float(torch.cat([p.detach().flatten() for p in module.policy.parameters()]).double().sum())
    if trainer.global_rank == 0:
        Path(out).write_text(json.dumps({"rows": gather.rows, "start": gather.start, "end_iteration": module.iteration,
                                         "end_weights_sum": end}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
