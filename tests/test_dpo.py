"""DPO on tiny sizes: completion log-probs, reference log-probs cached once, the loss at the start
(policy = reference: log 2), one training run that separates chosen from rejected."""
import math

import pytest
import pytorch_lightning as pl
import torch

from rlhf_exp.feedback.formats import Pair
from rlhf_exp.modules.data import RowsDataModule, encode_pairs, pair_rows_collate
from rlhf_exp.modules.dpo import DPOModule, cache_reference_logps, completion_logps
from tests.conftest import settings as conf_settings

PAIRS = [Pair(f"How do I {verb} a {thing}?", f"Carefully {verb} the {thing}, step by step.",
              f"You are wrong about the {thing}.")
         for verb in ("fix", "clean", "paint", "move") for thing in ("bike", "door", "lamp", "chair")]


def settings(**kw):
    return conf_settings("algorithm", "dpo", **{"beta": 0.1, "epochs": 1, "batch_size": 4, "lr": 3e-3,
                                                "warmup_steps": 0, "max_len": 64, "val_fraction": 0.25, **kw})


def test_completion_logps_sum_the_completion_tokens_and_ignore_padding(tiny):
    spec, tok = tiny
    torch.manual_seed(0)
    lm = spec.causal_lm(tok).eval()
    rows = encode_pairs(tok, PAIRS[:3], 64)
    batch = pair_rows_collate(tok.pad_token_id)(rows)
    together = completion_logps(lm, batch)                                # (6,): 3 chosen, then 3 rejected
    ids, labels = rows[1]["rejected"]
    alone = pair_rows_collate(tok.pad_token_id)([{"chosen": (ids, labels), "rejected": (ids, labels)}])
    with torch.no_grad():
        logits = lm(input_ids=alone["input_ids"][:1]).logits[0]
    by_hand = sum(torch.log_softmax(logits[t - 1], -1)[ids[t]] for t in range(len(ids)) if labels[t] != -100)
    assert torch.isclose(together[4], by_hand, atol=1e-4)


def test_dpo_starts_at_log_2_and_learns_to_prefer_the_chosen(tiny):
    spec, tok = tiny
    torch.manual_seed(0)
    lm = spec.causal_lm(tok)
    rows = encode_pairs(tok, PAIRS, 64)
    collate = pair_rows_collate(tok.pad_token_id)
    cache_reference_logps(lm, rows, collate, batch_size=5)
    assert lm.training and len({r["ref"] for r in rows}) == len(rows)  # mode restored; one pair each
    dm = RowsDataModule(rows, collate, batch_size=4, val_fraction=0.25, seed=0)
    module = DPOModule(lm, settings(epochs=8))
    trainer = pl.Trainer(max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", log_every_n_steps=1)
    start = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert start["dpo/val/loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy = cached reference
    assert start["dpo/val/rewards/margin"] == pytest.approx(0, abs=1e-5)

    trainer.fit(module, datamodule=dm)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert {"dpo/train/loss", "dpo/rewards/chosen", "dpo/rewards/rejected", "dpo/rewards/accuracy",
            "dpo/rewards/margin", "dpo/val/loss"} <= set(m)
    assert m["dpo/val/loss"] < math.log(2) and m["dpo/val/rewards/margin"] > 0


def test_loss_types_are_checked_when_the_settings_are_built():
    with pytest.raises(ValueError, match="loss_type = 'kto': expected one of 'sigmoid', 'ipo', 'hinge'"):
        settings(loss_type="kto")


def ranked_pairs():
    """Sets of four completions ranked best first with a tie in third place (no pair between them),
    as prepare writes them: the N-choose-2 pairs of each ranking, with its set id."""
    out = []
    for i, thing in enumerate(("bike", "door", "lamp", "chair")):
        a, b, c, d = (f"Carefully fix the {thing}, step by step.", f"Fix the {thing}.", "I do not know.",
                      f"You are wrong about the {thing}.")
        out += [Pair(f"How do I fix a {thing}?", x, y, set_id=i)
                for x, y in ((a, b), (a, c), (a, d), (b, c), (b, d))]
    return out


def test_sets_come_back_from_their_pairs_with_ties_and_batch_every_completion_once(tiny):
    from rlhf_exp.feedback.sets import set_ranks
    from rlhf_exp.modules.data import encode_sets, set_rows_collate
    spec, tok = tiny
    pairs = ranked_pairs()
    assert set_ranks(pairs[:5]) == (["Carefully fix the bike, step by step.", "Fix the bike.", "I do not know.",
                                     "You are wrong about the bike."], [1, 2, 3, 3])
    rows = encode_sets(tok, pairs, 64)
    assert len(rows) == 4 and [len(r["items"]) for r in rows] == [4, 4, 4, 4]
    batch = set_rows_collate(tok.pad_token_id)(rows[:2])
    assert batch["input_ids"].shape[0] == 8 and batch["set_idx"].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert batch["set_rank"].tolist() == [[1, 2, 3, 3]] * 2 and batch["set_mask"].sum() == 8


def test_listwise_dpo_starts_at_the_plackett_luce_loss_of_equal_rewards_and_learns_the_rankings(tiny):
    from rlhf_exp.modules.data import encode_sets, set_rows_collate
    from rlhf_exp.modules.dpo import set_refs
    spec, tok = tiny
    torch.manual_seed(0)
    lm = spec.causal_lm(tok)
    s = settings(loss_type="plackett_luce", batch_size=2, epochs=15, val_fraction=0.0)
    rows, collate = encode_sets(tok, ranked_pairs(), s.max_len), set_rows_collate(tok.pad_token_id)
    cache_reference_logps(lm, rows, collate, refs=set_refs)
    assert all(len(r["ref"]) == 4 for r in rows)
    module = DPOModule(lm, s)
    module.log_dict = lambda *a, **k: None
    lm.eval()  # as in training (dropout off) and as the reference log-probs were computed
    first = module._step(collate(rows[:2]), "train").item()
    # policy = reference: every implicit reward 0; the best competes with 4, the second with 3, the tied two with none
    assert first == pytest.approx(math.log(4) + math.log(3), abs=1e-4)
    pl.Trainer(max_epochs=s.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", limit_val_batches=0).fit(
        module, datamodule=RowsDataModule(rows, collate, s.batch_size, 0.0, 0))
    assert module._step(collate(rows[:2]), "train").item() < first - 0.5
