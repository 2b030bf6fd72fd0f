"""MkDocs hooks (mkdocs.yml `hooks:`): the pages and pictures the site takes from outside docs/, made
at build time so that none of them is a copy that can drift.

- `reference/config.md` and `reference/metrics.md`: generated from conf/ and the metric names in
  rlhf_exp/ (scripts/docs_reference.py);
- `contributing/architecture.md`: ARCHITECTURE.md as it is at the top of the repository, its links
  to source files turned into plain code names (the site holds no source files);
- `sweeps/*.png`: the sweep plots kept beside their sweep definitions.
"""
from __future__ import annotations

import re

from mkdocs.structure.files import File, Files

import docs_reference  # scripts/, on the path while MkDocs loads this file

ROOT = docs_reference.ROOT
LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def architecture_page() -> str:
    """ARCHITECTURE.md with each link into the repository kept as its text (`conf/algorithm/ppo.yaml:25`)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    note = ("\n\n*This page is `ARCHITECTURE.md` at the top of the repository, included when the site is built; "
            "edit it there.*\n")
    first, _, rest = text.partition("\n")
    return first + note + LINK.sub(lambda m: m.group(1), rest)


def on_files(files: Files, config) -> Files:
    generated = {"reference/config.md": docs_reference.config_markdown(),
                 "reference/metrics.md": docs_reference.metrics_markdown(),
                 "contributing/architecture.md": architecture_page()}
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    for png in sorted((ROOT / "sweeps").glob("*.png")):
        files.append(File.generated(config, f"sweeps/{png.name}", abs_src_path=str(png)))
    return files
