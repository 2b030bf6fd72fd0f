"""`stage=reward_model`: train the reward model on preference pairs; saved to reward_model/ as an
`AutoModelForSequenceClassification` with one output, with the mean and std of its scores on the
reference completions in its config (`reward_mean`, `reward_std`) for normalisation. With
`objective=classifier`, a two-class classifier trained on thumbs up/down instead, saved with its
class names (`id2label`): `reward=classifier` scores with its positive class's logit."""
from __future__ import annotations

from functools import partial
from itertools import combinations
from statistics import mean, pstdev

import pytorch_lightning as pl

from rlhf_exp.feedback.formats import load_heldout, load_pairs, load_thumbs
from rlhf_exp.feedback.persons import (accuracy_by_person, check_person_ids, condition_pairs, conditioned,
                                       one_persons_pairs, person_comparison_groups, person_field, split_condition)
from rlhf_exp.feedback.prompts import sort_key
from rlhf_exp.models.reward import batched_logits, classifier_texts, reward_scores
from rlhf_exp.modules.checkpoints import check_resume
from rlhf_exp.modules.data import RowsDataModule, pair_collate, thumbs_collate
from rlhf_exp.modules.reward import ClassifierModule, RewardModelSettings, RewardModule
from rlhf_exp.stages.context import StageContext

GOLD_TIE = 0.1  # gold-score gaps below this are ties: no gold preference to agree with


def backbone(ctx: StageContext, s: RewardModelSettings, labels: list[str] | None = None):
    """(tokenizer, reward model with a fresh head: one output, or one per class of `labels`) from the
    backbone the settings name."""
    if "reward_model_start" in ctx.outputs:  # rounds with series.reward_model=continue: last round's, head and all
        spec = ctx.built.model.from_dir(ctx.outputs["reward_model_start"])
        tokenizer = spec.tokenizer()
        return tokenizer, spec.trainable(spec.classifier(tokenizer), task="SEQ_CLS")
    spec = ctx.model_spec(s.backbone, "policy", "reward_model.backbone")
    tokenizer = spec.tokenizer()
    return tokenizer, spec.trainable(spec.sequence_classifier(tokenizer, labels), task="SEQ_CLS")  # head trained with LoRA


def gold_accuracy(score, sets: list[tuple[str, list[str]]], data, taste: str | None = None) -> tuple[float, int]:
    """Share of completion pairs of held-out sets ordered as the world's gold (the synthetic world's
    scorer, the real-text world's judge; a taste group's gold with `taste`) orders them (pairs whose
    gold scores differ by less than GOLD_TIE are left out); (NaN, 0) without held-out sets."""
    if not sets:
        return float("nan"), 0
    prompts, texts = zip(*[(p, c) for p, cs in sets for c in cs])
    learned = score(list(prompts), list(texts)).tolist()
    g = [v for gs in data.gold_scores(sets) for v in (data.taste_values(gs, taste) or [s.overall for s in gs])]
    hits, start = [], 0
    for _, cs in sets:
        for i, j in combinations(range(start, start + len(cs)), 2):
            if abs(g[i] - g[j]) >= GOLD_TIE:
                hits.append((learned[i] > learned[j]) == (g[i] > g[j]))
        start += len(cs)
    return (mean(hits) if hits else float("nan")), len(hits)


def gold_accuracy_per_taste(score, sets: list, data, conditions: list[str] | None) -> dict[str, float]:
    """In a world with tastes: for each condition the reward model was trained with (none: the
    reward model as it is), its order of the held-out completions, their prompts given that
    condition, against each taste group's gold: `reward/gold/accuracy_<condition>_<taste>`
    (`reward/gold/accuracy_<taste>` unconditioned)."""
    out = {}
    for c in conditions or [None]:
        scored = score if c is None else \
            (lambda ps, cs, c=c: score([conditioned(split_condition(str(p))[1], c) for p in ps], cs))
        for taste in dict.fromkeys(getattr(data, "tastes", ())):
            out["reward/gold/accuracy_" + (f"{c}_" if c else "") + taste] = gold_accuracy(scored, sets, data, taste)[0]
    return out


def heldout_sets(ctx: StageContext) -> list[tuple[str, list[str]]]:
    """Held-out completion sets: the collect stage's (the policy's own text), else the world's."""
    if "heldout" in ctx.outputs:
        return load_heldout(ctx.outputs["heldout"])
    return ctx.built.data.heldout_sets(ctx.cfg.seed)


def persons_pairs(rows: list, s: RewardModelSettings, source) -> tuple[list, str | None]:
    """(the pairs the reward model trains on, the field that says whose each one is; None: comparison
    sets as always): where persons matter, every pair's ids checked; conditioned on the person
    (`condition_on`) or one person's alone (`person`). A FileError names `source` and the lines."""
    if s.condition_on != "none" or s.person is not None or person_field(rows, "none") is not None:
        check_person_ids(rows, source)
    if s.condition_on != "none":  # a reward model per person: "[labeler or group] " before each prompt
        rows = condition_pairs(rows, s.condition_on, source)
    if s.person is not None:  # one person's reward model: their pairs alone
        rows = one_persons_pairs(rows, s.person, source)
    return rows, person_field(rows, s.condition_on)


