"""`rounds=N` (iterated RLHF): sft once, then N rounds of collect -> prepare -> reward_model -> align
(-> eval), each in run_dir/round_<k>/.

Round k collects from the policy round k−1 produced (round 1: the SFT policy), trains the reward model
on every round's pairs so far (`series.reward_model`: retrained from the SFT backbone, or continued from
round k−1's reward model), and aligns from round k−1's policy or from SFT (`series.align_from`) against
the SFT policy or the policy it starts from (`series.reference`). MLflow: the series is one `pipeline`
run (tag `rounds`); under it the `sft` run and one run per round (`round_<k>`, tag stage=round), and
under each round one run per stage. run.json in run_dir records the series (sft and the rounds), and
run.json in each round's directory that round's stages, so that `resume=RUN_DIR` goes on at the
round and stage where the series stopped. With `collect=human` a round stops after collect, until
people have ranked every set of round_<k>/feedback.jsonl; `resume=RUN_DIR` then goes on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Literal, TYPE_CHECKING

import pydantic
import pytorch_lightning as pl

from rlhf_exp.config import schema
from rlhf_exp.distributed import is_main
from rlhf_exp.feedback.formats import binary_to_json, load_pairs, load_ranked, load_thumbs
from rlhf_exp.files import write_json, write_jsonl
from rlhf_exp.stages import eval as eval_stage
from rlhf_exp.stages.context import StageContext
from rlhf_exp.stages.record import RECORD, RunRecord, resume_checkpoints
from rlhf_exp.stages.runner import (begin_record, eval_summary, parent_run, print_ui_links, reused_outputs,
                                    run_stage, scratch, this_rank)
from rlhf_exp.stages.tracked import Tracking

if TYPE_CHECKING:  # a type only: checks.py, which builds it, imports this module
    from rlhf_exp.stages.checks import Built

ROUND_STAGES = ("collect", "prepare", "reward_model", "align", "eval")  # the stages of one round, in order
SO_FAR = {"pairs": "pairs_so_far.jsonl", "thumbs": "thumbs_so_far.jsonl"}  # what round k's reward model trains on
SUMMARY = "rounds.json"  # run_dir: each finished round's figures


@schema
class SeriesSettings:
    """`rounds=N > 1` (conf/series/default.yaml gives each its default and meaning)."""
    reward_model: Literal["retrain", "continue"]
    align_from: Literal["last", "sft"]
    reference: Literal["sft", "last"]
    eval_every_round: bool

    @pydantic.model_validator(mode="after")
    def _reference_of_sft(self):
        if self.align_from == "sft" and self.reference == "last":
            raise ValueError("reference = 'last' with align_from = 'sft': an alignment that starts from the SFT "
                             "policy has it as its reference; expected reference=sft, or align_from=last")
        return self


# -- what each round reads: pure functions of the run dir and the settings ---------------------------

def round_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / f"round_{k}"


def collected_from(run_dir: Path, k: int, sft: Path) -> Path:
    """The policy round k collects from: the one round k−1 produced; round 1: the SFT policy."""
    return Path(sft) if k == 1 else round_dir(run_dir, k - 1) / "policy"


def aligned_from(s: SeriesSettings, run_dir: Path, k: int, sft: Path) -> Path:
    """The policy round k's alignment starts from (`series.align_from`)."""
    return collected_from(run_dir, k, sft) if s.align_from == "last" else Path(sft)


def reference_of(s: SeriesSettings, run_dir: Path, k: int, sft: Path) -> Path:
    """π_ref of round k's alignment (`series.reference`): SFT, or the policy it starts from."""
    return Path(sft) if s.reference == "sft" else aligned_from(s, run_dir, k, sft)


def reward_model_start(s: SeriesSettings, run_dir: Path, k: int) -> Path | None:
    """The reward model round k's continues from (`series.reward_model=continue`, from round 2 on);
    None: a fresh head on the backbone."""
    return round_dir(run_dir, k - 1) / "reward_model" if s.reward_model == "continue" and k > 1 else None


def feedback_files(run_dir: Path, k: int, name: str) -> list[Path]:
    """Every round's file `name` (pairs.jsonl, thumbs.jsonl) up to round k, in round order."""
    return [round_dir(run_dir, j) / name for j in range(1, k + 1)]


def merged_rows(files: list[Path], kind: str) -> list[dict]:
    """The rows of every round's file (kind `pairs` or `thumbs`), in round order, each with its
    `round` (1-based, from the file's place in the list). A pair's `set_id` is shifted past the
    earlier rounds' ids, so that comparison sets of different rounds (each round numbers its sets
    from 0) stay apart in the reward model's batches."""
    rows, offset = [], 0
    for k, path in enumerate(files, 1):
        if kind == "thumbs":
            rows += [{**binary_to_json(b), "round": k} for b in load_thumbs(path)]
            continue
        pairs = load_pairs(path)
        for p in pairs:
            row = p.to_json()
            if p.set_id is not None:
                row["set_id"] = p.set_id + offset
            rows.append({**row, "round": k})
        offset += max((p.set_id for p in pairs if p.set_id is not None), default=-1) + 1
    return rows


