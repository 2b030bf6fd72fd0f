"""What a stage function is given, and how it records what it did."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

from omegaconf import DictConfig

import pytorch_lightning as pl

from rlhf_exp.distributed import rank
from rlhf_exp.errors import UserError
from rlhf_exp.modules.algorithms import record_of
from rlhf_exp.modules.checkpoints import check_resume
from rlhf_exp.files import write_text

if TYPE_CHECKING:  # a type only: checks.py, which builds it, imports this module
    from rlhf_exp.stages.checks import Built


@dataclass
class StageContext:
    cfg: DictConfig                 # the resolved config
    built: Built                    # what each node of the config built (stages/checks.py)
    run_dir: Path                   # the Hydra run dir; every output of the run goes under it
    run: Any                        # the stage's tracked run (TrackedRun, or NullRun for logger=none)
    outputs: dict[str, Path] = field(default_factory=dict)  # files of earlier stages, by name
    main_dir: Path | None = None    # rank 0's run dir (another rank of a DDP run writes into a scratch run_dir)

    def __post_init__(self):
        self.main_dir = self.main_dir or self.run_dir

    def input_path(self, explicit: str | None, output: str, key: str) -> Path:
        """A stage's input: the path given on the command line, else an earlier stage's output."""
        if explicit:
            return Path(explicit)
        if output in self.outputs:
            return self.outputs[output]
        raise UserError(f"{key}: no input given; pass {key}=PATH, or run the pipeline "
                        f"(stage=pipeline), whose earlier stages write it")

    def model_spec(self, explicit: str | None, output: str | None = None, key: str | None = None):
        """A model to start from: the directory given (setting `key`, checked now), else an earlier
        stage's output, else the `model` group itself (e.g. the tiny model built from its config).
        A directory is loaded with the `model` group's settings (dtype, trust_remote_code)."""
        from rlhf_exp.models.factory import check_model_dir
        if explicit:
            check_model_dir(Path(explicit), key)
        path = explicit or self.outputs.get(output)
        return self.built.model.from_dir(path) if path else self.built.model

    def reference(self, lm, copy: bool = True):
        """The frozen reference π_ref of a policy about to be aligned: the starting policy itself (LoRA:
        adapters off; else a frozen copy, or `lm` itself with `copy=False`, for log-probs taken once
        before training); or, where a series of rounds names another (`outputs["reference"]`,
        series.reference=sft), that policy loaded frozen with the `model` group's settings."""
        from rlhf_exp.models.training import reference
        if "reference" not in self.outputs:
            return reference(lm) if copy else lm
        spec = self.built.model.from_dir(self.outputs["reference"])
        return spec.causal_lm(spec.tokenizer()).requires_grad_(False).eval()

    def reward_source(self):
        """The `reward` group's source, loading with the `model` group's settings; a learned
        reward or a classifier with no path is this pipeline's reward model."""
        from rlhf_exp.models.reward import ClassifierReward, LearnedReward
        reward = self.built.reward
        key = {LearnedReward: "path", ClassifierReward: "name_or_path"}.get(type(reward))
        if key and not getattr(reward, key):
            if "reward_model" not in self.outputs:
                raise UserError(f"reward.{key}: no reward model given; pass reward.{key}=DIR (a stage=reward_model "
                                "output), choose reward=gold, or run the pipeline")
            reward = dataclasses.replace(reward, **{key: str(self.outputs["reward_model"])})
        reward.models = self.built.model
        return reward

    def device(self):
        """Where the stages that only sample (collect, eval) run: the `trainer` group's accelerator
        (`auto`: the first GPU when there is one), as the trained stages do under Lightning."""
        import torch
        accelerator = self.cfg.trainer.get("accelerator", "auto")
        gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        return torch.device("cuda", 0) if gpu else torch.device("cpu")

    def trainer(self, stage: str, checkpoint_every: int | None = None, callbacks: tuple = (), **overrides):
        """The configured pytorch_lightning.Trainer, logging into this stage's MLflow run,
        checkpointing (for resuming) under checkpoints/<stage>/ in the run directory (every
        `checkpoint_every` training batches when given, else at each epoch's end), and stopping at
        the first non-finite loss or statistic (`DivergenceError`), before the checkpoint is written."""
        from pytorch_lightning.callbacks import ModelCheckpoint

        from rlhf_exp.config import build
        from rlhf_exp.modules.checkpoints import PeriodicCheckpoint, RandomStates
        from rlhf_exp.modules.guard import StopOnNonFinite, WeightsMustMove
        skip = self.built.run.nonfinite == "skip"
        callbacks = [*callbacks, StopOnNonFinite(stage, skip), WeightsMustMove(stage), RandomStates()]
        if self.cfg.trainer.get("enable_checkpointing", True) and not self.cfg.trainer.get("fast_dev_run"):
            where = self.run_dir / "checkpoints" / stage
            callbacks.append(PeriodicCheckpoint(where, checkpoint_every) if checkpoint_every else
                             ModelCheckpoint(dirpath=where, save_last=True))
        # the data modules shard each batch over the ranks themselves (modules/data.ShardedSampler)
        return build(self.cfg.trainer, logger=self.run.lightning_logger(), callbacks=callbacks,
                     use_distributed_sampler=False, **overrides)

    def rollout_reward(self, prefix: str):
        """(the reward source an on-policy algorithm scores rollouts with, the callbacks that go with
        it): in a simulated world, the source also keeps the world's gold score of each iteration's
        rollouts, which `LogGold` logs as `<prefix>/gold/score_mean` (modules/gold.py)."""
        reward = self.reward_source()
        if not self.built.data.simulated:
            return reward, ()
        from rlhf_exp.modules.gold import LogGold, WithGold
        tracked = WithGold(reward, self.built.data.gold_scores)
        return tracked, (LogGold(tracked, prefix),)

    def policy_to_align(self, s) -> tuple:
        """(policy, tokenizer) of an alignment stage, after its checkpoint is checked (before any model
        loads) and the seed set (an on-policy algorithm's ranks each sample their own answers: seed +
        rank): `algorithm.policy`, else an earlier stage's policy, else the `model` group, with LoRA
        adapters when model.lora_r > 0."""
        check_resume(s, "algorithm.ckpt_path")
        pl.seed_everything(self.cfg.seed + (rank() if record_of(s).on_policy else 0), workers=True, verbose=False)
        spec = self.model_spec(s.policy, "policy", "algorithm.policy")
        tokenizer = spec.tokenizer()
        return spec.trainable(spec.causal_lm(tokenizer)), tokenizer

    def heldout_eval(self, prefix: str, s, lm, ref, tokenizer, reward=None) -> tuple:
        """The callbacks of align's held-out evaluation (`algorithm.eval_every`, modules/heldout.py):
        none when it is off. `reward` scores the answers (default: the `reward` group's source);
        sampling as `stage=eval` samples (the eval group's batch size, length and temperature)."""
        if not s.eval_every:
            return ()
        from rlhf_exp.config import ConfigError
        from rlhf_exp.modules.heldout import HeldoutEval
        data = self.built.data
        if s.stop_on == "gold" and not data.simulated:
            raise ConfigError("algorithm.stop_on = 'gold': this data source has no gold scorer (only the simulated "
                              "worlds have one); expected algorithm.stop_on=reward or null")
        prompts = self.align_prompts(s)[1]
        e = self.built.eval
        return (HeldoutEval(prefix, s, lm, ref, tokenizer, prompts, reward or self.reward_source(),
                            data.eval_measures if data.simulated else None,
                            (e.batch_size, e.max_new_tokens, e.temperature), self.cfg.seed, self.run.log_metrics,
                            best_path=self.run_dir / "checkpoints" / "align" / "best.pt" if s.stop_on else None),)

    def align_prompts(self, s) -> tuple[list, list]:
        """(the prompts an alignment stage trains on, the prompts its in-loop evaluation answers): the
        training prompts and the first `eval_prompts` held-out prompts; with `eval_on=validation`,
        `eval_prompts` training prompts drawn by seed and left out of training (settings chosen on
        them never see eval's prompts)."""
        import random

        from rlhf_exp.config import ConfigError
        data = self.built.data
        train = data.train_prompts()
        if s.eval_on == "heldout":
            return train, (data.heldout_prompts() or train)[:s.eval_prompts]
        if s.eval_prompts >= len(train):
            raise ConfigError(f"algorithm.eval_prompts = {s.eval_prompts} with eval_on=validation: expected fewer than "
                              f"the {len(train)} training prompts (they are split into training and validation)")
        held = set(random.Random(f"validation-{self.cfg.seed}").sample(range(len(train)), s.eval_prompts))
        return [p for i, p in enumerate(train) if i not in held], [train[i] for i in sorted(held)]

    def align_rows(self, s, rows: list, prompt_of) -> list:
        """The feedback rows (pairs, thumbs) an offline alignment stage trains on: with
        `eval_on=validation`, those of the validation prompts left out (`align_prompts`)."""
        if s.eval_on == "heldout":
            return rows
        from rlhf_exp.feedback.prompts import sort_key
        held = {sort_key(p) for p in self.align_prompts(s)[1]}
        return [r for r in rows if sort_key(prompt_of(r)) not in held]

    def save_pretrained(self, name: str, dirname: str, model, tokenizer) -> Path:
        """Save a model and its tokenizer with save_pretrained to run_dir/dirname (a LoRA model: merged
        there, and its adapter in dirname_adapter/); record it as `name`. In a DDP run rank 0 writes
        it and the other ranks (whose weights are the same) wait, then read rank 0's."""
        from rlhf_exp.distributed import barrier, is_main
        from rlhf_exp.models.training import save_trained
        from rlhf_exp.models.sharding import full_state_dict
        weights = full_state_dict(model)  # trainer=fsdp2: every rank gathers, rank 0 gets the whole weights
        written = save_trained(model, tokenizer, self.main_dir / dirname, weights) if is_main() else None
        barrier()
        out, *adapter = written or [self.main_dir / dirname] + (
            [self.main_dir / f"{dirname}_adapter"] if (self.main_dir / f"{dirname}_adapter").is_dir() else [])
        for path in adapter:
            self.save(f"{name}_adapter", path)
        return self.save(name, out)

    def save_text(self, name: str, filename: str, text: str) -> Path:
        """Write a text file into the run dir (atomically) and record it as `name`."""
        return self.save(name, write_text(self.run_dir / filename, text))

    def save(self, name: str, path: Path) -> Path:
        """Record an output file: logged as an artifact and passed on to later stages."""
        self.outputs[name] = path
        self.run.log_artifact(path)
        return path
