"""Held-out evaluation during align (`algorithm.eval_every`): every N iterations (PPO, GRPO, RLOO) or
optimizer steps (DPO) the policy answers the first `eval_prompts` held-out prompts once, and the
world's score (gold, or the judge), the reward model's score, the KL to the reference and the win
rate against the reference's answers (by the reward model) are logged as `<prefix>/heldout/*`
curves, step 0 being the starting policy: over-optimisation shows as it happens (the proxy still
rising while the held-out gold turns down). Sampling runs on a forked random state seeded anew each
time, so training draws exactly the numbers it would draw without it. With `stop_on` the policy of
the best evaluation is kept (its trainable weights restored when training ends, so that is what the
stage saves) and training stops after `patience` evaluations without improvement. The best weights
are also written to disk at once, atomically (`best_path`, beside the stage's last.ckpt, as a
ModelCheckpoint keeps its best), and the callback's state (the best score and step, the evaluations
since) travels in every checkpoint: a run resumed after a crash starts from that best, not from none."""
from __future__ import annotations

from typing import Annotated, Literal

import pydantic
import pytorch_lightning as pl
import torch
from pydantic import Field

from pathlib import Path

from rlhf_exp.config import schema
from rlhf_exp.core.stats import mean_se
from rlhf_exp.files import atomic_path
from rlhf_exp.models.training import adapters_off
from rlhf_exp.distributed import rank
from rlhf_exp.modules.rollout import sample_rollouts, sequence_kl


@schema
class InLoopEvalSettings:
    """The held-out evaluation every alignment algorithm can run during training (its YAML gives each
    default and meaning)."""
    eval_every: Annotated[int, Field(ge=0)]         # iterations or steps between evaluations; 0 = none
    eval_prompts: Annotated[int, Field(ge=1)]       # the first N held-out prompts, one answer each
    eval_on: Literal["heldout", "validation"]       # eval's held-out prompts, or training prompts left out of training
    stop_on: Literal["gold", "reward"] | None       # keep the best evaluation's policy by this; null = the last
    patience: Annotated[int, Field(ge=1)]           # evaluations without improvement before stopping

    @pydantic.model_validator(mode="after")
    def _stop_needs_evaluations(self):
        if self.stop_on and not self.eval_every:
            raise ValueError(f"algorithm.stop_on = {self.stop_on!r} needs held-out evaluations: expected "
                             "algorithm.eval_every > 0")
        return self


