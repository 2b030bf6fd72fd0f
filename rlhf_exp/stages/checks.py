"""Checking a whole config when it is composed, before any work: every node built (each problem named,
all at once), then what no single node can see: the strategy against the algorithm, the reward source
against the reward model, a reused run's world, a series' inputs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import Field

from rlhf_exp.config import ConfigError, collect, schema
from rlhf_exp.feedback.formats import load_heldout
from rlhf_exp.feedback.persons import split_condition
from rlhf_exp.feedback.prompts import sort_key
from rlhf_exp.models.reward import ClassifierReward, GoldReward, JudgeReward, LearnedReward
from rlhf_exp.modules.algorithms import record_of, records
from rlhf_exp.feedback.hf import HFData
from rlhf_exp.feedback.sources import FeedbackFile
from rlhf_exp.models.factory import HFModel, TinyGPT2, TinyLlama
from rlhf_exp.modules.reward import RewardModelSettings
from rlhf_exp.modules.sft import SFTSettings
from rlhf_exp.stages import label
from rlhf_exp.stages.collect import CollectSettings
from rlhf_exp.stages.eval import EvalSettings
from rlhf_exp.stages.label import LabelSettings
from rlhf_exp.stages.prepare import PrepareSettings
from rlhf_exp.stages.record import RECORD
from rlhf_exp.stages.rounds import SeriesSettings
from rlhf_exp.stages.runner import REUSABLE, STAGES, STANDALONE, planned, reused_outputs
from rlhf_exp.tracking.tracker import MLflowTracker, NoTracker
from rlhf_exp.worlds.chat_data import ChatData
from rlhf_exp.worlds.synthetic_data import SyntheticData

PLAIN_NODES = ("paths",)  # nodes of plain values, interpolated elsewhere; they build nothing


@schema
class RunSettings:
    """The top-level keys (conf/config.yaml)."""
    stage: str | list[str]       # pipeline, one stage, a list of stages (run in order), or a standalone one
    seed: Annotated[int, Field(ge=0)]
    experiment_name: str
    reuse: str | None            # an earlier pipeline run dir whose stage outputs are taken as they are (stage=pipeline or a list)
    resume: str | None           # an interrupted run's dir, continued in place (the CLI runs it there)
    metric: str                  # the metric a sweep optimises (returned to Hydra's sweeper)
    nonfinite: Literal["stop", "skip"]  # at a non-finite loss, reward or gradient: stop, or skip that update
    rounds: Annotated[int, Field(ge=1, strict=True)]  # N > 1: sft, then N rounds of collect -> ... -> align (stages/rounds.py)

    @pydantic.model_validator(mode="after")
    def _known_stages(self):
        choices = ("pipeline", *STAGES, *STANDALONE)
        if isinstance(self.stage, str) and self.stage not in choices:
            raise ValueError(f"stage = {self.stage!r}: expected one of {', '.join(map(repr, choices))}, or a "
                             "list of stages, e.g. stage=[prepare,reward_model]")
        if isinstance(self.stage, list) and (not self.stage or not set(self.stage) <= set(STAGES) or
                                             self.stage != sorted(set(self.stage), key=list(STAGES).index)):
            raise ValueError(f"stage = {self.stage}: expected stages of the pipeline in its order, each once "
                             f"({', '.join(STAGES)})")
        return self

    @pydantic.model_validator(mode="after")
    def _rounds_of_the_pipeline(self):
        if self.rounds > 1 and self.stage != "pipeline":
            raise ValueError(f"rounds = {self.rounds} with stage = {self.stage!r}: rounds repeat the whole pipeline; "
                             "expected stage=pipeline (or rounds=1)")
        return self

    @pydantic.model_validator(mode="after")
    def _resumable(self):
        if self.resume and not (Path(self.resume) / RECORD).is_file():
            raise ValueError(f"resume = {self.resume!r}: expected the directory of a run begun by rlhf-exp "
                             f"(with {RECORD}; resolved to {Path(self.resume).resolve()})")
        return self

    @pydantic.model_validator(mode="after")
    def _reusable(self):
        if self.reuse and not any((Path(self.reuse) / path).exists() for path, _ in REUSABLE.values()):
            raise ValueError(f"reuse = {self.reuse!r}: expected an earlier pipeline run directory (with "
                             + ", ".join(path for path, _ in REUSABLE.values()) + ")")
        return self


@dataclass(frozen=True)
class Built:
    """What the config builds (`validate_config`): one field per node of conf/config.yaml, each what
    its `_target_` made, checked. A variant of it is `dataclasses.replace(built, node=...)`."""
    run: RunSettings                                            # the top-level keys
    data: SyntheticData | ChatData | FeedbackFile | HFData      # prompts, demonstrations, feedback (a world simulates it)
    model: TinyGPT2 | TinyLlama | HFModel                       # the policy LM and how every stage loads a model
    reward: LearnedReward | ClassifierReward | GoldReward | JudgeReward  # what align and eval score with
    trainer: DictConfig                                         # the Trainer's arguments (each stage builds its Trainer)
    logger: MLflowTracker | NoTracker                           # tracking
    sft: SFTSettings
    collect: CollectSettings
    prepare: PrepareSettings
    reward_model: RewardModelSettings
    algorithm: Any                                              # an algorithm's settings: its record says which (modules/algorithms.py)
    eval: EvalSettings
    label: LabelSettings
    series: SeriesSettings


def validate_config(cfg: DictConfig, choices: dict[str, str] | None = None) -> Built:
    """Build every node of the config; raise one ConfigError that lists every problem."""
    choices = choices or {}
    scalars = {k: cfg[k] for k in cfg if not OmegaConf.is_dict(cfg[k])}
    nodes = {"": OmegaConf.create({"_target_": f"{__name__}.RunSettings", **scalars}),  # the top level
             **{k: cfg[k] for k in cfg if OmegaConf.is_dict(cfg[k]) and k not in PLAIN_NODES}}
    sources = {name: f"conf/{name}/{choices[name]}.yaml" for name in nodes if choices.get(name)}
    built = collect(nodes, sources)
    missing = sorted({f.name for f in dataclasses.fields(Built)} - {"run"} - set(built))
    if missing:
        raise ConfigError(f"the config has no node {', '.join(missing)}: expected every group of conf/config.yaml")
    built = Built(run=built.pop(""), **{k: v for k, v in built.items() if k in Built.__dataclass_fields__})
    check_reward_wiring(built)
    check_strategy(cfg, built)
    if built.run.stage == "label":
        label.check(built.label)
    if built.run.rounds > 1:
        check_series(built)
    return built


def check_strategy(cfg: DictConfig, built: Built) -> None:
    """Lightning's FSDP does not support manual optimisation (Lightning issues #19685, #19626), which
    the on-policy algorithms use, and runs on GPUs only: refuse both, before any work (the on-policy
    algorithms shard with trainer=fsdp2); trainer=fsdp2 where it cannot serve (check_fsdp2); and a
    batch that does not split evenly over the ranks."""
    node = cfg.trainer.get("strategy", "auto")
    fsdp2 = OmegaConf.is_dict(node) and str(node.get("_target_", "")).endswith("ModelParallelStrategy")
    strategy = "fsdp2" if fsdp2 else str(node)
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if fsdp2:
        check_fsdp2(cfg, built)
    fsdp1 = "fsdp" in strategy and not fsdp2  # Lightning's FSDPStrategy
    a = record_of(built.algorithm)
    if fsdp1 and a.on_policy and "align" in planned(built.run.stage):
        sharded = [r.name for r in records().values() if r.shardable]
        raise ConfigError(f"trainer.strategy = {strategy!r} with algorithm={a.name}: an algorithm that generates while "
                          "it trains cannot under Lightning's FSDP (no manual optimisation, Lightning issues #19685, "
                          "#19626, and sharded weights that generate out of step); expected trainer=fsdp2 (sharded "
                          f"weights through Lightning's ModelParallelStrategy, for {', '.join(sharded)}) or trainer=ddp "
                          "(FSDP serves SFT, the reward model and the offline algorithms)")
    if fsdp1 and (accelerator == "cpu" or accelerator == "auto" and not torch.cuda.is_available()):
        raise ConfigError(f"trainer.strategy = {strategy!r} with trainer.accelerator = {accelerator!r}"
                          f"{' on a machine with no GPU' if accelerator == 'auto' else ''}: Lightning's FSDP runs "
                          "on GPUs only; expected trainer.accelerator=gpu, or trainer=ddp on CPU")
    s = built.algorithm
    if any(k in strategy for k in ("ddp", "fsdp")) and a.on_policy:
        world = int(cfg.trainer.get("devices", 1)) * int(cfg.trainer.get("num_nodes", 1))
        prompts = s.batch_size // getattr(s, "group_size", 1)         # group_size: GRPO and RLOO answer each prompt n times
        minibatches = getattr(s, "minibatches", 1)                    # online DPO: one update per batch
        if prompts % world or minibatches > s.batch_size // world:
            raise ConfigError(f"algorithm.batch_size = {s.batch_size} over {world} processes (trainer.devices × "
                              f"trainer.num_nodes): expected each rank an equal share of the "
                              f"{'prompts' if prompts != s.batch_size else 'rollouts'} and at least "
                              f"algorithm.minibatches ({minibatches}) rollouts")


def check_fsdp2(cfg: DictConfig, built: Built) -> None:
    """trainer=fsdp2 shards the on-policy algorithms' full fine-tuning on one mesh of every rank: refuse
    the trained stages that do not shard (sft, reward_model, the offline algorithms), LoRA, resuming,
    and a mesh that is not every rank."""
    stages, a = planned(built.run.stage), built.algorithm
    sharded = [r.name for r in records().values() if r.shardable]
    trained = [] if built.run.reuse else [s for s in ("sft", "reward_model") if s in stages]
    if trained:
        raise ConfigError(f"trainer=fsdp2 with stage {', '.join(trained)}: only {', '.join(sharded)} shard their "
                          "weights (ModelParallelStrategy); expected stage=align, or reuse=RUN_DIR (an "
                          "earlier run's sft and reward model), or trainer=ddp / trainer=fsdp (on GPUs) for "
                          "those stages")
    if "align" not in stages:
        return
    if not record_of(a).shardable:
        raise ConfigError(f"trainer=fsdp2 with algorithm={record_of(a).name}: only {', '.join(sharded)} shard their "
                          f"weights; expected algorithm={'|'.join(sharded)}, or trainer=ddp / trainer=fsdp (on GPUs)")
    if getattr(built.model, "lora_r", 0):
        raise ConfigError(f"model.lora_r = {built.model.lora_r} with trainer=fsdp2: sharded training is full "
                          "fine-tuning (the LoRA merge for rollouts and saving needs the whole model on one device); "
                          "expected model.lora_r=0, or trainer=ddp for LoRA")
    if a.ckpt_path is not None:
        raise ConfigError(f"algorithm.ckpt_path = {a.ckpt_path} with trainer=fsdp2: resuming a sharded run is not "
                          "supported; expected algorithm.ckpt_path=null (or resume with trainer=ddp)")
    node, world = cfg.trainer.strategy, int(cfg.trainer.get("devices", 1)) * int(cfg.trainer.get("num_nodes", 1))
    if node.get("tensor_parallel_size") != 1 or node.get("data_parallel_size") != world:
        raise ConfigError(f"trainer.strategy.data_parallel_size = {node.get('data_parallel_size')} and "
                          f"tensor_parallel_size = {node.get('tensor_parallel_size')} over {world} processes "
                          f"(trainer.devices × trainer.num_nodes): expected data_parallel_size={world} and "
                          "tensor_parallel_size=1 (weights sharded over every rank)")


def check_reward_wiring(built: Built) -> None:
    """A pipeline's own reward model is read by the reward source made for it: a one-output reward
    model by reward=learned, a classifier (reward_model.objective=classifier) by reward=classifier."""
    reward, objective = built.reward, built.reward_model.objective
    if not {"reward_model", "align"} <= set(planned(built.run.stage)) or built.run.reuse:
        return
    if isinstance(reward, ClassifierReward) and not reward.name_or_path and objective != "classifier":
        raise ConfigError(f"reward=classifier reads this pipeline's reward model, which reward_model.objective = "
                          f"{objective!r} trains with one output; expected reward_model.objective=classifier "
                          "(or reward.name_or_path=DIR)")
    if isinstance(reward, LearnedReward) and not reward.path and objective == "classifier":
        raise ConfigError("reward_model.objective = 'classifier' trains a classifier, which reward=learned would "
                          "read as a one-output reward model; expected reward=classifier")


def check_reused_split(run_dir: str, data) -> None:
    """A reused run's held-out prompts must be this run's: with another world seed (`data.seed`, by
    default the run's `seed`) the split differs, and eval would score prompts the reused SFT policy
    and reward model were trained on. Checked against the reused run's heldout.jsonl."""
    path = Path(run_dir) / REUSABLE["heldout"][0]
    if not path.is_file():
        return
    def key(p):  # a person's condition (data.condition) prefixes this run's prompts: compare without it
        return split_condition(p)[1] if isinstance(p, str) else sort_key(p)
    theirs, ours = {key(p) for p, _ in load_heldout(path)}, {key(p) for p in data.heldout_prompts()}
    if theirs and ours and theirs != ours:
        raise ConfigError(f"reuse = {run_dir}: its held-out prompts ({path}) are not this run's ({len(theirs & ours)} of "
                          f"{len(theirs)} shared): its world was split with another seed, and eval would score prompts "
                          f"its SFT policy and reward model trained on; expected data.seed = that run's seed (now "
                          f"{getattr(data, 'seed', '?')}; `seed` may still vary the training)")


def check_series(built: Built) -> None:
    """rounds > 1 chooses every round's inputs itself: refuse the settings that would fix them for
    every round (each named), before any work."""
    n, fixed = built.run.rounds, []
    for node, keys in (("collect", ("policy",)), ("prepare", ("feedback",)), ("algorithm", ("policy", "ckpt_path")),
                       ("reward_model", ("pairs", "thumbs", "ckpt_path")), ("sft", ("ckpt_path",)),
                       ("eval", ("policy",))):
        fixed += [f"{node}.{k} = {getattr(getattr(built, node), k)!r}" for k in keys
                  if getattr(getattr(built, node), k, None)]
    if fixed:
        raise ConfigError(f"rounds = {n}: {', '.join(fixed)}; a series chooses each round's inputs itself (the last "
                          "round's policy, every round's pairs so far; see the `series` group) and resume=RUN_DIR "
                          "goes on from its checkpoints; expected null")
    if built.run.reuse and "policy" not in reused_outputs(built.run.reuse):
        raise ConfigError(f"reuse = {built.run.reuse!r} with rounds = {n}: a series reuses only an earlier run's "
                          "sft/ policy, which that directory does not hold; expected a pipeline run dir with sft/")
