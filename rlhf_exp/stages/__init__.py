"""Stages of the life cycle, one function `run(ctx)` each; `pipeline` runs them in order, `task` is
the Hydra task around it, `tracked` puts each stage in its MLflow run."""
