"""The pipeline: check the whole config, then run the requested stage, or every stage in order
(skipping those whose outputs an earlier run left, `reuse=DIR`), each in its own tracked run."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import Field

from rlhf_exp.config import ConfigError, collect, schema
from rlhf_exp.distributed import is_main, rank
from rlhf_exp.stages import align, collect as collect_stage, eval as eval_stage, label, prepare, reward_model, sft
from rlhf_exp.errors import UserError
from rlhf_exp.stages.context import StageContext
from rlhf_exp.stages.record import RECORD, RunRecord, resume_checkpoints
from rlhf_exp.stages.tracked import Tracking
from rlhf_exp.tracking.tracker import NoTracker, NullRun

STAGES = {"sft": sft.run, "collect": collect_stage.run, "prepare": prepare.run,
          "reward_model": reward_model.run, "align": align.run, "eval": eval_stage.run}  # in pipeline order
# stages people run on their own, never part of stage=pipeline: no tracked run, no run record
STANDALONE = {"label": label.run}

# what an earlier pipeline run left that a later one can take as it is (`reuse=DIR`):
# output name -> path in that run's directory, and the stage that writes it
REUSABLE = {"policy": ("sft", "sft"), "feedback": ("feedback.jsonl", "collect"),
            "heldout": ("heldout.jsonl", "collect"), "thumbs": ("thumbs.jsonl", "collect"),
            "pairs": ("pairs.jsonl", "prepare"),
            "reward_model": ("reward_model", "reward_model")}
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
    rounds: Annotated[int, Field(ge=1)]  # N > 1: sft, then N rounds of collect -> ... -> align (stages/rounds.py)

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


RANK0_STAGES = ("collect", "prepare", "eval")  # under DDP: run by rank 0 alone (they sample and write; nothing trains)


def share_outputs(outputs: dict[str, Path], main_dir: Path) -> dict[str, Path]:
    """After a stage that rank 0 ran alone: every rank waits for it, then takes its outputs (sent by
    rank 0; or, before the process group exists, which is before any other rank does, found in its
    run dir). In one process: the outputs as they are."""
    from rlhf_exp.distributed import barrier, initialized
    if not initialized():
        return outputs if is_main() else reused_outputs(str(main_dir))
    barrier()
    shared = [outputs if is_main() else None]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def reused_outputs(run_dir: str) -> dict[str, Path]:
    """The outputs an earlier run left in run_dir, by name (see REUSABLE)."""
    return {name: Path(run_dir) / path for name, (path, _) in REUSABLE.items() if (Path(run_dir) / path).exists()}


def check_reused_split(run_dir: str, data) -> None:
    """A reused run's held-out prompts must be this run's: with another world seed (`data.seed`, by
    default the run's `seed`) the split differs, and eval would score prompts the reused SFT policy
    and reward model were trained on. Checked against the reused run's heldout.jsonl."""
    from rlhf_exp.feedback.formats import load_heldout
    from rlhf_exp.feedback.prompts import sort_key
    path = Path(run_dir) / REUSABLE["heldout"][0]
    if not path.is_file():
        return
    from rlhf_exp.feedback.persons import split_condition
    def key(p):  # a person's condition (data.condition) prefixes this run's prompts: compare without it
        return split_condition(p)[1] if isinstance(p, str) else sort_key(p)
    theirs, ours = {key(p) for p, _ in load_heldout(path)}, {key(p) for p in data.heldout_prompts()}
    if theirs and ours and theirs != ours:
        raise ConfigError(f"reuse = {run_dir}: its held-out prompts ({path}) are not this run's ({len(theirs & ours)} of "
                          f"{len(theirs)} shared): its world was split with another seed, and eval would score prompts "
                          f"its SFT policy and reward model trained on; expected data.seed = that run's seed (now "
                          f"{getattr(data, 'seed', '?')}; `seed` may still vary the training)")


def planned(stage: str | list[str]) -> list[str]:
    """The stages a `stage` setting names: every one for `pipeline`, a list's, or the one."""
    return list(STAGES) if stage == "pipeline" else stage if isinstance(stage, list) else [stage]


def stages_to_run(reused: dict[str, Path]) -> list[str]:
    """The pipeline's stages, less those whose every output is reused."""
    writes = {stage: [n for n, (_, s) in REUSABLE.items() if s == stage] for stage in STAGES}
    return [s for s in STAGES if not writes[s] or not all(n in reused for n in writes[s])]


def validate_config(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict:
    """Build every node of the config; raise one ConfigError that lists every problem."""
    choices = choices or {}
    scalars = {k: cfg[k] for k in cfg if not OmegaConf.is_dict(cfg[k])}
    nodes = {"": OmegaConf.create({"_target_": f"{__name__}.RunSettings", **scalars}),  # the top level
             **{k: cfg[k] for k in cfg if OmegaConf.is_dict(cfg[k]) and k not in PLAIN_NODES}}
    sources = {name: f"conf/{name}/{choices[name]}.yaml" for name in nodes if choices.get(name)}
    built = collect(nodes, sources)
    built["run"] = built.pop("")
    check_reward_wiring(built)
    check_strategy(cfg, built)
    if built["run"].stage == "label":
        label.check(built["label"])
    if built["run"].rounds > 1:
        from rlhf_exp.stages.rounds import check_series
        check_series(built)
    return built


def check_strategy(cfg: DictConfig, built: dict) -> None:
    """Lightning's FSDP does not support manual optimisation (Lightning issues #19685, #19626), which
    the on-policy algorithms use, and runs on GPUs only: refuse both, before any work (the on-policy
    algorithms shard with trainer=fsdp2); trainer=fsdp2 where it cannot serve (check_fsdp2); and a
    batch that does not split evenly over the ranks."""
    from rlhf_exp.modules.grpo import GRPOSettings, RLOOSettings
    from rlhf_exp.modules.ppo import PPOSettings
    node = cfg.trainer.get("strategy", "auto")
    fsdp2 = OmegaConf.is_dict(node) and str(node.get("_target_", "")).endswith("ModelParallelStrategy")
    strategy = "fsdp2" if fsdp2 else str(node)
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if fsdp2:
        check_fsdp2(cfg, built)
    fsdp1 = "fsdp" in strategy and not fsdp2  # Lightning's FSDPStrategy
    if fsdp1 and isinstance(built["algorithm"], (PPOSettings, GRPOSettings, RLOOSettings)) \
            and "align" in planned(built["run"].stage):
        raise ConfigError(f"trainer.strategy = {strategy!r} with algorithm={type(built['algorithm']).__name__[:-8].lower()}: "
                          "Lightning's FSDP does not support manual optimisation (Lightning issues #19685, #19626), "
                          "which PPO, GRPO and RLOO use; expected trainer=fsdp2 (sharded weights through Lightning's "
                          "ModelParallelStrategy) or trainer=ddp (FSDP serves SFT, the reward model and DPO)")
    if fsdp1 and (accelerator == "cpu" or accelerator == "auto" and not torch.cuda.is_available()):
        raise ConfigError(f"trainer.strategy = {strategy!r} with trainer.accelerator = {accelerator!r}"
                          f"{' on a machine with no GPU' if accelerator == 'auto' else ''}: Lightning's FSDP runs "
                          "on GPUs only; expected trainer.accelerator=gpu, or trainer=ddp on CPU")
    a = built["algorithm"]
    if any(k in strategy for k in ("ddp", "fsdp")) and isinstance(a, (PPOSettings, GRPOSettings, RLOOSettings)):
        world = int(cfg.trainer.get("devices", 1)) * int(cfg.trainer.get("num_nodes", 1))
        prompts = a.batch_size // getattr(a, "group_size", 1)
        if prompts % world or a.minibatches > a.batch_size // world:
            raise ConfigError(f"algorithm.batch_size = {a.batch_size} over {world} processes (trainer.devices × "
                              f"trainer.num_nodes): expected each rank an equal share of the "
                              f"{'prompts' if prompts != a.batch_size else 'rollouts'} and at least "
                              f"algorithm.minibatches ({a.minibatches}) rollouts")


def check_fsdp2(cfg: DictConfig, built: dict) -> None:
    """trainer=fsdp2 shards the on-policy algorithms' full fine-tuning on one mesh of every rank: refuse
    the trained stages that do not shard (sft, reward_model, the offline algorithms), LoRA, resuming,
    and a mesh that is not every rank."""
    from rlhf_exp.modules.grpo import GRPOSettings, RLOOSettings
    from rlhf_exp.modules.ppo import PPOSettings
    stages, a = planned(built["run"].stage), built["algorithm"]
    trained = [] if built["run"].reuse else [s for s in ("sft", "reward_model") if s in stages]
    if trained:
        raise ConfigError(f"trainer=fsdp2 with stage {', '.join(trained)}: only PPO, GRPO and RLOO shard their "
                          "weights (ModelParallelStrategy); expected stage=align, or reuse=RUN_DIR (an "
                          "earlier run's sft and reward model), or trainer=ddp / trainer=fsdp (on GPUs) for "
                          "those stages")
    if "align" not in stages:
        return
    if not isinstance(a, (PPOSettings, GRPOSettings, RLOOSettings)):
        raise ConfigError(f"trainer=fsdp2 with algorithm={type(a).__name__.removesuffix('Settings').lower()}: only "
                          "PPO, GRPO and RLOO shard their weights; expected algorithm=ppo|grpo|rloo, or trainer=ddp "
                          "/ trainer=fsdp (on GPUs)")
    if getattr(built["model"], "lora_r", 0):
        raise ConfigError(f"model.lora_r = {built['model'].lora_r} with trainer=fsdp2: sharded training is full "
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


def check_reward_wiring(built: dict) -> None:
    """A pipeline's own reward model is read by the reward source made for it: a one-output reward
    model by reward=learned, a classifier (reward_model.objective=classifier) by reward=classifier."""
    from rlhf_exp.models.reward import ClassifierReward, LearnedReward
    reward, objective = built["reward"], built["reward_model"].objective
    if not {"reward_model", "align"} <= set(planned(built["run"].stage)) or built["run"].reuse:
        return
    if isinstance(reward, ClassifierReward) and not reward.name_or_path and objective != "classifier":
        raise ConfigError(f"reward=classifier reads this pipeline's reward model, which reward_model.objective = "
                          f"{objective!r} trains with one output; expected reward_model.objective=classifier "
                          "(or reward.name_or_path=DIR)")
    if isinstance(reward, LearnedReward) and not reward.path and objective == "classifier":
        raise ConfigError("reward_model.objective = 'classifier' trains a classifier, which reward=learned would "
                          "read as a one-output reward model; expected reward=classifier")


def run_stages(cfg: DictConfig, choices: dict[str, str], sweep_tags: dict) -> float | None:
    """Validate, then run the requested stage(s) with tracking; return the value of `metric` from
    the pipeline's evaluation, if there was one. Raises UserError on bad input."""
    built = validate_config(cfg, choices)
    stage = built["run"].stage
    run_dir = main_dir = Path(cfg.paths.output_dir)
    if isinstance(stage, str) and stage in STANDALONE:
        if is_main():
            STANDALONE[stage](StageContext(cfg, built, run_dir, NullRun()))
        return None
    if built["run"].rounds > 1:  # iterated RLHF: sft, then rounds of collect -> ... -> align (stages/rounds.py)
        from rlhf_exp.stages.rounds import run_series
        return run_series(cfg, built, {"algorithm": choices.get("algorithm") or type(built["algorithm"]).__name__,
                                       "seed": cfg.seed, **sweep_tags})
    main = is_main()
    if not main:  # another rank of a DDP run: the same work, its files in a scratch dir, no tracking
        run_dir = run_dir / f".rank{rank()}"
        built = {**built, "logger": NoTracker()}
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs: dict[str, Path] = {}  # files of the stages run so far, passed on to the next
    tags = {"algorithm": choices.get("algorithm") or type(built["algorithm"]).__name__, "seed": cfg.seed,
            **sweep_tags}
    if cfg.reuse and (stage == "pipeline" or isinstance(stage, list)):
        outputs.update(reused_outputs(cfg.reuse))
        check_reused_split(cfg.reuse, built["data"])
        tags["reused_from"] = str(Path(cfg.reuse).resolve())
    record = RunRecord(main_dir, write=main)
    if cfg.resume:  # the same directory (the CLI set it): the same MLflow runs, finished stages skipped
        record = RunRecord.load(main_dir, write=main)
        if stage in record.done or "pipeline" in record.done:
            raise UserError(f"resume = {cfg.resume}: that run finished ({', '.join(record.done)}); nothing to resume")
        outputs.update(record.output_paths())
        built = resume_checkpoints(built, record, main_dir)
    tracking = Tracking(built["logger"], cfg, tags)

    def run_stage(name: str, parent=None) -> None:
        if name in RANK0_STAGES and not main:  # rank 0 samples and writes; this rank takes its files
            outputs.update(share_outputs(outputs, main_dir))
            return
        with tracking.run(name, parent, continue_id=record.runs.get(name) if cfg.resume else None) as run:
            record.began(name, run.id)
            t0 = time.perf_counter()
            STAGES[name](StageContext(cfg, built, run_dir, run, outputs, main_dir))
            seconds = time.perf_counter() - t0
            run.log_metrics({f"{name}/perf/seconds": seconds})
            if main:
                print(f"[{name}] done in {seconds:.1f} s; outputs in {run_dir}")
        if name in RANK0_STAGES:
            share_outputs(outputs, main_dir)
        record.finished(name, outputs)
        return run

    with built["logger"].keeping_writes(main_dir):  # what a failing tracking store could not take, kept
        if isinstance(stage, str) and stage != "pipeline":
            print_ui_links(run_stage(stage))
            return None
        with tracking.run("pipeline", continue_id=record.runs.get("pipeline") if cfg.resume else None) as parent:
            record.began("pipeline", parent.id)
            for name in (s for s in planned(stage) if s in stages_to_run(outputs)):  # less what is reused
                if name not in record.done:
                    run_stage(name, parent)
            summary = json.loads(outputs["eval_summary"].read_text(encoding="utf-8")) \
                if "eval_summary" in outputs else None
            if summary:
                parent.log_metrics({k: v for k, v in summary.items() if k.startswith("eval/")})
        record.finished("pipeline", outputs)
    if summary and main:
        print(f"\n== before (reference) and after (aligned), {summary['prompts']} held-out prompts ==\n"
              f"{eval_stage.summary_table(summary)}\noutputs: {run_dir}")
    print_ui_links(parent)
    return summary.get(cfg.metric) if summary else None


def print_ui_links(run) -> None:
    """Where to look at a tracked run in the MLflow UI (its model-training view)."""
    if (urls := run.ui_urls()) is None:
        return
    serve = "" if run.tracking_uri.startswith(("http://", "https://")) else \
        f" (serve the store first: mlflow ui --backend-store-uri {run.tracking_uri} --host 127.0.0.1)"
    print(f"MLflow: {urls[0]}\n        runs table: {urls[1]}{serve}")
