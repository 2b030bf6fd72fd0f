"""Benchmarks that report how close an iteration comes to the bare model work it needs.

    python -m rlhf_exp.tools.bench ppo --batch 16 --resp-len 32 --ppo-epochs 4 --steps 8
    python -m rlhf_exp.tools.bench grpo --group-size 4                   # GRPO (or rloo) iterations, the same floor
    python -m rlhf_exp.tools.bench ppo --model smollm2 --lora-r 16      # a real model (or --model DIR), LoRA
    python -m rlhf_exp.tools.bench rollout --model smollm2 --lora-r 16  # decoding alone: each rollout path and its floor

Runs PPO iterations (the real PPOModule in a Lightning Trainer; `grpo` and `rloo`: GroupModule, no
value head, each prompt answered --group-size times) on the tiny model (or the model
given, trained as the `model` group trains it: LoRA when --lora-r > 0) with a reward model of the
same backbone and, after each, the floor of the same shapes in the same process: a bare
`generate` of as many tokens as the rollout had, the no-grad forwards (policy, reference, reward
model) and, for every minibatch, a forward, the log-probs of the sampled tokens (a log-softmax over
the vocabulary, which any implementation computes), a backward, gradient clipping and the optimizer step.
Prints one JSON line; `overhead = median_step_s / floor_step_s`, and `overhead_strict` against a
floor without the clipping and optimizer steps. `--rollout policy|merged` chooses what samples
(`algorithm.rollout`, models/sampler.py). `rollout` times decoding alone, interleaved in one run:
the policy itself (`policy`), its merged copy (`merged`, its refresh included) and the floor that
reading every weight once per decoding step sets (a sum over each weight tensor). Timings on a shared CPU vary run to run; alternating
steps and floors lets both see the same conditions. `--device cuda` runs it all on a GPU (the
timers wait for the device), `--precision bf16-mixed` trains and measures the floor under bfloat16
autocast, as `trainer.precision` does.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from statistics import median

import pytorch_lightning as pl
import torch

from rlhf_exp.config import option, user_cache_dir
from rlhf_exp.core.ops import logprobs_from_logits
from rlhf_exp.errors import UserError


def seconds(x: float) -> float:
    """A time to four significant figures (a fixed number of decimals would lose the ratio of two
    times of a millisecond)."""
    return float(f"{x:.4g}")


def models(args):
    """(tokenizer, policy as trained, reward model): the tiny GPT-2 built from config, `smollm2`, or
    a model directory, with LoRA adapters on the policy when --lora-r > 0."""
    common = {"lora_r": args.lora_r}
    if args.model == "smollm2":
        spec = option("model", "smollm2", **common)
    elif args.model:
        spec = option("model", "hf", name_or_path=args.model, **common)
    else:
        spec = option("model", "tiny", n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                      tokenizer_dir=user_cache_dir() + "/tokenizers", **common)
    tokenizer = spec.tokenizer()
    return tokenizer, spec.trainable(spec.causal_lm(tokenizer)), spec.sequence_classifier(tokenizer)


def described(args) -> dict:
    size = {"model": args.model} if args.model else {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd")}
    where = {"device": args.device, "precision": args.precision}
    if args.device == "cuda":
        where["gpu"] = torch.cuda.get_device_name(0)
    return {**size, "lora_r": args.lora_r, "threads": torch.get_num_threads(), **where}


def device(args) -> torch.device:
    """The device asked for (`--device`), refused by name when it is not there."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: torch sees no CUDA device here (torch.cuda.is_available() is False); "
                        "expected a machine with an NVIDIA GPU and a CUDA build of torch, or --device cpu")
    return torch.device(args.device)


def sync(dev: torch.device) -> None:
    """Wait for the device's queued work, so a timer reads the work done (nothing on a CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def now(dev: torch.device) -> float:
    """The clock, once the device has done what was queued."""
    sync(dev)
    return time.perf_counter()


def autocast(args):
    """bfloat16 autocast for the floor under `--precision bf16-mixed`, as Lightning's plugin wraps the step."""
    return torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")


def trainer_args(args) -> dict:
    """The Trainer's device and precision."""
    return {"accelerator": "gpu" if args.device == "cuda" else "cpu", "devices": 1, "precision": args.precision}