def ranked_sets(path: Path) -> tuple[int, int]:
    """(sets ranked by at least one labeler, sets) of a ranked feedback file (another kind is refused)."""
    records = load_ranked(path)
    return sum(1 for r in records if r.rankings), len(records)


def stage_seed(seed: int, k: int, stage: str) -> int:
    """The seed set before round k's `stage` (collect and prepare draw from the global generators):
    the same in an uninterrupted series and in one resumed at that stage."""
    return int(hashlib.sha256(f"{seed}-round{k}-{stage}".encode()).hexdigest()[:8], 16)


def round_inputs(s: SeriesSettings, built: Built, run_dir: Path, k: int, sft: Path,
                 write_dir: Path | None = None) -> tuple[dict, dict[str, Path]]:
    """(the settings round k runs with, the outputs its stages start from): collect from the last
    policy, the reward model on every round's pairs (or thumbs) so far, written by the series to
    `write_dir` (default: the round's directory) before it trains, and align from and against what
    the series settings say."""
    write_dir = write_dir or round_dir(run_dir, k)
    start, ref = aligned_from(s, run_dir, k, sft), reference_of(s, run_dir, k, sft)
    kind = "thumbs" if built.reward_model.objective == "classifier" else "pairs"
    b = dataclasses.replace(built, collect=dataclasses.replace(built.collect, policy=str(collected_from(run_dir, k, sft))),
                            algorithm=dataclasses.replace(built.algorithm, policy=str(start)),
                            reward_model=dataclasses.replace(built.reward_model, **{kind: str(Path(write_dir) / SO_FAR[kind])}))
    outputs = {"policy": Path(sft)}  # the reward model's backbone and eval's reference
    if ref != start:
        outputs["reference"] = ref  # align's π_ref, loaded frozen (StageContext.reference)
    if (rm := reward_model_start(s, run_dir, k)) is not None:
        outputs["reward_model_start"] = rm  # trained further, head and all (stages/reward_model.backbone)
    return b, outputs


# -- running a series ------------------------------------------------------------------------------

def waiting_message(k: int, feedback: Path, ranked: int, total: int, main_dir: Path) -> str:
    return (f"round {k} waits for people: {ranked} of the {total} sets of {feedback} are ranked. Rank every set "
            f"(the labeling page: rlhf-exp stage=label label.feedback={feedback}; or Label Studio / Argilla: "
            f"rlhf-exp-labels export labelstudio {feedback} DIR, then rlhf-exp-labels import labelstudio EXPORT.json "
            f"{feedback}), then go on with: rlhf-exp resume={main_dir}")


