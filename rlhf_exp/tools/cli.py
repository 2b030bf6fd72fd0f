"""The `rlhf-exp` command: a Hydra app over the project's `conf/` (see `rlhf-exp --help`)."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf_exp.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig):
    from rlhf_exp.stages.task import main as run
    return run(cfg)


def resumed_args(args: list[str]) -> list[str]:
    """`rlhf-exp resume=DIR [overrides]`: the overrides DIR's run was started with (Hydra keeps them
    in DIR/.hydra/overrides.yaml), then the ones given now, run again in DIR itself."""
    given = [a for a in args if a.startswith("resume=")]
    if not given or given[-1] == "resume=null":
        return args
    import yaml
    run_dir = Path(given[-1].split("=", 1)[1])
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        print(f"input error: resume = {run_dir}: no {saved} (resolved to {saved.resolve()}); expected the "
              "directory of a run to continue (outputs/runs/<time>)", file=sys.stderr)
        sys.exit(2)
    before = [o for o in yaml.safe_load(saved.read_text(encoding="utf-8")) or []
              if not o.startswith(("hydra.run.dir=", "resume="))]
    now = [a for a in args if not a.startswith(("resume=", "hydra.run.dir="))]  # the run goes on in DIR
    return [*before, *now, f"hydra.run.dir={run_dir}", f"resume={run_dir}"]


def main():
    sys.argv = [sys.argv[0], *resumed_args(sys.argv[1:])]
    return app()


if __name__ == "__main__":
    main()