class Interleaved(pl.Callback):
    """Times each training batch (hooks and logging included), then runs one floor measurement
    outside the timed region, so steps and floors alternate and share the machine's moods."""

    def __init__(self, floor, args):
        self.floor, self.args, self.dev, self.steps, self.floors = floor, args, torch.device(args.device), [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.t0 = now(self.dev)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append(now(self.dev) - self.t0)
        with autocast(self.args):  # the floor at the step's precision
            self.floors.append(self.floor(batch, module))


def ppo_floor(lm, ref, rm, opt, batch, s, width: int, group: int = 1, values: bool = True) -> dict[str, float]:
    """The bare model work of one PPO iteration with the same shapes (see the module docstring); with
    `group` > 1 each prompt is answered that many times, and without `values` no hidden state is read."""
    from rlhf_exp.models.value import position_ids, response_positions
    from rlhf_exp.modules.optim import clip_grad_norm
    ids, att = batch["input_ids"].repeat_interleave(group, 0), batch["attention_mask"].repeat_interleave(group, 0)
    params, dev = opt.param_groups[0]["params"], ids.device
    t0 = now(dev)
    with torch.no_grad():
        out = lm.generate(input_ids=ids, attention_mask=att, max_new_tokens=width, min_new_tokens=width,
                          do_sample=True, temperature=s.temperature, top_k=0, top_p=1.0, use_cache=True,
                          pad_token_id=rm.config.pad_token_id, eos_token_id=lm.config.eos_token_id)
    t1 = now(dev)
    full_att = torch.cat([att, torch.ones_like(out[:, ids.shape[1]:])], dim=1)
    pos = position_ids(full_att)
    kw = dict(attention_mask=full_att, position_ids=pos, logits_to_keep=response_positions(out, width),
              use_cache=False)
    with torch.no_grad():
        lm(input_ids=out, output_hidden_states=values, **kw)     # old log-probs (and values)
        ref(input_ids=out, **kw)                                  # reference log-probs
        rm(input_ids=out, attention_mask=full_att, position_ids=pos)  # scores
    t2 = now(dev)
    size = -(-len(out) // s.minibatches)
    step_s = 0.0  # gradient clipping and optimizer steps, also reported apart
    for _ in range(s.ppo_epochs):
        for rows in torch.randperm(len(out)).split(size):
            logits = lm(input_ids=out[rows], output_hidden_states=values,
                        **{**kw, "attention_mask": full_att[rows], "position_ids": pos[rows]}).logits
            logprobs_from_logits(logits, out[rows, -width:]).mean().backward()  # log p of the sampled tokens
            t = now(dev)
            clip_grad_norm(params, s.max_grad_norm)  # as the module clips
            opt.step()
            opt.zero_grad()
            step_s += now(dev) - t
    t3 = now(dev)
    return {"step": t3 - t0, "generate": t1 - t0, "rollout": t2 - t0, "update": t3 - t2, "optimizer": step_s}


def bench_ppo(args) -> dict:
    from rlhf_exp.worlds.synthetic import World
    from rlhf_exp.models.reward import LearnedReward
    from rlhf_exp.models.training import reference
    from rlhf_exp.models.value import ActorCritic
    from rlhf_exp.modules.data import PromptDataModule
    from rlhf_exp.modules.optim import adamw
    from rlhf_exp.modules.grpo import GroupModule
    from rlhf_exp.modules.ppo import PPOModule
    pl.seed_everything(0, verbose=False)
    dev = device(args)
    tokenizer, lm, rm = models(args)
    group = args.group_size if args.bench != "ppo" else 1
    s = option("algorithm", args.bench, batch_size=args.batch, max_new_tokens=args.resp_len, ppo_epochs=args.ppo_epochs,
               minibatches=args.minibatches, max_steps=args.steps + args.warmup, sample_every=0, rollout=args.rollout,
               **({"group_size": group} if group > 1 else {}))
    with tempfile.TemporaryDirectory() as tmp:
        rm.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reward = LearnedReward(path=tmp, normalize=False, batch_size=64, max_len=256)
        reward.loaded  # noqa: B018 -- load before timing
        prompts = World(0, 0.2).train_prompts
        dm = PromptDataModule(prompts, tokenizer, s.batch_size // group, seed=0)
        floor_lm = copy.deepcopy(lm).eval().to(dev)
        trained = [p for p in floor_lm.parameters() if p.requires_grad]
        floor_models = (floor_lm, reference(floor_lm).to(dev), copy.deepcopy(rm).eval().to(dev),
                        adamw(trained, lr=s.lr, eps=1e-5)["optimizer"])  # built once, as the module's
        module = PPOModule(ActorCritic(lm), reference(lm), tokenizer, reward, s) if group == 1 else \
            GroupModule(lm, reference(lm), tokenizer, reward, s)
        timer = Interleaved(lambda batch, m: ppo_floor(*floor_models, batch, s, m.timings[-1]["width"], group,
                                                       values=group == 1), args)
        trainer = pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[timer], **trainer_args(args))
        trainer.fit(module, datamodule=dm)
    floors = timer.floors[args.warmup:]
    measured = module.timings[args.warmup:]
    step = median(timer.steps[args.warmup:])
    floor = median(f["step"] for f in floors)
    return {"bench": args.bench, "rollout": args.rollout, "batch": args.batch, "resp_len": args.resp_len,
            "ppo_epochs": args.ppo_epochs, "minibatches": args.minibatches, **({"group_size": group} if group > 1 else {}), "steps": args.steps,
            **described(args),
            "median_step_s": seconds(step),
            "median_rollout_s": seconds(median(t["rollout_s"] for t in measured)),
            "median_update_s": seconds(median(t["update_s"] for t in measured)),
            "floor_step_s": seconds(floor),
            "floor_generate_s": seconds(median(f["generate"] for f in floors)),
            "floor_rollout_s": seconds(median(f["rollout"] for f in floors)),
            "floor_update_s": seconds(median(f["update"] for f in floors)),
            "floor_optimizer_s": seconds(median(f["optimizer"] for f in floors)),
            "mean_response_width": sum(t["width"] for t in measured) / len(measured),
            "overhead": round(step / floor, 3),
            # against generate + forward + backward alone (optimizer steps and clipping counted as overhead)
            "overhead_strict": round(step / median(f["step"] - f["optimizer"] for f in floors), 3)}


def dpo_floor(lm, opt, batch) -> float:
    """The bare work of one DPO step: a forward of chosen and rejected rows (logits at the positions
    that predict completion tokens, as the step computes them), their log-probs, a backward, an
    optimizer step."""
    dev = batch["input_ids"].device
    t0 = now(dev)
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)  # the same positions as the step's
    keep[:, :-1] = batch["labels"][:, 1:] != -100
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                use_cache=False).logits
    logprobs_from_logits(logits, batch["labels"][:, 1:][keep[:, :-1]]).sum().backward()  # log p of the completion
    opt.step()
    opt.zero_grad()
    return now(dev) - t0


