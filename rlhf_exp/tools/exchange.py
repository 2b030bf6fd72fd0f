"""`rlhf-exp-labels`: completion sets out to a labeling tool, and its answers back as ranked feedback.

    rlhf-exp-labels export labelstudio|argilla FEEDBACK.jsonl OUT_DIR [--instructions FILE] [--labelers-per-set N]
    rlhf-exp-labels import labelstudio|argilla EXPORT.json FEEDBACK.jsonl

Export writes what the tool loads (Label Studio: label_config.xml and tasks.json; Argilla: the
dataset folder `rg.Dataset.from_disk` reads). Import reads the tool's export; each annotator is a
labeler. When FEEDBACK.jsonl exists, each imported ranking goes into its set there (the same set_id,
prompt and completions), replacing only that labeler's ranking of that set; otherwise the imported
sets are written as a new file. Every bad record is named, and nothing is written then.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf_exp.errors import UserError
from rlhf_exp.labeling import argilla, labelstudio
from rlhf_exp.feedback.formats import RankedSet, load_ranked, ranked_to_json
from rlhf_exp.labeling.instructions import guide_for
from rlhf_exp.feedback.prompts import sort_key
from rlhf_exp.files import FileError, read_json, write_json, write_jsonl, write_text

TOOLS = ("labelstudio", "argilla")


def export(tool: str, feedback: str, out_dir: str, instructions: str | None, labelers_per_set: int) -> list[Path]:
    """The sets of a feedback file as the tool's import files in out_dir; returns the files written."""
    sets, guide = load_ranked(feedback), guide_for(feedback, instructions)
    out = Path(out_dir)
    k = max(len(s.completions) for s in sets)
    if tool == "labelstudio":
        out.mkdir(parents=True, exist_ok=True)
        return [write_text(out / "label_config.xml", labelstudio.label_config(k, guide)),
                write_json(out / "tasks.json", labelstudio.tasks(sets))]
    records = argilla.records(sets, feedback)  # checks first: nothing written for sets of different sizes
    (out / ".argilla").mkdir(parents=True, exist_ok=True)
    return [write_json(out / ".argilla" / "settings.json", argilla.dataset_settings(k, guide, labelers_per_set)),
            write_json(out / ".argilla" / "dataset.json", argilla.dataset_json(out.resolve().name)),
            write_json(out / "records.json", records)]


def _key(s: RankedSet) -> tuple:
    return s.set_id, sort_key(s.prompt), tuple(s.completions)


def merge(into: list[RankedSet], imported: list[RankedSet], source: str) -> list[RankedSet]:
    """Each imported set's rankings put into the same set of `into` (by set_id, prompt and
    completions), a labeler's new ranking replacing their old one; a set not in `into` is an error."""
    index = {_key(s): s for s in into}
    missing = [f"set {i} (set_id {s.set_id}): not in the feedback file (no set with its set_id, prompt and "
               "completions)" for i, s in enumerate(imported) if _key(s) not in index]
    if missing:
        raise FileError(source, missing, "set")
    for s in imported:
        index[_key(s)].rankings.update(s.rankings)
    return into


def import_(tool: str, export_file: str, feedback: str) -> tuple[Path, int]:
    """The tool's export read back into the feedback file; returns it and the rankings imported."""
    rows = read_json(export_file)
    sets = (labelstudio.rankings_from_export if tool == "labelstudio" else argilla.rankings_from_records)(
        rows, export_file)
    imported = sum(len(s.rankings) for s in sets)
    if Path(feedback).exists():
        sets = merge(load_ranked(feedback), sets, export_file)
    return write_jsonl(feedback, map(ranked_to_json, sets)), imported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-exp-labels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    out = sub.add_parser("export", help="completion sets -> a labeling tool's import files")
    out.add_argument("tool", choices=TOOLS)
    out.add_argument("feedback", help="ranked feedback file (stage=collect collect=human writes one)")
    out.add_argument("out_dir", help="where the tool's files are written")
    out.add_argument("--instructions", help="the guide shown to labelers (default: LABELING.md beside the feedback "
                                            "file, else the built-in guide)")
    out.add_argument("--labelers-per-set", type=int, default=1,
                     help="argilla: submitted responses a record needs to count as done (default 1)")
    back = sub.add_parser("import", help="a labeling tool's export -> ranked feedback")
    back.add_argument("tool", choices=TOOLS)
    back.add_argument("export", help="the tool's JSON export (Label Studio: JSON export; Argilla: records)")
    back.add_argument("feedback", help="feedback file to merge the rankings into (created if missing)")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            files = export(args.tool, args.feedback, args.out_dir, args.instructions, args.labelers_per_set)
            print("wrote " + ", ".join(map(str, files)))
        else:
            path, n = import_(args.tool, args.export, args.feedback)
            print(f"{path}: {n} rankings")
    except UserError as err:
        print(f"input error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
