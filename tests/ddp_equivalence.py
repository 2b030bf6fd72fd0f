"""Run by tests/test_distributed.py as `python tests/ddp_equivalence.py STAGE WORLD TOKENIZER_DIR OUT.json`:
a few steps of SFT, the reward model or DPO on WORLD CPU processes (Lightning DDP when WORLD > 1, this
script running once per rank), the global batch the same whatever WORLD is. Rank 0 writes the loss
logged at every step and the final weights' checksum to OUT.json."""
import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlhf_exp.config import option  # noqa: E402
from rlhf_exp.feedback.formats import Pair  # noqa: E402
from rlhf_exp.feedback.sets import comparison_groups  # noqa: E402
from rlhf_exp.worlds.synthetic import World  # noqa: E402
from rlhf_exp.modules import data  # noqa: E402


class Losses(pl.Callback):
    def __init__(self, key):
        self.key, self.values = key, []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(trainer.callback_metrics[self.key]))


def main(stage: str, world: str, tokenizer_dir: str, out: str) -> None:
    pl.seed_everything(0, verbose=False)
    spec = option("model", "tiny", n_layer=1, n_head=2, n_embd=32, n_positions=128, vocab_size=512, dropout=0.0,
                  tokenizer_dir=tokenizer_dir)
    tok = spec.tokenizer()
    w = World(0, 0.2)
    demos = w.demonstrations(1)[:32]
    # comparison sets of one or two pairs: the pairs per rank differ, the loss is still the whole batch's mean
    pairs = [Pair(d["prompt"], d["completion"], bad, set_id=i) for i, d in enumerate(demos)
             for bad in (["You are wrong.", "I do not know."] if i % 2 else ["You are wrong."])]
    if stage == "sft":
        from rlhf_exp.modules.sft import SFTModule
        s = option("sft", "default", batch_size=8, lr=1e-3, warmup_steps=0, val_fraction=0.0, n_samples=0)
        module, key = SFTModule(spec.causal_lm(tok), tok, s, []), "sft/train/loss"
        dm = data.RowsDataModule(demos, data.sft_collate(tok, 64), s.batch_size, 0.0, 0)
    elif stage == "reward_model":
        from rlhf_exp.modules.reward import RewardModule
        s = option("reward_model", "default", batch_size=8, lr=1e-3, val_fraction=0.0)
        module, key = RewardModule(spec.sequence_classifier(tok), s), "reward/train/loss"
        dm = data.RowsDataModule(comparison_groups(pairs), data.pair_collate(tok, 64), s.batch_size, 0.0, 0)
    else:
        from rlhf_exp.modules.dpo import DPOModule, cache_reference_logps
        s = option("algorithm", "dpo", batch_size=8, lr=1e-3, warmup_steps=0, val_fraction=0.0, max_len=64)
        lm = spec.causal_lm(tok)
        rows, collate = data.encode_pairs(tok, pairs[:32], 64), data.pair_rows_collate(tok.pad_token_id)
        cache_reference_logps(lm, rows, collate)
        module, key = DPOModule(lm, s), "dpo/train/loss"
        dm = data.RowsDataModule(rows, collate, s.batch_size, 0.0, 0)
    losses = Losses(key)
    n = int(world)
    trainer = pl.Trainer(strategy="ddp" if n > 1 else "auto", devices=n, accelerator="cpu", max_steps=4,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
                         use_distributed_sampler=False, callbacks=[losses])
    trainer.fit(module, datamodule=dm)
    if trainer.global_rank == 0:
        weights = torch.cat([p.detach().flatten() for p in module.parameters() if p.requires_grad])
        Path(out).write_text(json.dumps({"losses": losses.values, "weights": weights.tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