def bench_dpo(args) -> dict:
    from rlhf_exp.modules.data import RowsDataModule, pair_rows_collate
    from rlhf_exp.modules.dpo import DPOModule, cache_reference_logps
    from rlhf_exp.modules.optim import adamw
    pl.seed_everything(0, verbose=False)
    dev = device(args)
    tokenizer, lm, _ = models(args)
    s = option("algorithm", "dpo", batch_size=args.batch, max_len=args.seq_len, epochs=1, warmup_steps=0,
                           val_fraction=0.0)
    g = torch.Generator().manual_seed(0)
    half = args.seq_len // 2  # prompt tokens; the rest is the completion

    def encoded(prompt):
        ids = prompt + torch.randint(3, len(tokenizer), (args.seq_len - half,), generator=g).tolist()
        return ids, [-100] * half + ids[half:]
    rows = []
    for i in range(args.batch * (args.steps + args.warmup)):
        prompt = torch.randint(3, len(tokenizer), (half,), generator=g).tolist()
        rows.append({"prompt": str(i), "chosen": encoded(prompt), "rejected": encoded(prompt)})
    collate = pair_rows_collate(tokenizer.pad_token_id)
    cache_reference_logps(lm, rows, collate)  # once, before training, as the stage does
    floor_lm = copy.deepcopy(lm).eval().to(dev)
    floor_opt = adamw([p for p in floor_lm.parameters() if p.requires_grad], lr=1e-6)["optimizer"]
    timer = Interleaved(lambda batch, m: {"step": dpo_floor(floor_lm, floor_opt, batch)}, args)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[timer], **trainer_args(args))
    trainer.fit(DPOModule(lm, s), datamodule=RowsDataModule(rows, collate, s.batch_size, 0.0, seed=0))
    step = median(timer.steps[args.warmup:])
    floor = median(f["step"] for f in timer.floors[args.warmup:])
    return {"bench": "dpo", "batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
            **described(args), "median_step_s": seconds(step),
            "floor_step_s": seconds(floor), "overhead": round(step / floor, 3)}