def run(ctx: StageContext) -> None:
    s: RewardModelSettings = ctx.built.reward_model
    check_resume(s, "reward_model.ckpt_path")  # before any model is loaded
    pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
    if s.objective == "classifier":
        return run_classifier(ctx, s)
    pairs_path = ctx.input_path(s.pairs, "pairs", "reward_model.pairs")
    rows, person = persons_pairs(load_pairs(pairs_path), s, pairs_path)  # checked before any model loads
    tokenizer, model = backbone(ctx, s)
    dm = RowsDataModule(person_comparison_groups(rows, person), pair_collate(tokenizer, s.max_len), s.batch_size,
                        s.val_fraction, ctx.cfg.seed)
    module = RewardModule(model, s)
    trainer = ctx.trainer("reward_model", checkpoint_every=s.checkpoint_every, max_epochs=s.epochs)
    trainer.fit(module, datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)

    score = partial(reward_scores, model, tokenizer, batch_size=64, max_len=s.max_len)
    reference = sorted({(p.prompt, c) for p in rows for c in (p.chosen, p.rejected)},
                       key=lambda pc: (sort_key(pc[0]), pc[1]))
    ref_scores = score(*map(list, zip(*reference))).tolist()
    model.config.reward_mean, model.config.reward_std = mean(ref_scores), pstdev(ref_scores)
    if s.condition_on != "none":  # what its prompts carry: "[id] " of a labeler or a group
        model.config.condition_on = s.condition_on
        model.config.conditions = sorted({p.extra[s.condition_on] for p in rows})
    if s.person is not None:
        model.config.person = s.person
    ctx.save_pretrained("reward_model", "reward_model", model, tokenizer)

    metrics = {"reward/norm/mean": model.config.reward_mean, "reward/norm/std": model.config.reward_std}
    if person is not None:  # held-out accuracy per person: each group's and labeler's val pairs
        by_person = accuracy_by_person(score, [p for g in dm.val_rows for p in g["pairs"]])
        metrics.update({f"reward/val/accuracy_{k}": acc for k, (acc, _) in by_person.items()})
        metrics.update({f"reward/val/pairs_{k}": n for k, (_, n) in by_person.items()})
    if ctx.built.data.simulated:
        acc, n = gold_accuracy(score, heldout_sets(ctx), ctx.built.data)
        metrics.update({"reward/gold/accuracy": acc, "reward/gold/pairs": n})
        metrics.update(gold_accuracy_per_taste(score, heldout_sets(ctx), ctx.built.data,
                                               getattr(model.config, "conditions", None)))
    ctx.run.log_metrics(metrics, step=trainer.global_step)
    shown = {**{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("reward/val/")}, **metrics}
    print("reward: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))


def run_classifier(ctx: StageContext, s: RewardModelSettings) -> None:
    """A two-class classifier on thumbs up (class_names[1]) and down (class_names[0]), cross-entropy."""
    thumbs = load_thumbs(ctx.input_path(s.thumbs, "thumbs", "reward_model.thumbs"))
    tokenizer, model = backbone(ctx, s, list(s.class_names))
    rows = [{"prompt": b.prompt, "completion": b.completion, "label": b.label} for b in thumbs]
    dm = RowsDataModule(rows, thumbs_collate(tokenizer, s.classifier_input, s.max_len), s.batch_size,
                        s.val_fraction, ctx.cfg.seed)
    trainer = ctx.trainer("reward_model", checkpoint_every=s.checkpoint_every, max_epochs=s.epochs)
    trainer.fit(ClassifierModule(model, s), datamodule=dm, ckpt_path=s.ckpt_path, weights_only=True)
    ctx.save_pretrained("reward_model", "reward_model", model, tokenizer)

    ups = sum(b.label for b in thumbs)
    metrics = {"reward/data/thumbs_up": ups, "reward/data/thumbs_down": len(thumbs) - ups}
    if ctx.built.data.simulated:  # does the positive logit order the held-out sets as the gold score does?
        def score(prompts, completions):  # the positive class's logit, as reward=classifier reads it
            texts = classifier_texts(tokenizer, prompts, completions, s.classifier_input)
            return batched_logits(model, tokenizer, texts, 64, s.max_len)[:, 1]
        acc, n = gold_accuracy(score, heldout_sets(ctx), ctx.built.data)
        metrics.update({"reward/gold/accuracy": acc, "reward/gold/pairs": n})
    ctx.run.log_metrics(metrics, step=trainer.global_step)
    shown = {**{k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("reward/val/")}, **metrics}
    print(f"reward (classifier {s.class_names[0]!r} / {s.class_names[1]!r}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
