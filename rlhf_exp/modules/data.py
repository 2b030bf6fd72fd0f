"""LightningDataModules: demonstrations for SFT, preference pairs for the reward model, thumbs for a
classifier reward."""
from __future__ import annotations

import random

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from rlhf_exp.feedback.formats import Pair
from rlhf_exp.feedback.prompts import Prompt, sort_key
from rlhf_exp.feedback.sets import comparison_groups, set_ranks
from rlhf_exp.models.generation import encode_prompts, format_prompt, left_pad_collate, reward_text


def split_by_prompt(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train/val split with every prompt on one side only (no leakage through shared prompts). A row's
    `split_prompt`, when it has one, is the prompt it is split by (a conditioned prompt's own,
    feedback/persons.py: every person's pairs of a prompt fall on the same side)."""
    key = lambda r: r.get("split_prompt", r["prompt"])  # noqa: E731
    prompts = sorted({key(r) for r in rows}, key=sort_key)
    random.Random(f"split-{seed}").shuffle(prompts)
    n_val = max(1, round(len(prompts) * val_fraction)) if val_fraction > 0 and len(prompts) > 1 else 0
    val = set(prompts[:n_val])
    return [r for r in rows if key(r) not in val], [r for r in rows if key(r) in val]


def encode_completion(tokenizer, prompt: Prompt, completion: str, max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of prompt + completion + EOS, cut at max_len; labels −100 on the prompt."""
    p = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return (p + c)[:max_len], ([-100] * len(p) + c)[:max_len]


def right_padded(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """(ids, labels) rows -> input_ids, attention_mask, labels padded on the right (positions from 0)."""
    width = max(len(ids) for ids, _ in encoded)
    pad = lambda xs, v: [x + [v] * (width - len(x)) for x in xs]  # noqa: E731
    ids, labels = zip(*encoded)
    return {"input_ids": torch.tensor(pad(ids, pad_id)),
            "attention_mask": torch.tensor(pad([[1] * len(x) for x in ids], 0)),
            "labels": torch.tensor(pad(labels, -100))}


def sft_collate(tokenizer, max_len: int):
    """(prompt, completion) rows -> right-padded input_ids, attention_mask, labels (−100 off the completion)."""
    return lambda rows: right_padded([encode_completion(tokenizer, r["prompt"], r["completion"], max_len)
                                      for r in rows], tokenizer.pad_token_id)


def thumbs_collate(tokenizer, read: str, max_len: int):
    """Thumbs rows {"prompt", "completion", "label"} -> right-padded input_ids, attention_mask and
    labels (B,), the text as the classifier reward reads it (`read`: completion | prompt_completion)."""
    from rlhf_exp.models.reward import classifier_texts

    def collate(rows):
        texts = classifier_texts(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], read)
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                        max_length=max_len)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([r["label"] for r in rows])}
    return collate


def encode_pairs(tokenizer, pairs: list[Pair], max_len: int) -> list[dict]:
    """Preference pairs tokenized once: {"prompt", "chosen": (ids, labels), "rejected": (ids, labels)}."""
    return [{"prompt": p.prompt, "chosen": encode_completion(tokenizer, p.prompt, p.chosen, max_len),
             "rejected": encode_completion(tokenizer, p.prompt, p.rejected, max_len)} for p in pairs]


def pair_rows_collate(pad_id: int):
    """Encoded pairs -> one right-padded batch, every chosen row then every rejected row (one
    forward pass for both), with the reference log-probs `ref_logps` (2P,) once they are known."""
    def collate(rows):
        batch = right_padded([r["chosen"] for r in rows] + [r["rejected"] for r in rows], pad_id)
        if "ref" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref"][0] for r in rows] + [r["ref"][1] for r in rows])
        return batch
    return collate


def encode_sets(tokenizer, pairs: list[Pair], max_len: int) -> list[dict]:
    """Comparison sets (`comparison_groups`) tokenized once for listwise DPO: {"prompt", "items":
    [(ids, labels) of each distinct completion], "ranks"}."""
    rows = []
    for g in comparison_groups(pairs):
        completions, ranks = set_ranks(g["pairs"])
        rows.append({"prompt": g["prompt"], "ranks": ranks,
                     "items": [encode_completion(tokenizer, g["prompt"], c, max_len) for c in completions]})
    return rows


def set_rows_collate(pad_id: int):
    """Encoded sets -> every set's completions as right-padded rows, set after set, with set_idx,
    set_rank and set_mask (S, K) and, once they are known, the reference log-probs `ref_logps` (rows,)."""
    def collate(rows):
        batch = right_padded([item for r in rows for item in r["items"]], pad_id)
        starts = [0]
        for r in rows:
            starts.append(starts[-1] + len(r["items"]))
        batch.update(padded_sets([(list(range(a, a + len(r["items"]))), r["ranks"]) for a, r in zip(starts, rows)]))
        if "ref" in rows[0]:
            batch["ref_logps"] = torch.tensor([x for r in rows for x in r["ref"]])
        return batch
    return collate


def padded_sets(sets: list[tuple[list[int], list[int]]]) -> dict:
    """(item indices, ranks) of each set -> set_idx, set_rank, set_mask (S, K), padded to the largest set."""
    width = max(len(idx) for idx, _ in sets)
    pad = lambda xs: xs + [0] * (width - len(xs))  # noqa: E731
    return {"set_idx": torch.tensor([pad(idx) for idx, _ in sets]),
            "set_rank": torch.tensor([pad(rank) for _, rank in sets]),
            "set_mask": torch.tensor([pad([1] * len(idx)) for idx, _ in sets])}


def pair_collate(tokenizer, max_len: int):
    """Comparison groups -> the batch's distinct texts (each scored once) and, per pair, the
    indices of its chosen and rejected text, its margin and its labelers' agreement; per group, its
    texts' indices and ranks (`padded_sets`, for a listwise loss).
    Padded on the right: a plain forward numbers positions from 0, so left padding would shift them."""
    def collate(groups):
        index: dict[tuple[str, str], int] = {}
        texts, chosen, rejected, margin, agreement, sets = [], [], [], [], [], []
        for pair in (p for g in groups for p in g["pairs"]):
            for key, out in ((pair.chosen, chosen), (pair.rejected, rejected)):
                i = index.setdefault((pair.prompt, key), len(texts))
                if i == len(texts):
                    texts.append(reward_text(tokenizer, pair.prompt, key))
                out.append(i)
            margin.append(0.0 if pair.margin is None else float(pair.margin))
            agreement.append(1.0 if pair.agreement is None else float(pair.agreement))
        for g in groups:
            completions, ranks = set_ranks(g["pairs"])
            sets.append(([index[(g["prompt"], c)] for c in completions], ranks))
        enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right",
                        truncation=True, max_length=max_len)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "chosen_idx": torch.tensor(chosen), "rejected_idx": torch.tensor(rejected),
                "margin": torch.tensor(margin), "agreement": torch.tensor(agreement), **padded_sets(sets)}
    return collate


class ShardedSampler(torch.utils.data.Sampler):
    """The order a seeded `RandomSampler` gives in one process, of which each of W ranks takes its share
    (rank r the entries r, r + W, …, the order cut to a multiple of W): with batches of B / W, the union
    of the ranks' t-th batches is the single process's t-th batch of B. In one process it is that
    RandomSampler, draw for draw. `skip` leaves out the first entries of the next epoch (once: a
    resumed run's first epoch, of which that many were trained on before)."""

    def __init__(self, n: int, generator: torch.Generator, replacement: bool = False, num_samples: int | None = None):
        self.inner = torch.utils.data.RandomSampler(range(n), replacement=replacement, num_samples=num_samples,
                                                    generator=generator)
        self.skip = 0

    def __iter__(self):
        import itertools

        from rlhf_exp.distributed import rank, world_size
        skip, self.skip = self.skip, 0
        w = world_size()
        if w == 1:  # drawn as consumed, as RandomSampler does (the skipped entries drawn, as they were)
            return itertools.islice(iter(self.inner), skip, None)
        order = list(self.inner)
        return iter(order[:len(order) - len(order) % w][rank()::w][skip:])

    def __len__(self) -> int:
        from rlhf_exp.distributed import world_size
        return len(self.inner) // world_size()


class EpochLoader(DataLoader):
    """A DataLoader that notes, as each epoch begins, the state of the generator that draws the
    epoch's order (`order_generator`), so that a checkpoint can bring that epoch back.

    A DataLoader draws a seed for its workers each time an epoch begins, from its `generator` or,
    without one, from torch's global stream, which sampling and dropout share. A run resumed in the
    middle of an epoch begins its (rest of the) epoch where the uninterrupted run drew nothing:
    `resumed_mid_epoch` makes that one draw leave the global stream as it was."""

    def __init__(self, *args, order_generator: torch.Generator, **kwargs):
        super().__init__(*args, **kwargs)
        self.order_generator, self.resumed_mid_epoch = order_generator, False
        self.epoch_state = order_generator.get_state()

    def __iter__(self):
        self.epoch_state = self.order_generator.get_state()
        if not self.resumed_mid_epoch:
            return super().__iter__()
        self.resumed_mid_epoch, state = False, torch.get_rng_state()
        iterator = super().__iter__()
        torch.set_rng_state(state)
        return iterator


class ResumableData(pl.LightningDataModule):
    """A data module whose checkpointed state is where its training data stands: the order of the
    current epoch (its generator's state as the epoch began) and how many of its batches were
    trained on; at an epoch's end, the next epoch from its start. Restored, the next epoch is that
    order from that batch on: a resumed run sees the batches the uninterrupted run would have."""
    loader: EpochLoader | None = None
    resume_at: tuple | None = None

    def resumable(self, loader: EpochLoader) -> EpochLoader:
        self.loader = loader
        if self.resume_at is not None:
            state, batches = self.resume_at
            loader.order_generator.set_state(state)
            loader.sampler.skip = batches * loader.batch_size
            loader.resumed_mid_epoch = batches > 0
            self.resume_at = None
        return loader

    def state_dict(self) -> dict:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= len(self.loader):
            return {"epoch_state": self.loader.order_generator.get_state(), "batches": 0}
        return {"epoch_state": self.loader.epoch_state, "batches": done}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = (state["epoch_state"], state["batches"])


def per_rank(batch_size: int) -> int:
    """A batch of `batch_size` shared by the ranks of a DDP run (the config is checked to divide)."""
    from rlhf_exp.distributed import world_size
    return max(1, batch_size // world_size())


class RowsDataModule(ResumableData):
    """Rows of dicts, split by prompt into train and val, batched by a collate function. Under DDP
    each rank takes its share of every batch (`ShardedSampler`) and validates on all of val."""

    def __init__(self, rows: list[dict], collate, batch_size: int, val_fraction: float, seed: int):
        super().__init__()
        self.train_rows, self.val_rows = split_by_prompt(rows, val_fraction, seed)
        self.collate, self.batch_size, self.seed = collate, batch_size, seed

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.seed)  # draws the loader's seed, then the order, each epoch
        return self.resumable(EpochLoader(self.train_rows, batch_size=per_rank(self.batch_size),
                                          sampler=ShardedSampler(len(self.train_rows), g), collate_fn=self.collate,
                                          generator=g, order_generator=g))

    def val_dataloader(self):
        return DataLoader(self.val_rows, batch_size=self.batch_size, collate_fn=self.collate)


class PromptDataModule(ResumableData):
    """Prompts for rollouts, tokenized once; each epoch is one shuffled pass (drawn with replacement
    when the batch is larger than the prompt set), in full batches; under DDP each rank takes its share."""

    def __init__(self, prompts: list[str], tokenizer, batch_size: int, seed: int):
        super().__init__()
        self.rows = encode_prompts(tokenizer, prompts)
        self.pad_id, self.batch_size, self.seed = tokenizer.pad_token_id, batch_size, seed

    def train_dataloader(self):
        g = torch.Generator().manual_seed(self.seed)
        n = len(self.rows)
        sampler = ShardedSampler(n, g, replacement=self.batch_size > n, num_samples=max(n, self.batch_size))
        return self.resumable(EpochLoader(self.rows, batch_size=per_rank(self.batch_size), sampler=sampler,
                                          drop_last=True, collate_fn=left_pad_collate(self.pad_id), order_generator=g))