def bench_rollout(args) -> dict:
    """Generated tokens per second of each rollout path on the same prompts, interleaved round by
    round, and the memory floor: one read of every weight per decoding step."""
    from rlhf_exp.models.generation import encode_prompts, generate, left_pad_collate
    from rlhf_exp.models.sampler import rollout_model
    from rlhf_exp.worlds.synthetic import World
    dev = device(args)
    tokenizer, lm, _ = models(args)
    lm.eval().to(dev)
    b = left_pad_collate(tokenizer.pad_token_id)(encode_prompts(tokenizer, World(0, 0.2).train_prompts[:args.batch]))
    b = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
    paths = {name: rollout_model(lm, name) for name in ("policy", "merged")}
    weights = list(paths["merged"]().parameters())  # the plain model's (tied weights once)

    def decode(get_model) -> tuple[float, int]:
        torch.manual_seed(0)
        t0 = now(dev)
        with autocast(args):
            roll = generate(get_model(), tokenizer, b["input_ids"], b["attention_mask"], max_new_tokens=args.resp_len,
                            temperature=1.0)
        return now(dev) - t0, roll.response.shape[1]

    def read_weights() -> float:
        t0 = now(dev)
        with torch.no_grad():
            for w in weights:
                w.sum()
        return now(dev) - t0
    per_step = {name: [] for name in (*paths, "floor")}
    for round_ in range(args.warmup + args.steps):
        for name, get in paths.items():
            seconds_, width = decode(get)
            if round_ >= args.warmup:
                per_step[name].append(seconds_ / width)
        if round_ >= args.warmup:
            per_step["floor"].append(median(read_weights() for _ in range(5)))
    ms = {name: median(v) * 1000 for name, v in per_step.items()}
    return {"bench": "rollout", "batch": args.batch, "resp_len": args.resp_len, "rounds": args.steps, **described(args),
            "weights_mb": round(sum(w.numel() * w.element_size() for w in weights) / 2**20, 1),
            **{f"{name}_ms_per_step": seconds(v) for name, v in ms.items()},
            **{f"{name}_tokens_per_s": seconds(args.batch / ms[name] * 1000) for name in paths},
            "speedup_merged": round(ms["policy"] / ms["merged"], 3),
            "merged_over_floor": round(ms["merged"] / ms["floor"], 3),
            "policy_over_floor": round(ms["policy"] / ms["floor"], 3)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlhf_exp.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    ppo = sub.add_parser("ppo", help="PPO iterations against their floor")
    ppo.add_argument("--batch", type=int, default=16, help="rollouts per iteration")
    ppo.add_argument("--resp-len", type=int, default=32, help="response tokens")
    ppo.add_argument("--ppo-epochs", type=int, default=4)
    ppo.add_argument("--minibatches", type=int, default=4)
    ppo.add_argument("--steps", type=int, default=16, help="iterations measured (after --warmup)")
    ppo.add_argument("--warmup", type=int, default=2, help="iterations run first and not measured")
    groups = []
    for name in ("grpo", "rloo"):
        g = sub.add_parser(name, help=f"{name.upper()} iterations against their floor")
        g.add_argument("--batch", type=int, default=16, help="responses per iteration")
        g.add_argument("--group-size", type=int, default=4, help="responses per prompt")
        g.add_argument("--resp-len", type=int, default=32, help="response tokens")
        g.add_argument("--ppo-epochs", type=int, default=2)
        g.add_argument("--minibatches", type=int, default=2)
        g.add_argument("--steps", type=int, default=16, help="iterations measured (after --warmup)")
        g.add_argument("--warmup", type=int, default=2, help="iterations run first and not measured")
        groups.append(g)
    dpo = sub.add_parser("dpo", help="DPO steps against their floor")
    dpo.add_argument("--batch", type=int, default=16, help="pairs per step")
    dpo.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (half prompt, half completion)")
    dpo.add_argument("--steps", type=int, default=30, help="steps measured (after --warmup)")
    dpo.add_argument("--warmup", type=int, default=3)
    rollout = sub.add_parser("rollout", help="decoding alone: each rollout path against the memory floor")
    rollout.add_argument("--batch", type=int, default=8, help="prompts")
    rollout.add_argument("--resp-len", type=int, default=24, help="response tokens (at most: a row stops at EOS)")
    rollout.add_argument("--steps", type=int, default=5, help="rounds measured (after --warmup)")
    rollout.add_argument("--warmup", type=int, default=1, help="rounds run first and not measured")
    for p in (ppo, *groups):
        p.add_argument("--rollout", choices=["policy", "merged"], default="merged",
                       help="what samples: the policy, or its LoRA-merged copy (algorithm.rollout)")
    for p in (ppo, *groups, dpo, rollout):
        for name, default in (("--n-layer", 2), ("--n-head", 4), ("--n-embd", 128)):
            p.add_argument(name, type=int, default=default, help="tiny model size (without --model)")
        p.add_argument("--model", default=None, help="smollm2, or a model directory (default: the tiny GPT-2)")
        p.add_argument("--lora-r", type=int, default=0, help="LoRA rank of the policy (0: full fine-tuning)")
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where it all runs")
        p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true",
                       help="as trainer.precision: float32, or bfloat16 autocast")
    args = parser.parse_args(argv)
    bench = {"dpo": bench_dpo, "rollout": bench_rollout}.get(args.bench, bench_ppo)
    try:
        print(json.dumps(bench(args)))
    except UserError as e:
        print(f"input error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
