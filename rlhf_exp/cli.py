"""The `rlhf-exp` command: a Hydra app over the project's `conf/` (see `rlhf-exp --help`)."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rlhf_exp.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig):
    from rlhf_exp.stages.task import main as run
    return run(cfg)


if __name__ == "__main__":
    main()
