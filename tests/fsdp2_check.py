"""Run by tests/test_fsdp2.py as `python tests/fsdp2_check.py ALGORITHM STRATEGY TOKENIZER_DIR OUT_DIR`:
PPO, GRPO or RLOO on two CPU processes (gloo), STRATEGY `ddp` (whole weights on every rank) or `fsdp2`
(Lightning's ModelParallelStrategy, weights sharded by the modules' configure_model), each rank
sampling its own rollouts with the same seeds either way, the first-minibatch invariant checked at
every iteration. Rank 0 writes OUT_DIR/seen.json (the losses logged at every iteration, the final
weights; with fsdp2, the widths of a generation that stops at another step on each rank) and the policy
with the stage's save_trained to OUT_DIR/policy."""
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhf_exp.config import option  # noqa: E402
from rlhf_exp.distributed import barrier, gather_objects, rank  # noqa: E402
from rlhf_exp.models.generation import generate  # noqa: E402
from rlhf_exp.models.sharding import full_state_dict, is_sharded  # noqa: E402
from rlhf_exp.models.training import reference, save_trained  # noqa: E402
from rlhf_exp.models.value import ActorCritic  # noqa: E402
from rlhf_exp.modules.data import PromptDataModule  # noqa: E402
from rlhf_exp.modules.grpo import GroupModule  # noqa: E402
from rlhf_exp.modules.ppo import PPOModule  # noqa: E402
from rlhf_exp.worlds.synthetic import World  # noqa: E402
from tests.ddp_check import LengthReward  # noqa: E402


class Losses(pl.Callback):
    def __init__(self, prefix):
        self.prefix, self.rows = prefix, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rows.append({k: outputs[f"{self.prefix}/{k}"] for k in ("policy/loss", "loss/total", "policy/approx_kl",
                                                                    "reward/score_mean", "kl/ref")})


def ranks_stopping_apart(lm, tok) -> list[int]:
    """The sharded policy generates on each rank a response of its own length (rank r stops after
    2 + 4·r tokens, as a rank whose rows all reached EOS early stops): without ranks kept in step, one
    rank would wait forever in a collective of the other's extra forwards. The widths of every rank."""
    ids = torch.tensor([tok("Tell me a fact.\n")["input_ids"]])
    roll = generate(lm, tok, ids, torch.ones_like(ids), max_new_tokens=2 + 4 * rank(), temperature=1.0)
    return gather_objects(roll.n_response)


def main(algorithm: str, strategy: str, tokenizer_dir: str, out: str) -> None:
    pl.seed_everything(rank(), verbose=False)  # as the stage does: each rank samples its own
    spec = option("model", "tiny", n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=512, dropout=0.0,
                  tokenizer_dir=tokenizer_dir)
    tok = spec.tokenizer()
    lm = spec.causal_lm(tok)
    common = dict(batch_size=8, minibatches=2, ppo_epochs=2, max_new_tokens=8, max_steps=2, sample_every=0,
                  missing_eos_penalty=None, check_invariants=True)
    if algorithm == "ppo":
        s = option("algorithm", "ppo", **common)
        module, prompts = PPOModule(ActorCritic(lm), reference(lm), tok, LengthReward(), s), s.batch_size
    else:
        s = option("algorithm", algorithm, group_size=2, **common)
        module, prompts = GroupModule(lm, reference(lm), tok, LengthReward(), s), s.batch_size // s.group_size
    losses = Losses(algorithm)
    plan = pl.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                               save_distributed_checkpoint=False) if strategy == "fsdp2" else "ddp"
    trainer = pl.Trainer(strategy=plan, devices=2, accelerator="cpu", max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[losses], use_distributed_sampler=False)  # the data module shards
    trainer.fit(module, datamodule=PromptDataModule(World(0, 0.2).train_prompts, tok, prompts, seed=0))
    widths = ranks_stopping_apart(lm, tok) if strategy == "fsdp2" else None
    weights = full_state_dict(lm)  # every rank gathers the sharded weights; None unsharded
    sharded = is_sharded(lm)
    if trainer.global_rank == 0:
        weights = weights if weights is not None else lm.state_dict()
        flat = torch.cat([weights[k].detach().flatten().float() for k in sorted(weights)])
        save_trained(lm, tok, Path(out) / "policy", weights if sharded else None)  # save_pretrained empties it
        (Path(out) / "seen.json").write_text(json.dumps({"rows": losses.rows, "weights": flat.tolist(),
                                                         "sharded": sharded, "iterations": module.iteration,
                                                         "widths": widths}))
    barrier()


if __name__ == "__main__":
    main(*sys.argv[1:5])
