"""`rlhf-exp-compare`: read pipeline runs back from MLflow and compare them.

    rlhf-exp-compare --experiment rlhf [--sweep outputs/multirun/DATE] [--metric eval/gold/policy]
                     [--tracking-uri sqlite:///outputs/mlflow.db] [--out outputs/compare]

One row per pipeline run (a Hydra job): the params that differ between the runs, the final
metrics of its stages, sorted by the metric. Writes compare.md and PNG plots (reward against KL to
the reference, one series per algorithm; gold score against reward-model score; learning curves;
the metric against each swept param; with 3 or more points, the over-optimisation study: gold and
proxy gains against sqrt(KL) with Gao et al.'s fitted forms), each run labelled by the settings
that vary across the runs, and logs them as artifacts of a summary run named `compare`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf_exp.tracking.compare import load_jobs, over_seeds, plots, swept_params, table
from rlhf_exp.tracking.frontier import frontier_plot, frontier_points, frontier_table, score_key
from rlhf_exp.tracking.overopt import study
from rlhf_exp.tracking.repeatability import warning


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="rlhf-exp-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="rlhf", help="MLflow experiment (default: rlhf)")
    parser.add_argument("--sweep", default=None, help="only the jobs of this sweep (their sweep_id tag)")
    parser.add_argument("--metric", default="eval/gold/policy", help="sort by it and plot it per param")
    parser.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db",
                        help="MLflow tracking URI (a sqlite file, or a server: http://host:5000)")
    parser.add_argument("--out", default="outputs/compare", help="where compare.md and the plots go")
    args = parser.parse_args(argv)

    from mlflow.tracking import MlflowClient
    client = MlflowClient(args.tracking_uri)
    jobs = load_jobs(client, args.experiment, args.sweep)
    if not jobs:
        raise SystemExit(f"no pipeline runs in experiment {args.experiment!r}"
                         + (f" with sweep_id {args.sweep!r}" if args.sweep else ""))
    swept = swept_params(jobs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(jobs, swept, args.metric)
    failed = [j for j in jobs if j.status != "FINISHED"]
    report = [f"# Comparison: experiment `{args.experiment}`" + (f", sweep `{args.sweep}`" if args.sweep else ""),
              "", f"{len(jobs)} runs, sorted by `{args.metric}`; swept: {', '.join(swept) or 'nothing'}.", "",
              text, ""]
    if seeds := over_seeds(jobs, swept, args.metric):
        report += ["## Over seeds", "", "Each setting's mean ± standard error over its seeds (n runs).", "", seeds, ""]
        text += f"\n\nover seeds (mean ± standard error, n):\n{seeds}"
    report += [f"- {j.run_id[:8]} {j.status}: {j.error}" for j in failed if j.error]
    if caution := warning({j.run_id[:8]: j.tags for j in jobs}):
        report += ["", f"**{caution}**"]
        print(caution, file=sys.stderr)
    pngs = plots(jobs, swept, args.metric, out)
    report += ["", *[f"![{p.stem}]({p.name})" for p in pngs], ""]
    if points := frontier_points(jobs):  # every method's frontier, over seeds
        score = score_key(jobs)
        frontier_plot(points, score, out / "frontier_gold_vs_kl.png")
        pngs.append(out / "frontier_gold_vs_kl.png")
        table_text = frontier_table(points, score)
        report += ["## Frontier", "", f"The {score} score against KL to the reference, each setting's mean ± standard "
                   "error over its seeds (n), a line per method; best-of-n from each run's eval.", "", table_text, "",
                   "![frontier](frontier_gold_vs_kl.png)", ""]
        text += f"\n\nfrontier ({score} against KL, mean ± standard error over seeds):\n{table_text}"
    fits = study([j for j in jobs if j.status == "FINISHED"], out / "overoptimization.png")
    if fits:  # enough points for Gao et al.'s forms: the over-optimisation study
        pngs.append(out / "overoptimization.png")
        report += ["## Over-optimisation (Gao et al., 2022)", "",
                   "Gain over the reference against d = sqrt(KL); best-of-n fitted with R(d) = d·(α − β·d), "
                   "RL with R(d) = d·(α − β·log d).", "", fits, "", "![overoptimization](overoptimization.png)", ""]
    (out / "compare.md").write_text("\n".join(report), encoding="utf-8")
    print(text + (f"\n\nover-optimisation (Gao et al.):\n{fits}" if fits else ""))

    exp = client.get_experiment_by_name(args.experiment)
    summary = client.create_run(exp.experiment_id, run_name="compare",
                                tags={"stage": "compare", **({"sweep_id": args.sweep} if args.sweep else {})})
    for path in [out / "compare.md", *pngs]:
        client.log_artifact(summary.info.run_id, str(path))
    client.set_terminated(summary.info.run_id, "FINISHED")
    print(f"\nwrote {out / 'compare.md'} and {len(pngs)} plots; logged to run {summary.info.run_id[:8]} (compare)")


if __name__ == "__main__":
    main()