class Series:
    """One invocation of a series: its tracking, its record, and the runner of each stage."""

    def __init__(self, cfg, built: Built, tags: dict):
        self.cfg, self.s, self.n = cfg, built.series, built.run.rounds
        self.main = is_main()
        self.main_dir = Path(cfg.paths.output_dir)
        self.built, self.tags = this_rank(built), {**tags, "rounds": self.n}
        self.resumed = bool(cfg.resume)
        self.record = begin_record(self.main_dir, cfg.resume)

    def run(self) -> float | None:
        cfg, built = self.cfg, self.built
        run_dir = scratch(self.main_dir)
        outputs: dict[str, Path] = {}  # the series' own: the SFT policy, then the last round's outputs
        if cfg.reuse:
            outputs["policy"] = reused_outputs(cfg.reuse)["policy"]
            self.tags["reused_from"] = str(Path(cfg.reuse).resolve())
        series_built = built
        if self.resumed:
            outputs.update(self.record.output_paths())
            series_built = resume_checkpoints(built, self.record, self.main_dir)  # an interrupted sft
        tracking = Tracking(built.logger, cfg, self.tags)
        summary = None
        with built.logger.keeping_writes(self.main_dir):
            with parent_run(tracking, self.record, self.resumed) as parent:
                if "policy" not in outputs and "sft" not in self.record.done:
                    ctx = StageContext(cfg, series_built, run_dir, None, outputs, self.main_dir)
                    run_stage("sft", ctx, tracking, self.record, parent, self.resumed)
                for k in range(1, self.n + 1):
                    if f"round_{k}" in self.record.done:
                        continue
                    waiting = self.run_round(k, outputs["policy"], parent)
                    if waiting:
                        parent.set_tags({"waiting": f"round {k}: labels"})
                        print(waiting)
                        return None
                    self.record.finished(f"round_{k}", outputs | self.last_outputs)
                    outputs = {**outputs, **self.last_outputs}
                summary = eval_summary(outputs)
                parent.set_tags({"waiting": ""})
            self.record.finished("pipeline", outputs)
        if summary and self.main:
            print(f"\n== after {self.n} rounds: before (reference) and after (aligned), {summary['prompts']} held-out "
                  f"prompts ==\n{eval_stage.summary_table(summary)}\nrounds: {self.main_dir / SUMMARY}")
        print_ui_links(parent)
        return summary.get(cfg.metric) if summary else None

    def run_round(self, k: int, sft: Path, parent) -> str | None:
        """Round k, each stage in its own run under the round's run; returns a message when the round
        waits for people's rankings (collect=human), else None."""
        cfg, main_dir = self.cfg, self.main_dir
        where = round_dir(main_dir, k)
        rdir = scratch(where)
        resumed = self.resumed and (where / RECORD).is_file()
        record = RunRecord.load(where, self.main) if resumed else RunRecord(where, self.main)
        built, outputs = round_inputs(self.s, self.built, main_dir, k, sft, rdir)
        if resumed:
            outputs.update(record.output_paths())
            built = resume_checkpoints(built, record, where)
        tags = {**self.tags, "round": k}
        tracking = Tracking(built.logger, cfg, tags)
        kind = "thumbs" if built.reward_model.objective == "classifier" else "pairs"
        stages = [st for st in ROUND_STAGES if st != "eval" or self.s.eval_every_round or k == self.n]
        round_tags = {"round.collect_policy": built.collect.policy, "round.align_policy": built.algorithm.policy,
                      "round.reference": str(outputs.get("reference", built.algorithm.policy)),
                      "round.reward_model_start": str(outputs.get("reward_model_start", "none")),
                      f"round.{kind}_files": " ".join(str(p) for p in feedback_files(main_dir, k, f"{kind}.jsonl"))}
        continued = self.record.runs.get(f"round_{k}") if self.resumed else None
        with tracking.run(f"round_{k}", parent, continue_id=continued, stage="round") as run:
            self.record.began(f"round_{k}", run.id)
            run.set_tags({**round_tags, "waiting": ""})
            for name in stages:
                if name in record.done:
                    continue
                if name == "prepare" and built.collect.labelers == "human":
                    ranked, total = ranked_sets(outputs["feedback"])
                    if ranked < total:
                        run.set_tags({"waiting": "labels"})
                        return waiting_message(k, outputs["feedback"], ranked, total, main_dir)
                if name == "reward_model":
                    rows = merged_rows(feedback_files(main_dir, k, f"{kind}.jsonl"), kind)
                    write_jsonl(rdir / SO_FAR[kind], rows)
                pl.seed_everything(stage_seed(cfg.seed, k, name), workers=True, verbose=False)
                ctx = StageContext(cfg, built, rdir, None, outputs, where)
                run_stage(name, ctx, tracking, record, run, self.resumed)
            figures = self.round_figures(k, built, outputs, kind) if self.main else {}
            run.log_metrics({key: v for key, v in figures.items() if key.startswith("round/")})
            parent.log_metrics({key: v for key, v in figures.items() if key.startswith(("round/", "eval/"))}, step=k)
        self.last_outputs = {key: outputs[key] for key in ("aligned_policy", "reward_model", "eval_summary")
                             if key in outputs}
        if self.main:
            self.write_summary(k, figures, round_tags)
        return None

    def round_figures(self, k: int, built: Built, outputs: dict, kind: str) -> dict[str, float]:
        """The round's data (sets collected, pairs made this round, rows the reward model trained
        on) and its evaluation (eval/*, when eval ran in this round)."""
        def lines(path) -> int:
            # rows end at "\n" only: a completion may hold U+2028 or U+0085, which str.splitlines also splits at
            return sum(1 for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip())
        figures = {"round/data/sets": lines(outputs["feedback"]),
                   f"round/data/{kind}": lines(round_dir(self.main_dir, k) / f"{kind}.jsonl"),
                   f"round/data/{kind}_total": lines(getattr(built.reward_model, kind))}
        summary = round_dir(self.main_dir, k) / "eval_summary.json"
        if summary.is_file():
            figures.update({key: v for key, v in json.loads(summary.read_text(encoding="utf-8")).items()
                            if key.startswith("eval/") and isinstance(v, (int, float))})
        return figures

    def write_summary(self, k: int, figures: dict, round_tags: dict) -> None:
        """rounds.json: one entry per finished round, its inputs and figures (rewritten atomically)."""
        path = self.main_dir / SUMMARY
        rounds = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        rounds = [r for r in rounds if r["round"] < k] + [{"round": k, **round_tags, **figures}]
        write_json(path, rounds)


def run_series(cfg, built: Built, tags: dict) -> float | None:
    """Validated settings -> the series run with tracking; the value of `metric` from the last round's
    evaluation (None while a round waits for people)."""
    return Series(cfg, built, tags).run()