class HeldoutEval(pl.Callback):
    """See the module docstring. `measures(prompts, texts) -> {name: per-answer values}` is the
    world's (its first measure is its main score: gold or judge), None without one; `write(metrics,
    step)` writes to the stage's tracked run; `sampling` = (batch_size, max_new_tokens, temperature)."""

    def __init__(self, prefix: str, s: InLoopEvalSettings, lm, ref, tokenizer, prompts: list, reward, measures,
                 sampling: tuple[int, int, float], seed: int, write, best_path: Path | None = None):
        self.prefix, self.s, self.lm, self.ref, self.tokenizer = prefix, s, lm, ref, tokenizer
        self.prompts, self.reward, self.measures, self.sampling, self.seed, self.write = \
            prompts, reward, measures, sampling, seed, write
        self.best_path = best_path  # where the best evaluation's trainable weights are written (stop_on)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.best: tuple[float, int, list[torch.Tensor]] | None = None
        self.since_best, self.ref_rewards, self.done = 0, None, -1

    def _answers(self, model, kl: bool) -> tuple[list[str], list[float]]:
        """`model`'s answers to the prompts and, with `kl`, each one's KL to the reference (sampled on
        a forked, freshly seeded random state)."""
        batch_size, max_new_tokens, temperature = self.sampling
        texts, kls = [], []
        devices = [self.lm.device] if self.lm.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            for r in sample_rollouts(model, self.tokenizer, self.prompts, batch_size, max_new_tokens, temperature):
                texts += r.texts
                if kl:
                    kls += sequence_kl(model, self.ref, r, temperature)
        model.train(was_training)
        return texts, kls

    def _reference_answers(self) -> list[str]:
        """The reference's answers: a frozen copy's, or the policy's own with its LoRA adapters off."""
        if isinstance(self.ref, torch.nn.Module):
            return self._answers(self.ref.to(self.lm.device), kl=False)[0]
        with adapters_off(self.lm):
            return self._answers(self.lm, kl=False)[0]

    def evaluate(self, step: int) -> dict[str, float]:
        if self.ref_rewards is None:  # the reference answers once
            self.ref_rewards = self.reward.score(self.prompts, self._reference_answers()).tolist()
        texts, kl = self._answers(self.lm, kl=True)
        rewards = self.reward.score(self.prompts, texts).tolist()
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, self.ref_rewards)]
        measured = self.measures(self.prompts, texts) if self.measures else {}
        if measured:  # the world's main score (its first measure: gold, or the judge) also as `gold`
            measured = {"gold": next(iter(measured.values())), **measured}
        metrics = {}
        for name, values in [("reward", rewards), ("kl", kl), ("win_rate", wins), *measured.items()]:
            metrics[f"{self.prefix}/heldout/{name}"], metrics[f"{self.prefix}/heldout/{name}_se"] = mean_se(values)
        self.history.append((step, metrics))
        self.write(metrics, step)  # (Lightning gives every callback a `log` of its own: the module's)
        return metrics

    def _step(self, trainer, module) -> int:
        """Iterations for the on-policy modules (they count them), optimizer steps for DPO."""
        return int(getattr(module, "iteration", trainer.global_step))

    def on_train_start(self, trainer, pl_module):
        self._maybe(trainer, pl_module, self._step(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe(trainer, pl_module, self._step(trainer, pl_module))

    def _maybe(self, trainer, module, step: int) -> None:
        if step % self.s.eval_every or step <= self.done:
            return
        self.done = step
        metrics = self.evaluate(step)
        if not self.s.stop_on:
            return
        score = metrics[f"{self.prefix}/heldout/{self.s.stop_on}"]
        if self.best is None or score > self.best[0]:
            weights = [p.detach().clone() for p in self.lm.parameters() if p.requires_grad]
            self.best, self.since_best = (score, step, weights), 0
            self._write_best()
            return
        self.since_best += 1
        if self.since_best >= self.s.patience:
            trainer.should_stop = True
            if hasattr(module, "stop_reason"):
                module.stop_reason = (f"held-out {self.s.stop_on} did not improve for {self.s.patience} evaluations "
                                      f"(best {self.best[0]:.3f} at step {self.best[1]})")

    def _write_best(self) -> None:
        """The best evaluation's trainable weights, its score and step, to `best_path` (atomically: a
        crash while writing leaves the previous best whole). Rank 0 writes."""
        if self.best_path is None or rank() != 0:
            return
        score, step, weights = self.best
        self.best_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.best_path) as tmp:
            torch.save({"score": score, "step": step, "weights": [w.cpu() for w in weights]}, tmp)

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the evaluations: the best score and step (its weights are in
        `best_path`), the evaluations since, the last step evaluated and the curve so far."""
        best = None if self.best is None else {"score": self.best[0], "step": self.best[1]}
        return {"best": best, "since_best": self.since_best, "done": self.done, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run goes on with the evaluations it had: the best weights come back from
        `best_path` (written when that evaluation was made, so they are there whenever the state
        names them)."""
        self.since_best, self.done, self.history = state["since_best"], state["done"], state["history"]
        best = state["best"]
        if best is None:
            return
        saved = torch.load(self.best_path, map_location="cpu", weights_only=True) if self.best_path else None
        if saved is None or saved["step"] < best["step"]:
            raise RuntimeError(f"resuming held-out evaluation: the best evaluation (step {best['step']}) has no "
                               f"weights at {self.best_path}")
        # a later best than the checkpoint's (made after it, before the crash) is made again by the
        # replayed steps; until then the checkpoint's best is the best
        self.best = (best["score"], best["step"], [w.to(self.lm.device) for w in saved["weights"]]) \
            if saved["step"] == best["step"] else (best["score"], best["step"], None)

    def on_train_end(self, trainer, pl_module):
        if not self.s.stop_on or self.best is None:
            return
        score, step, weights = self.best
        if weights is None:  # a later best was on disk at resume and the replayed steps did not make it again
            raise RuntimeError(f"held-out evaluation: resumed with the best of step {step}, whose weights a later "
                               f"best overwrote in {self.best_path}, and training ended before reaching that later "
                               "step again; expected the resumed run to reach it (same settings as the first run)")
        with torch.no_grad():
            for p, w in zip((p for p in self.lm.parameters() if p.requires_grad), weights, strict=True):
                p.copy_(w)
        self.write({f"{self.prefix}/heldout/best_step": float(step), f"{self.prefix}/heldout/best": score},
                 self.history[-1][0] if self.history else 0)
