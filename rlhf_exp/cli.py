"""The `rlhf-exp` command: a Hydra app over the project's `conf/` (see `rlhf-exp --help`)."""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")  # absolute: works from any cwd


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig):
    from rlhf_exp.stages.runner import main as run
    return run(cfg)


if __name__ == "__main__":
    main()
