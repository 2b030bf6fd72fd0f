"""What a stage function is given, and how it records what it did."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclass
class StageContext:
    cfg: DictConfig                 # the resolved config
    built: dict[str, Any]           # node name -> its built settings object (data, model, prepare...)
    run_dir: Path                   # the Hydra run dir; every output of the run goes under it
    run: Any                        # the stage's tracked run (TrackedRun, or NullRun for logger=none)
    outputs: dict[str, Path] = field(default_factory=dict)  # files of earlier stages, by name

    def save(self, name: str, path: Path) -> Path:
        """Record an output file: logged as an artifact and passed on to later stages."""
        self.outputs[name] = path
        self.run.log_artifact(path)
        return path
